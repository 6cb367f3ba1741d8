"""tests/test_tokenize_cli.py — `gist-model tokenize` and `detokenize` on the shared
vocabularies: a sample of llama.cpp's test vectors through the command line (ids as the
.out files give them, and the text back byte for byte), BOS and special tokens, and the
one-line errors with exit status 2.

Then slices of the corpus against independent references:
- SentencePiece: Google's own sentencepiece library (Debian's python3-sentencepiece), given
  a model built from the GGUF vocabulary (BPE, byte fallback, identity normalizer with the
  dummy prefix: what Llama's tokenizer.model says);
- byte-level BPE: a naive Python BPE (merge the leftmost lowest-rank pair, repeat) after
  Python's own regex engine splits the text with the GPT-2 or Llama 3 pattern, \p{L} and
  \p{N} written out from unicodedata. Llama 3 runs on a file made here: the GPT-2
  vocabulary with tokenizer.ggml.pre = "llama-bpe".
"""
import functools
import os
import re
import struct
import subprocess
import unicodedata

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


# ---- GGUF metadata, read and written here (keys only, no tensors) ----

SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
          12: "d"}


def gguf_keys(path):
    b = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def value(t):
        nonlocal pos
        if t == 8:
            n = take("Q")
            pos += n
            return b[pos - n:pos].decode("utf-8")
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(SCALAR[t])

    assert b[:4] == b"GGUF"
    pos = 4
    take("I")
    take("Q")
    kv = {}
    for _ in range(take("Q")):
        key = value(8)
        kv[key] = value(take("I"))
    return kv


def write_gguf_keys(path, kv):
    def string(s):
        e = s.encode("utf-8")
        return struct.pack("<Q", len(e)) + e

    out = [b"GGUF", struct.pack("<IQQ", 3, 0, len(kv))]
    for k, v in kv.items():
        out.append(string(k))
        if isinstance(v, str):
            out += [struct.pack("<I", 8), string(v)]
        elif isinstance(v, bool):
            out.append(struct.pack("<I?", 7, v))
        elif isinstance(v, int):
            out.append(struct.pack("<II", 4, v))
        elif isinstance(v[0], str):
            out.append(struct.pack("<IIQ", 9, 8, len(v)))
            out += [string(x) for x in v]
        elif isinstance(v[0], float):
            out.append(struct.pack("<IIQ", 9, 6, len(v)) + struct.pack("<%df" % len(v), *v))
        else:
            out.append(struct.pack("<IIQ", 9, 5, len(v)) + struct.pack("<%di" % len(v), *v))
    data = b"".join(out)
    data += b"\0" * (-len(data) % 32)
    with open(path, "wb") as f:
        f.write(data)


# ---- references ----

def corpus_slices(size=32 << 10):
    """The first `size` bytes of every corpus file, cut back to a line end."""
    d = os.path.dirname(tap.shared("corpus/README.md"))
    for name in sorted(os.listdir(d)):
        if name.endswith(".txt"):
            data = open(os.path.join(d, name), "rb").read(size)
            yield name, data[:data.rfind(b"\n") + 1]


def class_ranges(pred):
    out, start = [], None
    for cp in range(0x110001):
        inside = cp <= 0x10FFFF and pred(chr(cp))
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            out.append("\\U%08x-\\U%08x" % (start, cp - 1))
            start = None
    return "".join(out)


@functools.lru_cache(maxsize=None)
def split_patterns():
    L = class_ranges(lambda c: unicodedata.category(c)[0] == "L")
    N = class_ranges(lambda c: unicodedata.category(c)[0] == "N")
    S = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
    gpt2 = (r"'s|'t|'re|'ve|'m|'ll|'d| ?[%s]+| ?[%s]+| ?[^%s%s%s]+|[%s]+(?![^%s])|[%s]+"
            % (L, N, S, L, N, S, S, S))
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n%s%s]?[%s]+|[%s]{1,3}| ?[^%s%s%s]+[\r\n]*"
              r"|[%s]*[\r\n]+|[%s]+(?![^%s])|[%s]+" % (L, N, L, N, S, L, N, S, S, S, S))
    # llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2, as written there
    qwen2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n%s%s]?[%s]+|[%s]"
             r"| ?[^%s%s%s]+[\r\n]*|[%s]*[\r\n]+|[%s]+(?![^%s])|[%s]+"
             % (L, N, L, N, S, L, N, S, S, S, S))
    return re.compile(gpt2), re.compile(llama3), re.compile(qwen2)


def gpt2_byte_chars():
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    other = [b for b in range(256) if b not in keep]
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + i) for i, b in enumerate(other)})
    return table


