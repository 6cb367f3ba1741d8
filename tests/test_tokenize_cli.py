"""tests/test_tokenize_cli.py — `gist-model tokenize` and `detokenize` on the shared
vocabularies: a sample of llama.cpp's test vectors through the command line (ids as the
.out files give them, and the text back byte for byte), BOS and special tokens, and the
one-line errors with exit status 2.
"""
import os
import subprocess

import tap

GM = tap.tool("gist-model")
TMP = tap.tmpdir()
VOCABS = {
    "spm": "vocab/ggml-vocab-llama-spm.gguf",
    "bpe": "vocab/ggml-vocab-gpt-2.gguf",
}
SAMPLE = [0, 1, 2, 3, 9, 10, 17, 21, 27, 31, 45]  # vector indices: empty, spaces, newlines, emoji...


def run(*args):
    return subprocess.run([GM, *args], capture_output=True, timeout=60)


def vectors(rel):
    """The (text bytes, expected ids) pairs of a vocabulary's .inp/.out files."""
    inp = open(tap.shared(rel + ".inp"), "rb").read()
    out = open(tap.shared(rel + ".out"), "rb").read().decode()
    texts = inp.split(b"\n__ggml_vocab_test__\n")
    assert texts[-1] == b"", "the input ends with a separator"
    texts = texts[:-1]
    lines = out.split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(texts) == len(lines) == 46, (len(texts), len(lines))
    return [(t, [int(x) for x in l.split()]) for t, l in zip(texts, lines)]


def tokenize_file(vocab, data, *flags):
    path = os.path.join(TMP, "input.txt")
    with open(path, "wb") as f:
        f.write(data)
    r = run("tokenize", vocab, *flags, "--file", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\n") and r.stdout.count(b"\n") == 1, r.stdout
    return [int(x) for x in r.stdout.split()]


def detokenize(vocab, ids):
    r = run("detokenize", vocab, "--tokens", " ".join(map(str, ids)))
    assert r.returncode == 0, r.stderr
    return r.stdout


def check_vectors(kind):
    vocab = tap.shared(VOCABS[kind])
    cases = vectors(VOCABS[kind])
    for i in SAMPLE:
        text, want = cases[i]
        got = tokenize_file(vocab, text)
        assert got == want, (i, text, got, want)
        assert detokenize(vocab, got) == text, (i, text)


def test_spm_vectors():
    check_vectors("spm")


def test_bpe_vectors():
    check_vectors("bpe")


def test_text_option_and_bos():
    spm = tap.shared(VOCABS["spm"])
    r = run("tokenize", spm, "--text", "Hello world")
    assert r.returncode == 0 and r.stdout == b"15043 3186\n", r
    r = run("tokenize", spm, "--bos", "--text", "Hello world")
    assert r.stdout == b"1 15043 3186\n", r
    # BOS is skipped and the space SentencePiece added is dropped: exact bytes, no newline
    assert detokenize(spm, [1, 15043, 3186]) == b"Hello world"
    bpe = tap.shared(VOCABS["bpe"])
    assert tokenize_file(bpe, b"Hello world", "--bos") == [50256, 15496, 995]


def test_special_tokens():
    bpe = tap.shared(VOCABS["bpe"])
    plain = tokenize_file(bpe, b"a<|endoftext|>b")
    assert 50256 not in plain and len(plain) > 3
    assert tokenize_file(bpe, b"a<|endoftext|>b", "--special") == [64, 50256, 65]
    assert detokenize(bpe, plain) == b"a<|endoftext|>b"
    spm = tap.shared(VOCABS["spm"])
    assert tokenize_file(spm, b"<s>Hello</s>", "--special") == [1, 15043, 2]


def test_errors():
    spm = tap.shared(VOCABS["spm"])
    not_gguf = os.path.join(TMP, "not.gguf")
    with open(not_gguf, "wb") as f:
        f.write(b"this is not a model file\n")
    cases = [
        ("tokenize", not_gguf, "--text", "x"),
        ("tokenize", os.path.join(TMP, "absent.gguf"), "--text", "x"),
        ("tokenize", spm),
        ("tokenize", spm, "--text", "a", "--file", not_gguf),
        ("tokenize", spm, "--frobnicate", "--text", "x"),
        ("tokenize", spm, "--file", os.path.join(TMP, "absent.txt")),
        ("detokenize", spm),
        ("detokenize", spm, "--tokens", "1 two 3"),
        ("detokenize", spm, "--tokens", "32000"),
        ("detokenize", spm, "--tokens", "-1"),
        ("detokenize", not_gguf, "--tokens", "1"),
    ]
    for args in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r)
        assert r.stdout == b"", (args, r.stdout)
        err = r.stderr.decode()
        assert err.startswith("gist-model: ") and err.count("\n") == 1, (args, err)


tap.main(globals())
