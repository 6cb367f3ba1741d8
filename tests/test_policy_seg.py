"""tests/test_policy_seg.py — the C segmenter's training rule against the training code.

`gist-model segment --rule train` must close sentences exactly where train/data.py's
sentence_ends does (the rule the gist tokens were trained with), on real text tokenized by
a real vocabulary, with piece texts read from the GGUF file by the training code's own
reader.
"""
import os
import subprocess
import sys

import numpy as np

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "train"))
try:
    import data  # noqa: E402  (train/data.py: sentence_ends)
    import gguf_writer  # noqa: E402  (train/gguf_writer.py: read_gguf)
except ImportError as ex:  # a package the training code needs is not installed
    data = None
    why = str(ex)

GM = tap.tool("gist-model")


def piece_texts(path):
    """The surface text of every token, as data.piece_texts makes it from SentencePiece."""
    kv = gguf_writer.read_gguf(path)[0]
    out = []
    for piece, ty in zip(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]):
        if ty == 6:  # byte
            b = int(piece[3:5], 16)
            out.append(chr(b) if b < 128 else "\x80")
        elif ty in (2, 3):  # unknown, control
            out.append("")
        else:
            out.append(piece.replace("\u2581", " "))
    return out


def check_file(model, path, limit=None):
    if data is None:
        raise tap.Missing(f"train/data.py cannot be imported: {why}")
    text = open(path, encoding="utf-8", errors="replace").read()
    if limit:
        text = text[:limit]
    d = tap.tmpdir()
    src = os.path.join(d, "t.txt")
    with open(src, "w", encoding="utf-8") as f:
        f.write(text)
    ids = subprocess.run([GM, "tokenize", model, "--bos", "--file", src], capture_output=True,
                         text=True, check=True).stdout.split()
    ids = np.array([int(x) for x in ids])
    want = data.sentence_ends(ids, piece_texts(model))
    out = subprocess.run([GM, "segment", model, "--rule", "train", "--file", src],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    got = [int(x.split()[0]) for x in out if x.strip()]
    assert len(want) > 5
    assert got == want, (len(got), len(want), [(a, b) for a, b in zip(got, want) if a != b][:5])


def test_train_rule_on_a_story():
    check_file(tap.shared("models/stories260K-f32.gguf"),
               os.path.join(tap.ROOT, "tests", "data", "tinystory.txt"))


def test_train_rule_on_a_novel():
    # dialogue, abbreviations ("Mr."), quotes, chapter headings and blank lines
    check_file(tap.shared("models/stories260K-f32.gguf"), tap.shared("corpus/persuasion.txt"),
               limit=60000)


tap.main(globals())
