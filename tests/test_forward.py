"""tests/test_forward.py — the C forward pass (`gist-model logits`) against the numpy
reference in tests/ref_llama.py, on random-weight models made by `gist-model make-tiny`.

Tolerances are relative to the largest reference logit (|c - r|max / |r|max):
- f32, f16, bf16 weights: both sides use the very same weight values (numpy dequantizes
  the file itself); the only differences are f32 rounding in the C sums (against float64
  here) and f32 cos/sin, measured at 1e-7..6e-7 over these shapes. 1e-5 leaves margin
  for long sums without hiding a real bug (a wrong RoPE pair, a missed norm weight or a
  swapped head moves logits by 1e-1 or more).
- q8_0, q4_0 weights: numpy uses exactly the dequantized weights. The kernels also
  quantize each activation block of 32 to int8 (as llama.cpp does), which alone moves
  the logits by 0.6%..3% here; so the C logits are compared with the reference that
  quantizes activations the same way (RefModel(act_quant=True)), row by row. Nearly
  every row then agrees to f32 noise (1e-5). The exception is an activation that sits on
  a rounding boundary (x/d within ~1e-6 of k + 1/2) and rounds the other way on one
  side: that moves one element by max|block|/127 and the row's logits by up to a few
  1e-3 (measured 1e-4..4e-3, usually in one row of 31). So: at least 90% of rows within
  1e-5, every row within 1e-2. A batch might also go through sgemm with f32
  activations, so each row may match either reference.
- q4_K, q5_K, q6_K weights and the q4_K_M/q5_K_M mixes: the same, with K-quant inputs
  quantised per 256-block on both sides (the reference dequantizes the blocks from the
  spec in its own code). A rounding-boundary activation moves one element by its
  256-block's scale, max|x|/127, and when it lies in a token's Q/K/V input it changes that
  token's K/V rows, which every later token reads: measured, a layer-0 input of the 10th
  token at x/d = 100.5000028 (f64) rounded the other way in f32 and moved rows 10.. by
  1e-2..1.9e-2 (in other cases 26%..39% of rows stayed within 1e-5). So: the leading rows,
  before any such token, within 1e-5 (at least the first), and every row within 3e-2 (a
  wrong layout or scale moves logits by 1e-1 or more).
  qwen2 and qwen3 shapes are checked at every weight type family.
- Runs of the same model that only batch differently (prefill vs token by token, one
  sequence vs many) agree within f32 noise (1e-5).
"""
import os
import subprocess

import numpy as np

import tap
import ref_llama

GM = tap.tool("gist-model")
TMP = tap.tmpdir()

SHAPES = {
    # grouped-query attention, untied output
    "gqa": dict(n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128, n_vocab=384),
    # 3 heads of 32 (no GQA), n_ff not a power of two, tied output
    "odd_tied": dict(n_embd=96, n_layer=2, n_head=3, n_head_kv=3, n_ff=160, n_vocab=320,
                     tied=True),
    # one kv-head for 8 query heads of 8 dims, 3 layers
    "mqa": dict(n_embd=64, n_layer=3, n_head=8, n_head_kv=1, n_ff=96, n_vocab=300),
    # K-quant shapes (rows of whole 256-blocks): GQA, untied; a _M mix puts attn_v and
    # ffn_down of the last of the 3 layers in q6_K. (Few layers, as above: an activation
    # that rounds the other way on one side changes its token's K/V rows, and every later
    # row and layer then carries that 1e-3-sized difference.)
    "k_gqa": dict(n_embd=256, n_layer=3, n_head=4, n_head_kv=2, n_ff=512, n_vocab=300),
    # tied, n_ff of 3 blocks, odd head count: in a mix, attn_output rows (3 * 96 = 288) are
    # not whole 256-blocks and fall back to q5_0 (q4_K_M) or q5_1 (q5_K_M), as llama.cpp's
    "k_odd_tied": dict(n_embd=256, n_layer=2, n_head=3, n_head_kv=1, n_ff=768, n_vocab=290,
                       tied=True, head_dim=96),
    # qwen2: Q/K/V biases, half-split RoPE
    "qwen2": dict(arch="qwen2", n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512,
                  n_vocab=300),
    # qwen3: per-head Q/K norms, head_dim 64 apart from n_embd / n_head, tied
    "qwen3": dict(arch="qwen3", n_embd=256, n_layer=2, n_head=8, n_head_kv=2, n_ff=512,
                  n_vocab=300, head_dim=64, tied=True),
}
LLAMA_32 = ("gqa", "odd_tied", "mqa")  # the shapes every type of blocks of 32 runs on
TOL = {"f32": 1e-5, "f16": 1e-5, "bf16": 1e-5}
Q_TIGHT, Q_ROW_MAX = 1e-5, 1e-2
K_ROW_MAX = 3e-2
NOISE = 1e-5


