"""Tests for `gist-model make-tiny` and `gist-model info`.

The files make-tiny writes are read back by a small GGUF parser written here in Python
(independent of the C reader), and their weights are checked with numpy: the f16 and bf16
files must hold numpy's round-to-nearest-even of the f32 file's floats (same seed), and
the q8_0 / q4_0 blocks must dequantize to within a quantization step of them.
"""
import os
import struct
import subprocess
import tempfile

import numpy as np

import tap

TOOL = tap.tool("gist-model")
VT_SIZES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
TYPE_BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 8: (32, 34), 30: (1, 2)}


class Reader:
    def __init__(self, data):
        self.d, self.o = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.o)
        self.o += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def str(self):
        n = self.take("Q")
        s = self.d[self.o:self.o + n].decode("utf-8")
        self.o += n
        return s

    def value(self, t):
        if t in VT_SIZES:
            return self.take(VT_SIZES[t])
        if t == 8:
            return self.str()
        assert t == 9, f"value type {t}"
        et, n = self.take("I"), self.take("Q")
        return [self.value(et) for _ in range(n)]


def parse_gguf(path):
    """(version, {key: value}, {name: (ne, type, bytes)}) of a GGUF file."""
    data = open(path, "rb").read()
    r = Reader(data)
    assert data[:4] == b"GGUF"
    r.o = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kv = {}
    for _ in range(n_kv):
        k = r.str()
        kv[k] = r.value(r.take("I"))
    infos = []
    for _ in range(n_tensors):
        name = r.str()
        nd = r.take("I")
        ne = [r.take("Q") for _ in range(nd)]
        infos.append((name, ne, r.take("I"), r.take("Q")))
    align = kv.get("general.alignment", 32)
    start = (r.o + align - 1) // align * align
    tensors = {}
    for name, ne, typ, off in infos:
        assert off % align == 0
        be, bb = TYPE_BLOCK[typ]
        n = int(np.prod(ne))
        size = n // be * bb
        tensors[name] = (ne, typ, data[start + off:start + off + size])
        assert start + off + size <= len(data)
    return version, kv, tensors


def run(*args):
    return subprocess.run([TOOL, *args], capture_output=True, text=True)


def make(path, *args):
    p = run("make-tiny", path, *args)
    assert p.returncode == 0, p.stderr
    return parse_gguf(path)


def f32(t):
    ne, typ, raw = t
    assert typ == 0
    return np.frombuffer(raw, dtype="<f4").reshape(ne[::-1])


def dequant_q8_0(raw, n):
    b = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("q", "i1", 32)]))
    return (b["d"].astype(np.float32)[:, None] * b["q"].astype(np.float32)).reshape(n)


def dequant_q4_0(raw, n):
    b = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("q", "u1", 16)]))
    lo = (b["q"] & 15).astype(np.float32) - 8
    hi = (b["q"] >> 4).astype(np.float32) - 8
    return (b["d"].astype(np.float32)[:, None] * np.concatenate([lo, hi], axis=1)).reshape(n)