class RefBPE:
    def __init__(self, kv, pattern, whole_words):
        self.vocab = {t: i for i, t in enumerate(kv["tokenizer.ggml.tokens"])}
        self.ranks = {}
        for r, m in enumerate(kv["tokenizer.ggml.merges"]):
            self.ranks.setdefault(tuple(m.split(" ", 1)), r)
        self.pattern, self.whole_words = pattern, whole_words
        self.chars = gpt2_byte_chars()

    def word(self, w):
        spelled = "".join(self.chars[b] for b in w.encode("utf-8"))
        if self.whole_words and spelled in self.vocab:
            return [self.vocab[spelled]]
        parts = list(spelled)
        while len(parts) > 1:
            rank, i = min((self.ranks.get((parts[i], parts[i + 1]), 1 << 30), i)
                          for i in range(len(parts) - 1))
            if rank == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.vocab[p] for p in parts]

    def encode(self, text):
        words = self.pattern.findall(text)
        assert "".join(words) == text, "the pattern skipped characters"
        return [i for w in words for i in self.word(w)]


def ref_inputs():
    for name, data in corpus_slices():
        yield name, data
    for i, (text, _) in enumerate(vectors(VOCABS["bpe"])):
        yield "vector %d" % i, text
    yield "odd", "  I'M YOU'LL 12345 x\u00a0\u00a0y \r\n\r\n\tTabs\u3000ideo 日本語!!\n\n".encode()


def check_bpe_reference(vocab, kv, pattern, whole_words):
    ref = RefBPE(kv, pattern, whole_words)
    for name, data in ref_inputs():
        want = ref.encode(data.decode("utf-8"))
        got = tokenize_file(vocab, data)
        assert got == want, (name, next(i for i, (a, b) in enumerate(zip(got + [-1], want))
                                        if a != b))


def test_bpe_matches_reference():
    vocab = tap.shared(VOCABS["bpe"])
    gpt2, _, _ = split_patterns()
    check_bpe_reference(vocab, gguf_keys(vocab), gpt2, False)


def test_llama3_matches_reference():
    kv = gguf_keys(tap.shared(VOCABS["bpe"]))
    crafted = {k: kv[k] for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens",
                                  "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    crafted["tokenizer.ggml.pre"] = "llama-bpe"
    path = os.path.join(TMP, "gpt2-llama3-split.gguf")
    write_gguf_keys(path, crafted)
    _, llama3, _ = split_patterns()
    check_bpe_reference(path, crafted, llama3, True)


def test_qwen2_matches_reference():
    kv = gguf_keys(tap.shared(VOCABS["bpe"]))
    crafted = {k: kv[k] for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens",
                                  "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    crafted["tokenizer.ggml.pre"] = "qwen2"
    path = os.path.join(TMP, "gpt2-qwen2-split.gguf")
    write_gguf_keys(path, crafted)
    _, _, qwen2 = split_patterns()
    check_bpe_reference(path, crafted, qwen2, True)


def test_spm_matches_sentencepiece():
    try:
        import sentencepiece
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as e:
        raise tap.Missing("python3-sentencepiece is not installed (%s)" % e)
    vocab = tap.shared(VOCABS["spm"])
    kv = gguf_keys(vocab)
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id = 0, 1, 2
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, score, ty in zip(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.scores"],
                            kv["tokenizer.ggml.token_type"]):
        p = m.pieces.add()
        p.piece, p.score, p.type = t, score, ty
    sp = sentencepiece.SentencePieceProcessor(model_proto=m.SerializeToString())
    for name, data in ref_inputs():
        want = sp.encode(data.decode("utf-8"))
        got = tokenize_file(vocab, data)
        assert got == want, (name, next(i for i, (a, b) in enumerate(zip(got + [-1], want))
                                        if a != b))


def test_errors():
    not_gguf = os.path.join(TMP, "not.gguf")
    with open(not_gguf, "wb") as f:
        f.write(b"this is not a model file\n")
    cases = [
        ("tokenize", not_gguf, "--text", "x"),
        ("tokenize", os.path.join(TMP, "absent.gguf"), "--text", "x"),
        ("tokenize", "--text", "x"),
        ("detokenize", not_gguf, "--tokens", "1"),
        ("detokenize", "--tokens", "1"),
    ]
    try:
        spm = tap.shared(VOCABS["spm"])
    except tap.Missing:
        if tap.REQUIRE_SHARED:
            raise
        spm = None  # the cases above need no vocabulary; the rest is skipped below
    cases += [] if spm is None else [
        ("tokenize", spm),
        ("tokenize", spm, "--text", "a", "--file", not_gguf),
        ("tokenize", spm, "--frobnicate", "--text", "x"),
        ("tokenize", spm, "--file", os.path.join(TMP, "absent.txt")),
        ("detokenize", spm),
        ("detokenize", spm, "--tokens", "1 two 3"),
        ("detokenize", spm, "--tokens", "32000"),
        ("detokenize", spm, "--tokens", "-1"),
    ]
    for args in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r)
        assert r.stdout == b"", (args, r.stdout)
        err = r.stderr.decode()
        assert err.startswith("gist-model: ") and err.count("\n") == 1, (args, err)
    if spm is None:
        tap.shared(VOCABS["spm"])  # reports the cases left out


tap.main(globals())