def run(*args, ok=True):
    p = subprocess.run([GM, *map(str, args)], capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, f"{args[0]} failed ({p.returncode}): {p.stderr.strip()}"
    return p


def make_tiny(seed, wtype="f32", shape="gqa", **extra):
    cfg = dict(SHAPES[shape], **extra)
    name = f"{shape}-{wtype}-{seed}" + "".join(f"-{k}{v}" for k, v in sorted(extra.items()))
    path = os.path.join(TMP, name + ".gguf")
    if os.path.exists(path):
        return path
    args = ["make-tiny", path, "--seed", seed, "--type", wtype]
    for k, v in cfg.items():
        if k == "tied":
            args += ["--tied"] if v else []
        else:
            args += ["--" + k.replace("_", "-"), v]
    p = run(*args, ok=False)
    assert p.returncode == 0, p.stderr
    return path


def tokens(seed, n, n_vocab):
    rng = np.random.default_rng(seed)
    return [1] + [int(t) for t in rng.integers(3, n_vocab, n - 1)]


def logits(model, seqs, *extra):
    out = os.path.join(TMP, "logits.bin")
    args = ["logits", model, "--out", out, *extra]
    for s in seqs:
        args += ["--tokens", " ".join(map(str, s))]
    run(*args)
    n_vocab = ref_llama.RefModel(model).n_vocab
    x = np.fromfile(out, "<f4")
    assert x.size == sum(map(len, seqs)) * n_vocab, (x.size, n_vocab)
    return x.reshape(-1, n_vocab).astype(np.float64)


def rel_err(c, r):
    return float(np.abs(c - r).max() / np.abs(r).max())


def check_vs_ref(model, toks, tol, *extra):
    ref = ref_llama.RefModel(model).forward(toks)
    got = logits(model, [toks], *extra)
    err = rel_err(got, ref)
    assert err < tol, f"{os.path.basename(model)} {' '.join(extra)}: error {err:.3g} >= {tol}"
    # and the logits are not degenerate: they separate tokens the way the reference does
    assert np.array_equal(np.argmax(got, 1), np.argmax(ref, 1)) or tol > 1e-3
    return err


def test_shapes_f32():
    for i, shape in enumerate(SHAPES):  # every shape, the K-quant and qwen ones too
        model = make_tiny(10 + i, "f32", shape)
        check_vs_ref(model, tokens(i, 29, SHAPES[shape]["n_vocab"]), TOL["f32"])


def test_weight_types():
    for wtype in ("f16", "bf16"):
        for i, shape in enumerate(("gqa", "odd_tied")):
            model = make_tiny(20 + i, wtype, shape)
            check_vs_ref(model, tokens(5 + i, 31, SHAPES[shape]["n_vocab"]), TOL[wtype])


def row_errs(c, r):
    return np.abs(c - r).max(axis=1) / np.abs(r).max()


def check_quantized(got, refs, what):
    err = np.min([row_errs(got, r) for r in refs], axis=0)
    tight = float(np.mean(err < Q_TIGHT))
    assert tight >= 0.9 and err.max() < Q_ROW_MAX, \
        f"{what}: {tight:.0%} of rows within {Q_TIGHT}, worst row {err.max():.3g}"


def test_quantized_weight_types():
    """Q8_0 and Q4_0 weights against the reference; Q8_0 also packed 16 rows at a time
    (GISTD_PACK=1: on every path, the portable loops where the path does not pack) and not
    packed (GISTD_PACK=0)."""
    was = os.environ.get("GISTD_PACK")
    try:
        for wtype, packs in (("q8_0", ("1", "0")), ("q4_0", (None,))):
            for i, shape in enumerate(LLAMA_32):
                model = make_tiny(20 + i, wtype, shape)
                toks = tokens(5 + i, 31, SHAPES[shape]["n_vocab"])
                ref = ref_llama.RefModel(model).forward(toks)
                ref_q = ref_llama.RefModel(model, act_quant=True).forward(toks)
                # activation quantization matters here: otherwise this test proves nothing new
                assert rel_err(ref_q, ref) > 100 * Q_TIGHT
                for pack in packs:
                    if pack is not None:
                        os.environ["GISTD_PACK"] = pack
                    what = f"{wtype} {shape}" + (f" GISTD_PACK={pack}" if pack else "")
                    check_quantized(logits(model, [toks], "--ubatch", "1"), [ref_q],
                                    f"{what} token by token")
                    check_quantized(logits(model, [toks]), [ref, ref_q], f"{what} prefill")
    finally:
        os.environ.pop("GISTD_PACK", None)
        if was is not None:
            os.environ["GISTD_PACK"] = was


def test_k_quants():
    """K-quant weights and mixes, llama, qwen2 and qwen3 shapes: token by token against the
    reference that quantises activations as the kernels do; prefill too."""
    cases = [("q4_K", "k_gqa"), ("q5_K", "qwen2"), ("q6_K", "qwen3"), ("q4_K_M", "k_gqa"),
             ("q5_K_M", "k_odd_tied"), ("q4_K_M", "qwen3"), ("q6_K", "k_gqa"),
             ("q4_K_M", "k_odd_tied")]
    for i, (wtype, shape) in enumerate(cases):
        model = make_tiny(80 + i, wtype, shape)
        types = set(ref_llama.RefModel(model).wtype.values())
        assert types & set(ref_llama.K_QUANTS), (wtype, shape, types)
        if wtype.endswith("_M"):  # the mix really mixes
            assert ref_llama.GGML_Q6_K in types and len(types & set(ref_llama.K_QUANTS)) == 2
        if wtype.endswith("_M") and shape == "k_odd_tied":  # rows of 288: llama.cpp's fallback
            fallback = ref_llama.GGML_Q5_0 if wtype == "q4_K_M" else ref_llama.GGML_Q5_1
            assert fallback in types, (wtype, types)
        toks = tokens(80 + i, 19, SHAPES[shape]["n_vocab"])
        ref = ref_llama.RefModel(model).forward(toks)
        ref_q = ref_llama.RefModel(model, act_quant=True).forward(toks)
        assert rel_err(ref_q[1:], ref[1:]) > 100 * Q_TIGHT
        for extra in (["--ubatch", "1"], ["--threads", "2"]):
            err = row_errs(logits(model, [toks], *extra), ref_q)
            tight = err < Q_TIGHT
            lead = len(tight) if tight.all() else int(np.argmin(tight))
            assert lead >= 1 and err.max() < K_ROW_MAX, \
                f"{wtype} {shape} {extra}: {lead} leading rows and {tight.mean():.0%} within " \
                f"{Q_TIGHT}, worst row {err.max():.3g}"


def test_qwen_shapes_float():
    """qwen2 and qwen3 at f32 and f16: the same weights on both sides, so f32 noise only;
    prefill equals token by token (the per-head finishing of Q and K whatever the split)."""
    for i, shape in enumerate(("qwen2", "qwen3")):
        for wtype in ("f32", "f16"):
            model = make_tiny(90 + i, wtype, shape)
            toks = tokens(90 + i, 27, SHAPES[shape]["n_vocab"])
            check_vs_ref(model, toks, TOL[wtype])
            check_vs_ref(model, toks, TOL[wtype], "--ubatch", "1", "--threads", "3")
    # the architectures differ where they should: a llama file of the same weights is another
    # model (adjacent pairs, no biases), so the reference of one does not fit the other
    q2 = make_tiny(92, "f32", "qwen2")
    ll = make_tiny(92, "f32", "qwen2", arch="llama")
    toks = tokens(92, 15, 300)
    assert rel_err(ref_llama.RefModel(ll).forward(toks), ref_llama.RefModel(q2).forward(toks)) \
        > 1e-2


def test_prefill_equals_decode():
    for wtype, shape in (("f32", "gqa"), ("f16", "mqa"), ("f32", "odd_tied")):
        model = make_tiny(30, wtype, shape)
        toks = tokens(30, 40, SHAPES[shape]["n_vocab"])
        full = logits(model, [toks])
        one = logits(model, [toks], "--ubatch", "1")
        some = logits(model, [toks], "--ubatch", "7")
        assert rel_err(one, full) < NOISE, rel_err(one, full)
        assert rel_err(some, full) < NOISE, rel_err(some, full)


def test_multi_sequence_batch():
    model = make_tiny(40, "f32", "gqa")
    seqs = [tokens(41, 17, 384), tokens(42, 5, 384), tokens(43, 26, 384)]
    alone = [logits(model, [s]) for s in seqs]
    for extra in ([], ["--ubatch", "3"], ["--ubatch", "1"]):
        together = logits(model, seqs, *extra)
        at = 0
        for s, a in zip(seqs, alone):
            err = rel_err(together[at:at + len(s)], a)
            assert err < NOISE, f"{extra}: sequence of {len(s)}: {err:.3g}"
            at += len(s)


def test_kv_payload_types():
    """Stored rows read back from f16 and q8_0 payloads, in several chunks."""
    model = make_tiny(50, "f32", "odd_tied")  # head_dim 32: q8_0 rows are whole blocks
    toks = tokens(50, 33, SHAPES["odd_tied"]["n_vocab"])
    # f16 K/V: 2^-11 relative rounding per stored element; measured 9e-5
    check_vs_ref(model, toks, 1e-3, "--kv-type", "f16", "--ubatch", "4", "--chunk-rows", "5")
    # q8_0 K/V: up to max|block|/254 per stored element; measured 2.3e-3
    check_vs_ref(model, toks, 1e-2, "--kv-type", "q8_0", "--ubatch", "1", "--chunk-rows", "7")
    check_vs_ref(model, toks, TOL["f32"], "--kv-type", "f32", "--ubatch", "3",
                 "--chunk-rows", "2")


class env:
    """Environment variables set for a block, restored after it."""

    def __init__(self, **kv):
        self.kv = kv

    def __enter__(self):
        self.old = {k: os.environ.get(k) for k in self.kv}
        os.environ.update(self.kv)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_attention_in_parts():
    """A lane's attention cut into parts of 3 rows that a team of threads shares and merges
    (GISTD_ATTN_PART_ROWS; 256 by default, so these short lanes would be one part), a
    chunk's queries in tiles of 4 (GISTD_ATTN_Q_ROWS): the same tolerances against the
    reference as one pass, for every payload type."""
    model = make_tiny(51, "f32", "odd_tied")
    toks = tokens(51, 33, SHAPES["odd_tied"]["n_vocab"])
    with env(GISTD_ATTN_PART_ROWS="3", GISTD_PAR_MIN_NS="0", GISTD_ATTN_Q_ROWS="4"):
        for kv, tol in (("f32", TOL["f32"]), ("f16", 1e-3), ("q8_0", 1e-2)):
            for ub in ("1", "5", "33"):
                check_vs_ref(model, toks, tol, "--kv-type", kv, "--ubatch", ub, "--threads", "2",
                             "--chunk-rows", "4")


def test_query_tiles_match_one_at_a_time():
    """A prefill chunk's queries read their rows together in tiles (GISTD_ATTN_Q_ROWS; 64 by
    default), the chunk's own rows under the causal mask: the logits equal those of each
    query attending alone (tiles of 1) within f32 noise, for GQA ratios 1, 2 and 8, chunks
    of 1 to more than a tile, stored rows of every payload type, interleaved sequences (the
    chunk's rows in runs), and through the KV store with learned gists (their sentence
    mask) and f16 rows."""
    for shape in ("gqa", "odd_tied", "mqa"):
        model = make_tiny(52, "f32", shape)
        nv = SHAPES[shape]["n_vocab"]
        seqs = [tokens(53, 45, nv), tokens(54, 7, nv), tokens(55, 38, nv)]
        for kv in ("f32", "f16", "q8_0") if shape == "odd_tied" else ("f32",):
            for extra in (["--ubatch", "90"], ["--ubatch", "40"], ["--ubatch", "2"]):
                args = ["--kv-type", kv, "--chunk-rows", "7", *extra]
                with env(GISTD_ATTN_Q_ROWS="1"):
                    one = logits(model, seqs, *args)
                for q_rows in ("3", "16", "64"):
                    with env(GISTD_ATTN_Q_ROWS=q_rows, GISTD_ATTN_PART_ROWS="5",
                             GISTD_PAR_MIN_NS="0"):
                        got = logits(model, seqs, *args, "--threads", "2")
                    err = rel_err(got, one)
                    assert err < NOISE, f"{shape} {kv} {extra} tiles of {q_rows}: {err:.3g}"
    model = make_tiny(56, "f32", "gqa", gist=2)
    text = " ".join(map(str, tokens(57, 120, SHAPES["gqa"]["n_vocab"] - 2)))
    out = os.path.join(TMP, "store.bin")
    got = {}
    for q_rows in ("1", "64"):
        with env(GISTD_ATTN_Q_ROWS=q_rows):
            run("logits", model, "--tokens", text, "--out", out, "--policy", "gist",
                "--kv-type", "f16", "--ubatch", "50", "--threads", "1")
        got[q_rows] = np.fromfile(out, "<f4").astype(np.float64)
    assert got["1"].size == 120 * SHAPES["gqa"]["n_vocab"]
    assert rel_err(got["64"], got["1"]) < NOISE, rel_err(got["64"], got["1"])


def test_retention_gates():
    model = make_tiny(60, "f32", "gqa", retention_hidden=16)
    toks = tokens(60, 21, SHAPES["gqa"]["n_vocab"])
    ref, ref_lb = ref_llama.RefModel(model).forward(toks, want_logbeta=True)
    out = os.path.join(TMP, "logbeta.bin")
    for extra in ([], ["--ubatch", "5"]):
        got = logits(model, [toks], "--retention-out", out, *extra)
        assert rel_err(got, ref) < TOL["f32"]
        lb = np.fromfile(out, "<f4").reshape(ref_lb.shape)
        assert np.all(lb <= 0.0)
        assert np.abs(lb - ref_lb).max() < 1e-5, np.abs(lb - ref_lb).max()
    # a model without gates refuses the option
    p = run("logits", make_tiny(60, "f32", "gqa"), "--tokens", "1 2", "--out", out,
            "--retention-out", out, ok=False)
    assert p.returncode == 2 and "retention" in p.stderr


def test_gist_sentence_mask():
    model = make_tiny(65, "f32", "gqa", gist=2)
    ref = ref_llama.RefModel(model)
    first = int(ref.meta["gistd.gist.first_token_id"])
    g0, g1 = first, first + 1
    # [BOS] sentence [gists] sentence [gists] unfinished sentence
    toks = [1, 40, 41, 42, 43, g0, g1, 50, 51, 52, g0, g1, 60, 61, 62]
    allow = ref_llama.sentence_mask(toks, first, 2, int(ref.meta.get("gistd.gist.sinks", 1)))
    want = ref.forward(toks, allow=allow)
    causal = ref.forward(toks)
    assert rel_err(causal, want) > 1e-2  # the mask matters for these tokens
    for kv_type in ("f32", "f16"):
        got = logits(model, [toks], "--gist-mask", "--kv-type", kv_type)
        err = rel_err(got, want)
        assert err < (TOL["f32"] if kv_type == "f32" else 1e-3), (kv_type, err)
    # a model without gist tokens refuses the option
    p = run("logits", make_tiny(65, "f32", "gqa"), "--tokens", "1 2", "--gist-mask", "--out",
            os.path.join(TMP, "x.bin"), ok=False)
    assert p.returncode == 2 and "gist" in p.stderr


def test_bad_input():
    model = make_tiny(70, "f32", "gqa")
    out = os.path.join(TMP, "bad.bin")
    cases = [
        (["logits", os.path.join(TMP, "absent.gguf"), "--tokens", "1", "--out", out], "absent"),
        (["logits", model, "--tokens", "1 384", "--out", out], "384"),  # outside vocabulary
        (["logits", model, "--tokens", "1 x", "--out", out], "x"),
        (["logits", model, "--out", out], "usage"),
        (["logits", model, "--tokens", "1", "--out", out, "--threads", "-3"], "threads"),
        (["generate", model, "--prompt", "hi", "-n", "3", "--top-p", "2"], "top-p"),
        (["perplexity", model], "usage"),
    ]
    for args, needle in cases:
        p = run(*args, ok=False)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, p.stderr)