def bf16_rne(x):
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_make_tiny_keys_and_shapes():
    with tempfile.TemporaryDirectory(prefix="gistd-tool-") as d:
        version, kv, t = make(os.path.join(d, "m.gguf"), "--seed", "5", "--n-layer", "3",
                              "--gist", "2", "--retention-hidden", "8", "--n-ctx", "99")
        assert version == 3
        assert kv["general.architecture"] == "llama"
        for k, v in {"llama.embedding_length": 64, "llama.block_count": 3,
                     "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
                     "llama.attention.head_count_kv": 2, "llama.context_length": 99,
                     "llama.rope.dimension_count": 16, "gistd.gist.count": 2,
                     "gistd.gist.first_token_id": 382, "gistd.gist.sinks": 1,
                     "gistd.retention.hidden": 8, "gistd.retention.budget": 64}.items():
            assert kv[k] == v, (k, kv[k], v)
        assert kv["gistd.gist.mask"] == "sentence"
        assert abs(kv["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-12
        toks = kv["tokenizer.ggml.tokens"]
        assert len(toks) == 384 and toks[:3] == ["<unk>", "<s>", "</s>"]
        assert toks[3] == "<0x00>" and toks[258] == "<0xFF>"
        assert toks[382:] == ["<gist_0>", "<gist_1>"]
        assert len(set(toks)) == 384
        assert kv["tokenizer.ggml.token_type"][259] == 1
        assert t["token_embd.weight"][0] == [64, 384]
        assert t["output.weight"][0] == [64, 384]
        assert t["blk.2.attn_k.weight"][0] == [64, 32]
        assert t["blk.2.ffn_down.weight"][0] == [128, 64]
        assert t["blk.2.retention_in.weight"][0] == [64, 8]
        assert t["blk.2.retention_out.bias"][0] == [2]
        assert len(t) == 3 + 3 * 13


def test_make_tiny_types_match_f32():
    with tempfile.TemporaryDirectory(prefix="gistd-tool-") as d:
        _, _, ref = make(os.path.join(d, "f32.gguf"), "--seed", "9")
        for typ in ["f16", "bf16", "q8_0", "q4_0"]:
            _, kv, t = make(os.path.join(d, typ + ".gguf"), "--seed", "9", "--type", typ)
            for name in ["token_embd.weight", "blk.1.attn_v.weight", "blk.0.ffn_down.weight"]:
                x = f32(ref[name])
                ne, code, raw = t[name]
                assert ne == ref[name][0]
                if typ == "f16":
                    assert code == 1
                    want = x.reshape(-1).astype(np.float16)
                    assert np.array_equal(np.frombuffer(raw, "<f2"), want)
                elif typ == "bf16":
                    assert code == 30
                    assert np.array_equal(np.frombuffer(raw, "<u2"), bf16_rne(x.reshape(-1)))
                else:
                    n = x.size
                    y = dequant_q8_0(raw, n) if typ == "q8_0" else dequant_q4_0(raw, n)
                    blocks = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
                    step = blocks / (127 if typ == "q8_0" else 8)
                    err = np.abs(y.reshape(-1, 32) - x.reshape(-1, 32))
                    # half a step (q8_0) or a whole one (q4_0 clamps at 15), plus the scale's
                    # own f16 rounding: |q| * d * 2^-11
                    bound = 0.5 + 127 / 2048 if typ == "q8_0" else 1.0 + 8 / 2048
                    assert (err <= step * bound * 1.001 + 1e-7).all(), (typ, name)
            assert t["blk.0.attn_norm.weight"][1] == 0  # norms stay f32
            norm = "blk.0.attn_norm.weight"
            assert np.array_equal(f32(t[norm]), f32(ref[norm]))
            assert kv["general.file_type"] == {"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}[typ]


def test_make_tiny_large_vocab_and_tied():
    with tempfile.TemporaryDirectory(prefix="gistd-tool-") as d:
        # the SmolLM2-135M shape (one layer of it), as the benchmarks ask for
        _, kv, t = make(os.path.join(d, "v.gguf"), "--seed", "1", "--n-embd", "576",
                        "--n-head", "9", "--n-head-kv", "3", "--n-ff", "1536", "--n-layer", "1",
                        "--n-vocab", "49152",
                        "--tied", "--type", "q8_0")
        toks = kv["tokenizer.ggml.tokens"]
        assert len(toks) == 49152 and len(set(toks)) == 49152
        assert "\u2581w123" in toks and "\u2581the" in toks
        scores = kv["tokenizer.ggml.scores"][259:]
        assert all(a > b for a, b in zip(scores, scores[1:]))
        assert "output.weight" not in t
        assert t["token_embd.weight"][0] == [576, 49152]


def test_make_tiny_bad_args():
    with tempfile.TemporaryDirectory(prefix="gistd-tool-") as d:
        out = os.path.join(d, "bad.gguf")
        for args, piece in [(["--seed", "1", "--type", "q4_0", "--n-ff", "100"], "multiples of 32"),
                            (["--seed", "1", "--n-head", "3"], "not a multiple of n_head"),
                            (["--seed", "x"], "--seed needs a whole number"),
                            (["--seed", "1", "--type", "q3_k"], "--type must be"),
                            (["--seed", "1", "--type", "q6_K"], "multiples of 256"),
                            (["--seed", "1", "--arch", "gpt2"], "--arch must be"),
                            (["--seed", "1", "--bogus"], "unknown option '--bogus'"),
                            ([], "missing --seed")]:
            p = run("make-tiny", out, *args)
            assert p.returncode == 2, (args, p.returncode)
            lines = p.stderr.strip().split("\n")
            assert len(lines) == 1 and lines[0].startswith("gist-model: ") and piece in lines[0], \
                (args, p.stderr)
        assert not os.path.exists(out)


def test_info_tiny():
    with tempfile.TemporaryDirectory(prefix="gistd-tool-") as d:
        path = os.path.join(d, "i.gguf")
        make(path, "--seed", "2", "--type", "q8_0", "--gist", "4", "--retention-hidden", "8",
             "--n-layer", "3")
        p = run("info", path)
        assert p.returncode == 0, p.stderr
        o = p.stdout
        for piece in ["gguf version:    3", "architecture:    llama", "name:            tiny",
                      "n_layer        3", "n_head_kv      2", "head_dim       16",
                      "rope_freq_base 10000", "output         output.weight",
                      "tokenizer:       llama, 384 tokens, bos 1, eos 2",
                      "gist tokens:     4 (ids 380..383), mask sentence, sinks 1",
                      "retention gates: hidden 8, budget 64",
                      "f32            19 tensors", "q8_0           23 tensors",
                      "%d bytes" % os.path.getsize(path)]:
            assert piece in o, (piece, o)


def test_info_stories260k():
    path = tap.shared("models/stories260K-f32.gguf")
    p = run("info", path)
    assert p.returncode == 0, p.stderr
    for piece in ["n_layer        5", "n_embd         64", "n_head         8",
                  "n_head_kv      4", "n_vocab        512", "output         tied to token_embd",
                  "tensors:         47,", "gist tokens:     none"]:
        assert piece in p.stdout, (piece, p.stdout)


def test_info_bad_files():
    with tempfile.TemporaryDirectory(prefix="gistd-tool-") as d:
        good = os.path.join(d, "g.gguf")
        make(good, "--seed", "1")
        cut = os.path.join(d, "cut.gguf")
        with open(good, "rb") as f, open(cut, "wb") as g:
            g.write(f.read(3000))
        junk = os.path.join(d, "junk.gguf")
        with open(junk, "wb") as f:
            f.write(b"not a gguf file at all")
        for args, piece in [([cut], "runs past end of file"), ([junk], "bad magic"),
                            ([os.path.join(d, "none.gguf")], "cannot open"),
                            ([], "usage"), ([good, good], "usage")]:
            p = run("info", *args)
            assert p.returncode == 2, (args, p.returncode)
            lines = p.stderr.strip().split("\n")
            assert len(lines) == 1 and lines[0].startswith("gist-model: ") and piece in lines[0], \
                (args, p.stderr)
            assert p.stdout == ""


tap.main(globals())