def test_bad_shape_named():
    """A file whose ffn_up has the wrong number of rows is refused, naming the tensor."""
    model = make_tiny(71, "f32", "gqa")
    data = bytearray(open(model, "rb").read())
    name = b"blk.1.ffn_up.weight"
    at = data.index(name) + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    assert n_dims == 2
    ne1 = at + 4 + 8
    assert int.from_bytes(data[ne1:ne1 + 8], "little") == 128
    data[ne1:ne1 + 8] = (96).to_bytes(8, "little")  # fewer rows: still inside the file
    bad = os.path.join(TMP, "bad-shape.gguf")
    open(bad, "wb").write(data)
    p = run("logits", bad, "--tokens", "1 2", "--out", os.path.join(TMP, "x.bin"), ok=False)
    assert p.returncode == 2, p.stderr
    assert "blk.1.ffn_up.weight" in p.stderr and len(p.stderr.strip().splitlines()) == 1, \
        p.stderr


def test_unsupported_named():
    """An unknown architecture, a missing qwen2 bias and a q4_1 matrix are refused with one
    line that names what is wrong and what is supported."""
    model = make_tiny(72, "f32", "qwen2")
    data = open(model, "rb").read()
    arch = (5).to_bytes(8, "little")  # the string's length, then its bytes
    cases = [(data.replace(arch + b"qwen2", arch + b"qwen9", 1),
              "architecture 'qwen9' is not supported (llama, qwen2, qwen3)"),
             (data.replace(b"blk.1.attn_k.bias", b"blk.1.attn_k.bia_", 1),
              "missing tensor 'blk.1.attn_k.bias'")]
    # a q4_1 matrix: the type number of a q8_0 one changed (its data is then only shorter)
    q8 = open(make_tiny(72, "q8_0", "gqa"), "rb").read()
    name = b"blk.0.ffn_gate.weight"
    at = q8.index(name) + len(name) + 4 + 16  # n_dims, ne[0], ne[1]
    assert int.from_bytes(q8[at:at + 4], "little") == 8
    cases.append((q8[:at] + (3).to_bytes(4, "little") + q8[at + 4:],
                  "has type q4_1, expected f32, f16, bf16, q8_0, q4_0, q5_0, q5_1, q4_K, q5_K or q6_K"))
    for i, (blob, needle) in enumerate(cases):
        bad = os.path.join(TMP, f"unsupported-{i}.gguf")
        open(bad, "wb").write(blob)
        p = run("logits", bad, "--tokens", "1 2", "--out", os.path.join(TMP, "x.bin"), ok=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], (needle, p.stderr)
        p = run("info", bad, ok=False)
        assert p.returncode == 2 and needle in p.stderr, (needle, p.stderr)


tap.main(globals())
