"""Cross-checks of the training recipes (train/) against the C engine.

A tiny configuration of every stage (tokenizer on a slice of the corpus, base model,
gist tokens, retention gates) runs in-process in a temporary folder and is exported to
GGUF; then the C engine (build/bin/gist-model) must reproduce the PyTorch model: logits
of the base model, logits of the gist model under the sentence mask, and the gates'
log beta. Independent references: RoPE and the sentence mask against naive loops written
from their definitions, SentencePiece's own ids for the tokenizer.
"""
import math
import os
import re
import subprocess
import sys

import tap

try:
    import numpy as np
    import sentencepiece  # noqa: F401
    import torch
except ImportError as ex:  # the recipes need Debian's python3-torch and python3-sentencepiece
    np = torch = None
    MISSING = str(ex)
else:
    MISSING = None

TRAIN = os.path.join(tap.ROOT, "train")
_fix = {}


def need_torch():
    if MISSING:
        raise tap.Missing(f"training stack absent ({MISSING}); `make deps-train` installs it")


def fixture():
    """Runs the tiny recipe once: {"dir", "tok", "base", "gist", "gates", "gates_rand"}."""
    need_torch()
    corpus = os.path.dirname(tap.shared("corpus/persuasion.txt"))
    if _fix:
        return _fix
    d = tap.tmpdir()
    os.environ["GISTD_TRAIN_RUNS"] = os.path.join(d, "runs")
    sys.path.insert(0, TRAIN)
    import export
    import model as M
    import tokenizer
    import train_base
    import train_gates
    import train_gist

    torch.set_num_threads(2)
    mb = ["--corpus", corpus, "--max-bytes", "40000"]
    tok = os.path.join(d, "tok")
    tokenizer.main(["--out", tok, "--vocab", "400"] + mb)
    tok += ".model"
    common = mb + ["--tok", tok, "--seq", "48", "--warmup", "2", "--log-every", "1000",
                   "--eval-windows", "2"]
    train_base.main(common + ["--out", f"{d}/base", "--dim", "32", "--layers", "2",
                              "--heads", "4", "--kv-heads", "2", "--ctx", "128", "--batch",
                              "4", "--max-steps", "8", "--lr", "1e-2"])
    train_gist.main(common + ["--base", f"{d}/base/ckpt.pt", "--out", f"{d}/gist",
                              "--gists", "2", "--batch", "4", "--frozen-steps", "4",
                              "--max-steps", "4"])
    train_gates.main(common + ["--model", f"{d}/gist/ckpt.pt", "--out", f"{d}/gates",
                               "--hidden", "8", "--budget", "16", "--batch", "2",
                               "--max-steps", "4"])
    files = {}
    for name in ("base", "gist", "gates"):
        files[name] = os.path.join(d, f"{name}.gguf")
        export.main(["--ckpt", f"{d}/{name}/ckpt.pt", "--tok", tok, "--out", files[name]])
    # the trained gates barely moved from their start (nearly constant log beta): for the
    # cross-check, give them random weights so log beta varies with x
    m, ck = M.load_checkpoint(f"{d}/gates/ckpt.pt")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for b in m.blocks:
            for p in b.retention.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    files["gates_rand"] = os.path.join(d, "gates_rand.gguf")
    export.export(m, export.data.load_sp(tok), files["gates_rand"], "f32", ck.get("gist"),
                  ck.get("retention_budget"))
    _fix.update(dir=d, tok=tok, **files)
    return _fix


def train_modules():
    need_torch()
    if TRAIN not in sys.path:
        sys.path.insert(0, TRAIN)
    import data
    import export
    import model as M

    return data, export, M


def engine():
    exe = tap.tool("gist-model")
    assert os.path.exists(exe), f"{exe} not built"
    return exe


def engine_logits(model_path, tokens, extra=()):
    """float32 [n_tokens, n_vocab] from `gist-model logits`; a failure of the command (an
    option it no longer knows included) fails the test."""
    exe = engine()
    d = tap.tmpdir()
    out = os.path.join(d, "logits.f32")
    cmd = [exe, "logits", model_path, "--tokens", " ".join(map(str, tokens)), "--out", out,
           "--threads", "1"] + list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd[:3])}... failed: {r.stderr.strip()}"
    return np.fromfile(out, dtype="<f4"), d


def torch_forward(model_path, tokens, gist_mask=False):
    """(logits [T, V], log beta [T, n_layer, n_head_kv] or None) from the GGUF weights."""
    _data, export, M = train_modules()
    m, kv = export.load_gguf(model_path)
    x = torch.tensor([tokens])
    mask = None
    if gist_mask:
        mask = M.sentence_mask(x, kv["gistd.gist.first_token_id"], kv["gistd.gist.count"],
                               kv.get("gistd.gist.sinks", 1))
    aux = {} if m.has_gates() else None
    with torch.no_grad():
        logits = m(x, mask=mask, aux=aux)[0].numpy()
    lb = None
    if aux is not None:
        lb = torch.stack(aux["logbeta"], dim=2)[0].numpy()  # [T, n_layer, n_head_kv]
    return logits, lb, kv


def sample_tokens(tok_path, gist_first=None, n_gist=0):
    """BOS + a held-out passage, with the gist ids after each closed sentence if asked."""
    data, _export, _M = train_modules()
    sp = data.load_sp(tok_path)
    text = ("Anne was sitting quietly. Was it really him? Yes! She could not say.\n\n"
            "The evening passed and nothing more was said of it")
    ids = data.encode_text(sp, text)
    if not gist_first:
        return [sp.bos_id()] + ids
    sents = data.split_sentences(np.array(ids), data.piece_texts(sp))
    out = [sp.bos_id()]
    for i, s in enumerate(sents):
        out += [int(t) for t in s]
        if i < len(sents) - 1:
            out += list(range(gist_first, gist_first + n_gist))
    return out


def close(a, b, what, tol=2e-4):
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= tol * scale, f"{what}: max |engine - torch| = {err:.3g} (scale {scale:.3g})"


# ---- independent references -------------------------------------------------------------

def test_rope_adjacent_pairs():
    _data, _export, M = train_modules()
    T, H, D = 5, 2, 8
    x = torch.randn(1, T, H, D, generator=torch.Generator().manual_seed(1))
    cos, sin = M.rope_tables(T, D, 10000.0)
    y = M.rope(x, cos, sin).numpy()
    xn = x.numpy().astype(np.float64)
    for t in range(T):
        for h in range(H):
            for i in range(D // 2):
                th = t * 10000.0 ** (-2 * i / D)
                a, b = xn[0, t, h, 2 * i], xn[0, t, h, 2 * i + 1]
                assert abs(y[0, t, h, 2 * i] - (a * math.cos(th) - b * math.sin(th))) < 1e-5
                assert abs(y[0, t, h, 2 * i + 1] - (a * math.sin(th) + b * math.cos(th))) < 1e-5


def test_sentence_mask_rule():
    _data, _export, M = train_modules()
    G = 100  # gist ids 100, 101
    seq = [1, 5, 6, 100, 101, 7, 8, 9, 100, 101, 10, 11]
    kind = []  # (is_gist, sentence index) written out by hand from the definition
    sent = 0
    for k, t in enumerate(seq):
        g = t >= G
        kind.append((g, sent))
        if g and (k + 1 == len(seq) or seq[k + 1] < G):
            sent += 1
    m = M.sentence_mask(torch.tensor([seq]), G, 2, n_sinks=1)[0].numpy()
    for i in range(len(seq)):
        for j in range(len(seq)):
            want = j <= i and (j == 0 or kind[j][0] or kind[j][1] == kind[i][1])
            assert bool(m[i, j]) == want, (i, j)
    assert not m[5, 1] and not m[10, 6] and m[10, 3] and m[9, 5] and m[4, 3] and not m[3, 4]


def test_induction_targets():
    """Where train/induction.py shows its heads to look, against the definition: a previous-
    token head at t - 1; an induction head, for a query whose token was written n positions
    back inside a repeat, at the position after that earlier occurrence."""
    _data, _export, _M = train_modules()
    import induction

    seq, n, end = 20, 4, 13  # [BOS] + a span of 4 written 3 times = 13 ids; book after
    prev, ind = induction.attention_targets(seq, [(n, end), None])
    assert prev.tolist() == [[-1] + list(range(seq - 1))] * 2
    assert ind[1].tolist() == [-1] * seq
    w = [1, 10, 11, 12, 13] * 1 + [10, 11, 12, 13] * 2 + [90 + i for i in range(seq - 13)]
    for t in range(seq):
        j = int(ind[0, t])
        if j < 0:
            continue
        # the query's token stood at j - 1, and j holds the token that follows the query
        assert w[j - 1] == w[t] and w[j] == w[t + 1], t
    # every query of the second and third copies but the last is supervised
    assert [t for t in range(seq) if ind[0, t] >= 0] == list(range(n + 1, end - 1))


def test_text_induction_targets():
    """induction.text_targets on random text of few ids against a search written from its
    definition: the latest earlier occurrence i of the query's bigram, the target i + 1
    when it holds the query's next id."""
    _data, _export, _M = train_modules()
    import induction

    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, (3, 40))
    y = np.concatenate([x[:, 1:], rng.integers(0, 4, (3, 1))], 1)
    prev, ind = induction.text_targets(x, y)
    assert prev[:, 0].tolist() == [-1] * 3 and prev[:, 1:].tolist() == [list(range(39))] * 3
    hits = 0
    for r in range(3):
        for t in range(40):
            want = -1
            if t >= 1:
                seen = [i for i in range(1, t) if (x[r, i - 1], x[r, i]) == (x[r, t - 1], x[r, t])]
                if seen and x[r, seen[-1] + 1] == y[r, t]:
                    want = seen[-1] + 1
            assert int(ind[r, t]) == want, (r, t)
            hits += want >= 0
    assert hits > 10  # the case is exercised


def test_recall_targets():
    """induction.recall_targets on random text of few ids against a search written from its
    definition: the query's next 3 ids written exactly once before, entirely at or before
    the query, give that occurrence's start."""
    _data, _export, _M = train_modules()
    import induction

    rng = np.random.default_rng(5)
    x = rng.integers(0, 5, (3, 60))
    y = np.concatenate([x[:, 1:], rng.integers(0, 5, (3, 1))], 1)
    rec = induction.recall_targets(x, y, span=3)
    hits = 0
    for r in range(3):
        for t in range(60):
            want = -1
            if t + 3 <= 60:
                seen = [j for j in range(0, t - 1) if list(x[r, j:j + 3]) == list(y[r, t:t + 3])]
                if len(seen) == 1:
                    want = seen[0]
            assert int(rec[r, t]) == want, (r, t)
            hits += want >= 0
    assert hits > 5  # the case is exercised
    # a needle's value after a question that words it differently: the value's start
    x = np.array([[9, 8, 7, 1, 2, 3, 4, 6, 6, 5, 9, 8]])
    y = np.array([[8, 7, 1, 2, 3, 4, 6, 6, 5, 9, 8, 1]])
    assert int(induction.recall_targets(x, y, span=3)[0, 8]) == -1  # 5 9 8: not written yet
    x = np.array([[1, 2, 3, 4, 0, 0, 5, 1, 2]])
    y = np.array([[2, 3, 4, 0, 0, 5, 1, 2, 3]])
    assert int(induction.recall_targets(x, y, span=3)[0, 6]) == 0  # next 1 2 3: written at 0


def test_export_context_and_probes():
    """export.py --ctx declares another context; a checkpoint with vocabulary rows past the
    tokenizer and no gist record (a base stage started from a file with gists) exports them
    as gist tokens; probes.py prints, for each window, a share of whole answers no larger
    than the share of answer tokens, both in [0, 1]."""
    f = fixture()
    _data, export, M = train_modules()
    import contextlib
    import io

    import probes

    d, tok = f["dir"], f["tok"]
    out = os.path.join(d, "ctx.gguf")
    export.main(["--ckpt", f"{d}/base/ckpt.pt", "--tok", tok, "--out", out, "--ctx", "256"])
    kv, _t = export.G.read_gguf(out)
    assert kv["llama.context_length"] == 256 and "gistd.gist.count" not in kv
    m, ck = M.load_checkpoint(f"{d}/gist/ckpt.pt")
    bare = os.path.join(d, "gist-bare.pt")
    M.save_checkpoint(bare, m)  # no gist record
    export.main(["--ckpt", bare, "--tok", tok, "--out", out])
    kv, _t = export.G.read_gguf(out)
    assert kv["gistd.gist.count"] == ck["gist"]["count"]
    assert kv["gistd.gist.first_token_id"] == ck["gist"]["first_token_id"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        probes.main([f"{d}/base/ckpt.pt", "--tok", tok, "--windows", "256,320", "--probes", "2",
                     "--corpus", os.path.dirname(tap.shared("corpus/persuasion.txt")),
                     "--kinds", "passkey,copy"])
    rows = [r for r in buf.getvalue().splitlines() if r.startswith("| 2") or r.startswith("| 3")]
    assert [r.split("|")[1].strip() for r in rows] == ["256", "320"], buf.getvalue()
    scored = 0
    for r in rows:
        for cell in r.strip("|").split("|")[1:]:
            if cell.strip() == "-":  # no probe of that kind fitted the window
                continue
            whole, tokens = (float(v) for v in cell.split("/"))
            assert 0 <= whole <= tokens <= 1, r
            scored += 1
    assert scored >= 2, buf.getvalue()


def test_sum_digits_reads_result_digits_only():
    """probes.sum_digits scores the digits of sums' results and nothing else: a model that
    predicts every next token scores 1 on both shares, one wrong on every result digit 0, and
    one wrong on every other digit (the operands) 1. Result digits are found here from the
    tokens (digits after "=" and a space), there from the characters."""
    f = fixture()
    import data
    import probes

    sp = data.load_sp(f["tok"])

    def is_result(pieces, t):
        j = t
        while j > 0 and pieces[j].isdigit():
            j -= 1
        return (j < t and pieces[j] == "\u2581" and j > 0
                and pieces[j - 1] in ("=", "<0x3D>", "\u2581="))

    def fake(wrong):
        def run(ids):
            ids = ids[0].tolist()
            pieces = [sp.IdToPiece(i) for i in ids]
            out = torch.zeros(1, len(ids), sp.GetPieceSize())
            for t in range(len(ids) - 1):
                nxt = ids[t + 1]
                bad = pieces[t + 1].isdigit() and wrong(is_result(pieces, t + 1))
                out[0, t, (nxt + 1) % sp.GetPieceSize() if bad else nxt] = 1
            return out
        return run

    assert probes.sum_digits(fake(lambda res: False), sp, 2) == {
        "digit facts": 1.0, "worked values": 1.0}
    assert probes.sum_digits(fake(lambda res: res), sp, 2) == {
        "digit facts": 0.0, "worked values": 0.0}
    assert probes.sum_digits(fake(lambda res: not res), sp, 2) == {
        "digit facts": 1.0, "worked values": 1.0}


def test_attention_and_copy_supervision():
    """model.attention, a chunk of queries and a head at a time, equals softmax(q k^T + bias
    + decay) v written out in full, and its loss is the mean -log attention of the watched
    heads on their targets; supervise_copy the cross-entropy of the chosen heads' summed
    output, read through the unembedding."""
    _data, _export, M = train_modules()
    g = torch.Generator().manual_seed(3)
    B, H, KV, T, hd, E, V = 2, 4, 2, 5, 4, 6, 7
    q = torch.randn(B, H, T, hd, generator=g)
    k = torch.randn(B, KV, T, hd, generator=g)
    v = torch.randn(B, KV, T, hd, generator=g)
    see = torch.ones(B, T, T, dtype=torch.bool).tril()
    see[0, 3, 1] = see[1, 4, 2] = False  # a sentence mask hides some earlier keys
    bias = torch.zeros(B, T, T).masked_fill(~see, float("-inf"))
    decay = -torch.rand(B, KV, T, T, generator=g)
    tgt = torch.tensor([[-1, 0, 1, -1, 2], [-1, -1, -1, 3, 0]])
    tgt3 = torch.full((B, T), -1)  # a watched head with nothing to learn adds no term
    saved = M.QUERY_CHUNK
    try:
        for chunk in (2, 3, T):
            M.QUERY_CHUNK = chunk
            o, nll = M.attention(q, k, v, bias, decay, [(2, tgt), (3, tgt3)])
            p = torch.softmax(q @ k.repeat_interleave(H // KV, 1).transpose(-1, -2) + bias[:, None]
                              + decay.repeat_interleave(H // KV, 1), -1)
            want_o = (p @ v.repeat_interleave(H // KV, 1)).transpose(1, 2).reshape(B, T, H * hd)
            assert float((o - want_o).abs().max()) < 1e-5, chunk
            want = [-math.log(float(p[b, 2, t, tgt[b, t]])) for b in range(B) for t in range(T)
                    if tgt[b, t] >= 0]
            assert len(nll) == 1 and abs(float(nll[0]) - sum(want) / len(want)) < 1e-5, chunk
    finally:
        M.QUERY_CHUNK = saved
    o = torch.randn(B, T, H * hd, generator=g)
    w_out = torch.randn(E, H * hd, generator=g)
    unembed = torch.randn(V, E, generator=g)
    # two groups: heads 0 and 2 summed against tgt, head 1 alone against tgt2
    tgt2 = torch.tensor([[3, -1, -1, 6, -1], [-1, 5, -1, -1, -1]])
    aux = {"layer": 0, "ov_heads": [[([0, 2], tgt), ([1], tgt2)]], "head_dim": hd,
           "unembed": unembed}
    M.supervise_copy(o, w_out, aux)
    total = 0.0
    for heads, tg in (((0, 2), tgt), ((1,), tgt2)):
        want = []
        for b in range(B):
            for t in range(T):
                if tg[b, t] < 0:
                    continue
                c = sum(w_out[:, h * hd:(h + 1) * hd] @ o[b, t, h * hd:(h + 1) * hd]
                        for h in heads)
                z = (unembed @ c).double()
                want.append(float(torch.logsumexp(z, 0) - z[tg[b, t]]))
        total += sum(want) / len(want)
    assert abs(float(aux["ov_loss"]) - total) < 1e-4


def test_self_copy_supervision():
    """--ov-self: induction.self_copy draws one position of every token id past each window's
    first token, at random; model.supervise_self_copy's loss is, for each named head, the mean
    cross-entropy of its value row at those positions, read alone through its output slice
    and the unembedding, against the token there; the forward adds it, and it trains the
    values, the output projection and the unembedding, never the queries."""
    _data, _export, M = train_modules()
    sys.path.insert(0, TRAIN)
    import induction

    torch.manual_seed(3)
    cfg = M.Config(n_vocab=23, n_embd=16, n_layer=2, n_head=4, n_head_kv=2, n_ff=32, n_ctx=16)
    m = M.Llama(cfg)
    x = torch.randint(0, 23, (3, 12))
    heads = [(1, 0), (1, 3), (0, 2)]
    draws = []
    for seed in range(6):
        aux = induction.self_copy(m, x, heads, np.random.default_rng(seed))
        at, tok = aux["ov_self_at"], aux["ov_self_tok"]
        assert (at % 12 != 0).all()
        assert torch.equal(tok, x.reshape(-1)[at])
        assert sorted(tok.tolist()) == sorted(set(x[:, 1:].reshape(-1).tolist()))
        draws.append(tuple(at.tolist()))
    assert len(set(draws)) > 1, "the positions should be drawn, not fixed"
    assert aux["ov_self"] == [[2], [0, 3]]

    # the loss against a naive computation of the same rows, layer 1's heads 0 and 3
    B, T, KV, hd = 3, 12, 2, 4
    v = torch.randn(B, T, KV, hd)
    w_out = torch.randn(16, 4 * hd)
    unembed = torch.randn(23, 16)
    a2 = {**aux, "layer": 1, "ov_self_unembed": unembed}
    M.supervise_self_copy(v, w_out, 2, a2)
    want = 0.0
    for h in (0, 3):
        terms = []
        for i, t in zip(at.tolist(), tok.tolist()):
            z = (unembed @ (w_out[:, h * hd:(h + 1) * hd] @ v[i // T, i % T, h // 2])).double()
            terms.append(float(torch.logsumexp(z, 0) - z[t]))
        want += sum(terms) / len(terms)
    assert abs(float(a2["ov_self_loss"]) - want) < 1e-4

    # through the forward: the term is there, and its gradient reaches the values and the
    # output projection of the named layers and the unembedding
    m.zero_grad()
    aux = induction.self_copy(m, x, heads, np.random.default_rng(0))
    m(x, aux=aux)
    aux["ov_self_loss"].backward()
    assert m.output.weight.grad.abs().sum() > 0
    for layer in (0, 1):
        assert m.blocks[layer].attn_v.weight.grad.abs().sum() > 0
        assert m.blocks[layer].attn_output.weight.grad.abs().sum() > 0
    assert m.blocks[1].attn_q.weight.grad is None or not m.blocks[1].attn_q.weight.grad.any()


def test_bf16_step_follows_f32():
    """--bf16 (torch.autocast) runs the forward's products in bfloat16: the logits stay within
    bfloat16's rounding of the float32 ones, the softmax of attention stays float32 (the
    watched heads' loss too), and the gradients point the same way."""
    _data, _export, M = train_modules()
    torch.manual_seed(5)
    cfg = M.Config(n_vocab=97, n_embd=32, n_layer=2, n_head=4, n_head_kv=2, n_ff=64, n_ctx=40)
    m = M.Llama(cfg)
    x = torch.randint(0, 97, (2, 40))
    runs = []
    for bf16 in (False, True):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = m(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), x.reshape(-1))
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
        runs.append((logits.float(), float(loss), g, logits.dtype))
    (l32, loss32, g32, t32), (l16, loss16, g16, t16) = runs
    assert t32 == torch.float32 and t16 == torch.bfloat16  # the products did run in bf16
    assert float((l16 - l32).abs().max()) < 0.05 * float(l32.abs().max()), "logits"
    assert abs(loss16 - loss32) < 0.01 * loss32, (loss16, loss32)
    cos = float(g16 @ g32 / (g16.norm() * g32.norm()))
    assert cos > 0.99, cos
    q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    bias = torch.zeros(1, 6, 6).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -1e30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _o, nll = M.attention(q, k, k, bias, None, [(0, torch.zeros(1, 6, dtype=torch.long))])
    assert nll[0].dtype == torch.float32


def test_thought_split_and_mask():
    """Gists after each thought (train_gist --unit thought): the thoughts are where gistd's
    segmenter closes them, and a token sees finished thoughts only through their gists."""
    data, _export, M = train_modules()
    sys.path.insert(0, TRAIN)
    import train_gist

    texts = {0: "", 1: "x", 2: " =", 3: " 5", 4: ".", 5: "\n", 6: "Answer", 7: ":",
             8: "\n\n", 9: " ", 10: "y"}
    # "x = 5.\n\n" | "y = x.\n\n" (one "\n\n" token) | "\n" runs on | "Answer:" unclosed
    toks = np.array([1, 2, 3, 4, 5, 5, 10, 2, 1, 4, 8, 6, 7, 5, 5, 5, 10, 7])
    assert data.thought_ends(toks, texts) == [5, 10, 15]
    # a paragraph break is a sentence end too where no terminator came before it; a single
    # newline, or newlines before any text, close nothing
    assert data.thought_ends(np.array([5, 5, 1, 4, 5, 1, 2]), texts) == []
    assert data.sentence_ends(toks, texts) == [3, 9, 15]
    parts = data.split_thoughts(toks, texts)
    assert [len(p) for p in parts] == [6, 5, 5, 2]
    assert np.array_equal(np.concatenate(parts), toks)

    G, BOS = 100, 99
    s = train_gist.GistSampler([parts], 20, BOS, G, 2, 0)
    w = s.window(parts, 0)
    # written out by hand: [BOS] thought 0, its gists, thought 1, its gists, thought 2 ...
    want = [BOS, *toks[:6], G, G + 1, *toks[6:11], G, G + 1, *toks[11:16], G, G + 1][:21]
    assert list(w) == want, list(w)
    owner = [0] + [0] * 8 + [1] * 7 + [2] * 5  # thought of each position (gists included)
    gist = [t >= G for t in w]
    m = M.sentence_mask(torch.tensor(w[None, :-1]), G, 2, n_sinks=1)[0].numpy()
    for i in range(20):
        for j in range(20):
            ok = j <= i and (j == 0 or gist[j] or owner[j] == owner[i])
            assert bool(m[i, j]) == ok, (i, j)
    # "Answer" (position 16) sees thought 1's gists (14, 15), not its text (9..13)
    assert m[16, 14] and m[16, 15] and not m[16, 9] and not m[16, 13]

    # targets: the token after a gist group is predicted by the group's last gist (as gistd
    # scores text), and with boundary by the thought's last token too (as gistd draws it)
    x, y = train_gist.inputs_targets(np.asarray(w)[None], G, 2)
    assert np.array_equal(x[0], w[:-1])
    want_y = [w[i + 1] for i in range(20)]
    for i in (6, 7, 13, 14):  # a target that is a gist
        want_y[i] = train_gist.IGNORE
    assert list(y[0]) == want_y, list(y[0])
    # every regular token after BOS is a target exactly once, as in the plain window
    assert sorted(t for t in y[0] if t != train_gist.IGNORE) == sorted(w[1:][~np.isin(
        w[1:], [G, G + 1])])
    _x, yb = train_gist.inputs_targets(np.asarray(w)[None], G, 2, boundary=True)
    want_y[6], want_y[13] = w[9], w[16]  # thoughts 0 and 1 end at 6 and 13
    assert list(yb[0]) == want_y, list(yb[0])
    # a window that ends with a gist group adds no target at that thought's last token
    _x, y2 = train_gist.inputs_targets(np.asarray(w[:16])[None], G, 2, boundary=True)
    assert y2[0, 13] == train_gist.IGNORE and y2[0, 12] == w[13]


def test_packed_gist_mask_rule():
    """Rows packed with problems (train_gist --problems): written out by hand from the
    definition; one document with only its BOS pinned gives sentence_mask."""
    _data, _export, M = train_modules()
    G = 100
    # doc 0: BOS q q | t t g g | t t g g | a ; doc 1: BOS q g g | t
    seq = [1, 5, 6, 7, 8, 100, 101, 9, 10, 100, 101, 11, 1, 5, 100, 101, 12]
    doc = [0] * 12 + [1] * 5
    pin = [True, True, True] + [False] * 9 + [True, True] + [False] * 3
    seg = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4]  # the question closes in t t
    first = [0] * 12 + [12] * 5
    m = M.packed_gist_mask(torch.tensor([seq]), torch.tensor([doc]), torch.tensor([pin]),
                           G, 2)[0].numpy()
    for i in range(len(seq)):
        for j in range(len(seq)):
            g_i, g_j = seq[i] >= G, seq[j] >= G
            sees = (j == first[i]) if g_i else pin[j]
            want = j <= i and doc[i] == doc[j] and (sees or g_j or seg[i] == seg[j])
            assert bool(m[i, j]) == want, (i, j)
    # the answer (11) sees the question (1, 2) and both gist groups, not thought 1's text;
    # a gist (9) sees its thought (7, 8) and BOS, not the pinned question; no doc sees another
    assert m[11, 2] and m[11, 6] and m[11, 10] and not m[11, 8]
    assert m[9, 7] and m[9, 0] and not m[9, 2] and not m[16, 11] and m[16, 13]
    one = torch.tensor([seq[:12]])
    only_bos = torch.tensor([[True] + [False] * 11])
    assert torch.equal(M.packed_gist_mask(one, torch.zeros_like(one), only_bos, G, 2),
                       M.sentence_mask(one, G, 2, n_sinks=1))


def test_problem_sampler_pins_the_question():
    """train_gist.ProblemSampler: the pinned tokens are BOS and the question's, a gist group
    follows every closed thought and nothing else, the answer slice holds the solver's answer,
    and no target crosses into the next problem."""
    f = fixture()
    sys.path.insert(0, TRAIN)
    import data
    import synth
    import train_gist

    sp = data.load_sp(f["tok"])
    G = sp.GetPieceSize()
    texts = data.piece_texts(sp)
    s = train_gist.ProblemSampler(sp, 400, G, 2, 3, evaluation=True)
    ref = train_gist.ProblemSampler(sp, 400, G, 2, 3, evaluation=True)
    for _ in range(12):
        t, pin, ans = s.problem()
        p = synth.reasoning(ref.rng, None, 0, True)  # the same draw, for the reference
        q = synth.reasoning_question(p)
        assert t[0] == sp.bos_id() and pin[0]
        plain = [x for x in t if x < G]
        assert plain[1:] == sp.EncodeAsIds(p.text)
        # the pinned tokens start the problem and are its question's (the tokenizations of
        # the question alone and of the whole text may part at its last token)
        n_pin = sum(pin)
        assert all(pin[:n_pin]) and not any(pin[n_pin:])
        qi = sp.EncodeAsIds(q)
        assert t[1:n_pin] == qi[:n_pin - 1] and n_pin - 1 >= len(qi) - 1, (n_pin, len(qi))
        # gists: one group after each closed thought, none in the last (unclosed) one
        segs = data.split_thoughts(np.asarray(plain[1:]), texts)
        assert sum(x >= G for x in t) == 2 * (len(segs) - 1)
        assert sp.DecodeIds(t[ans]).strip() == p.values[0]
    x, y, mask = train_gist.problem_batch(s, 3, 0.0)
    doc_first = x == sp.bos_id()
    assert doc_first[:, 0].all()
    # the target before each BOS is ignored; BOS is never a target
    assert (y[:, :-1][doc_first[:, 1:]] == train_gist.IGNORE).all()
    assert not (y == sp.bos_id()).any()
    assert mask.shape == (3, 400, 400)


def test_problem_sampler_names_open_for_training():
    """train_gist.ProblemSampler given the books' filler: training's word problems take a
    share of made-up names (never a held-out one), as the base's mix does; evaluation draws
    the very problems it draws without the filler."""
    f = fixture()
    sys.path.insert(0, TRAIN)
    import data
    import synth
    import train_gist

    sp = data.load_sp(f["tok"])
    G = sp.GetPieceSize()
    book = open(tap.shared("corpus/emma.txt"), encoding="utf-8").read()
    filler = synth.Filler([book])
    owner = re.compile(r"Step 1: ([A-Z][a-z]+) has \d+ ")
    tr = train_gist.ProblemSampler(sp, 400, G, 2, 5, filler=filler)
    names = []
    for _ in range(80):
        t, _pin, _ans = tr.problem()
        m = owner.search(sp.DecodeIds([x for x in t if x < G]))
        if m:
            names.append(m.group(1))
    listed = set(synth.FIRST_NAMES)
    made_up = [n for n in names if n not in listed]
    assert len(names) >= 20 and 0.2 * len(names) <= len(made_up) <= 0.8 * len(names), names
    assert not any(synth.heldout(n) for n in names), names
    a = train_gist.ProblemSampler(sp, 400, G, 2, 3, evaluation=True, filler=filler)
    b = train_gist.ProblemSampler(sp, 400, G, 2, 3, evaluation=True)
    for _ in range(20):
        assert a.problem() == b.problem()


def test_gist_stage_thought_unit():
    """A tiny gist stage with --unit thought exports a file the engine reads as such."""
    f = fixture()
    sys.path.insert(0, TRAIN)
    import export
    import train_gist

    d, corpus = f["dir"], os.path.dirname(tap.shared("corpus/persuasion.txt"))
    train_gist.main(["--corpus", corpus, "--max-bytes", "40000", "--tok", f["tok"], "--seq",
                     "48", "--warmup", "2", "--log-every", "1000", "--eval-windows", "2",
                     "--base", f"{d}/base/ckpt.pt", "--out", f"{d}/gist_thought", "--gists",
                     "2", "--batch", "4", "--frozen-steps", "2", "--max-steps", "2",
                     "--unit", "thought"])
    out = os.path.join(d, "gist_thought.gguf")
    export.main(["--ckpt", f"{d}/gist_thought/ckpt.pt", "--tok", f["tok"], "--out", out])
    info = subprocess.run([engine(), "info", out], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "mask thought" in info.stdout, info.stdout

    # a stage carried on from a model file with gist rows and gates: it starts from the
    # file's weights, its gist rows included, and without its gates
    import model as M

    start = export.load_gguf(f["gates"])[0]
    train_gist.main(["--corpus", corpus, "--max-bytes", "40000", "--tok", f["tok"], "--seq",
                     "48", "--warmup", "2", "--log-every", "1000", "--eval-windows", "2",
                     "--base", f["gates"], "--out", f"{d}/gist_carry", "--gists", "2",
                     "--batch", "4", "--frozen-steps", "0", "--max-steps", "1", "--lr", "1e-9",
                     "--unit", "thought"])
    got, _ck = M.load_checkpoint(f"{d}/gist_carry/ckpt.pt")
    assert not got.has_gates() and start.has_gates()
    assert got.c.n_vocab == start.c.n_vocab
    for name, w in got.state_dict().items():
        assert torch.allclose(w, start.state_dict()[name], atol=1e-4), name


def one_step_args(f, ctx, seq):
    """train_base.py's arguments for a single step from the fixture's base, windows of seq
    tokens in a context of ctx (--out and the flags under test to be added)."""
    corpus = os.path.dirname(tap.shared("corpus/persuasion.txt"))
    return ["--corpus", corpus, "--max-bytes", "40000", "--tok", f["tok"], "--init-ckpt",
            f"{f['dir']}/base/ckpt.pt", "--ctx", str(ctx), "--seq", str(seq), "--batch", "2",
            "--max-steps", "1", "--log-every", "1", "--eval-windows", "1", "--warmup", "1"]


def first_step_loss(main, args):
    """The loss a training script's main(args) logs at its first step."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(args)
    m = re.search(r"^step 1 loss ([\d.]+)", buf.getvalue(), re.M)
    assert m, buf.getvalue()
    return float(m.group(1))


def assert_refused(main, args, what):
    """main(args) exits with an error: what (the arguments in words) is refused."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            main(args)
    except SystemExit as e:
        assert e.code != 0
    else:
        raise AssertionError(f"{what} was accepted")


def test_ov_self_adds_its_term():
    """train_base.py --ov-self w --sup-rec L:H: the first step's loss (the same batch, the same
    weights, the same positions drawn) grows linearly in w and by a positive amount; without
    --sup-rec the flag is refused."""
    f = fixture()
    sys.path.insert(0, TRAIN)
    import train_base

    d, common = f["dir"], one_step_args(f, 128, 48)
    first = {w: first_step_loss(train_base.main, common + [
        "--out", f"{d}/ovself{w}", "--sup-rec", "1:0,1:2", "--ov-self", str(w)])
        for w in (0, 1, 3)}
    term = first[1] - first[0]
    assert term > 0.1, first
    assert abs((first[3] - first[0]) - 3 * term) < 1e-3 * first[3], first
    assert_refused(train_base.main, common + ["--out", f"{d}/ovself_x", "--ov-self", "1"],
                   "--ov-self without --sup-rec")


def test_answer_loss_adds_the_answers_term():
    """train_base.py --answer-loss a: the first step's loss (the same batch, the same weights)
    is the plain loss plus a times the answer tokens' mean loss, so it grows linearly in a
    and by a positive amount; without --mix (no answers) the flag is refused."""
    f = fixture()
    sys.path.insert(0, TRAIN)
    import train_base

    d, common = f["dir"], one_step_args(f, 256, 256)
    first = {a: first_step_loss(train_base.main, common + [
        "--out", f"{d}/answers{a}", "--mix", "1", "--kinds", "passkey=1", "--answer-loss", str(a)])
        for a in (0, 2, 4)}
    term = first[2] - first[0]
    assert term > 0.1, first
    assert abs((first[4] - first[0]) - 2 * term) < 1e-3 * first[4], first
    assert_refused(train_base.main, common + ["--out", f"{d}/answers_x", "--answer-loss", "1"],
                   "--answer-loss without --mix")


def test_mix_arguments_reach_the_draws():
    """train_base.py and train_gist.py take the mix's arguments alike (mix.add_args): --kinds
    reaches the sampler that draws the documents, and --open s sets the share of training
    values drawn from outside the lists (synth.OPEN) before it draws; a share outside [0, 1],
    or --open without --mix, is refused."""
    f = fixture()
    sys.path.insert(0, TRAIN)
    import mix
    import synth
    import train_base
    import train_gist

    d = f["dir"]
    corpus = os.path.dirname(tap.shared("corpus/persuasion.txt"))
    gist_args = ["--corpus", corpus, "--max-bytes", "40000", "--tok", f["tok"], "--base",
                 f"{d}/base/ckpt.pt", "--seq", "96", "--batch", "2", "--frozen-steps", "1",
                 "--max-steps", "1", "--log-every", "1", "--eval-windows", "1", "--warmup", "1"]
    was, made = synth.OPEN, mix.MixSampler.__init__
    seen = []

    def spy(self, *args, **kw):
        seen.append((args[-1] if len(args) == 7 else kw.get("kinds"), synth.OPEN))
        made(self, *args, **kw)

    for main, common in ((train_base.main, one_step_args(f, 256, 256)),
                         (train_gist.main, gist_args)):
        seen.clear()
        mix.MixSampler.__init__ = spy
        try:
            first_step_loss(main, common + ["--out", f"{d}/open_{main.__module__}", "--mix",
                                            "1", "--kinds", "niah_single=1", "--open", "0.9"])
        finally:
            mix.MixSampler.__init__ = made
            synth.OPEN = was
        assert seen == [({"niah_single": 1.0}, 0.9)], (main.__module__, seen)
        for args, what in ((["--mix", "1", "--open", "1.5"], "--open 1.5"),
                           (["--open", "0.9"], "--open without --mix"),
                           (["--mix", "1", "--kinds", "nothing=1"], "an unknown kind")):
            assert_refused(main, common + ["--out", f"{d}/open_x"] + args, what)
        assert synth.OPEN == was


def test_stage_starts_from_model_file():
    """export.load_start (the start of train_base.py --init-gguf/--init-ckpt and of
    induction.py --init): a model file and the checkpoint it was exported from give the same
    weights, gist rows included, and neither keeps the retention gates."""
    f = fixture()
    _d, export, M = train_modules()
    want, _ck = M.load_checkpoint(f"{f['dir']}/gates/ckpt.pt")
    assert want.blocks[0].retention is not None, "the fixture's gate stage has gates"
    for path in (f["gates"], f"{f['dir']}/gates/ckpt.pt"):
        got = export.load_start(path)
        assert all(b.retention is None for b in got.blocks), path
        sd, ref = got.state_dict(), want.state_dict()
        assert set(sd) == {k for k in ref if ".retention." not in k}, path
        for k, v in sd.items():
            assert torch.equal(v, ref[k]), f"{path}: {k}"
        assert got.c.n_vocab == want.c.n_vocab


def test_end_time_rolls_over_midnight():
    train_modules()
    import datetime as dt

    import common

    utc = dt.timezone.utc
    now = dt.datetime(2026, 11, 25, 23, 50, 30, tzinfo=utc)
    assert common.end_time_utc("01:30", now) == dt.datetime(2026, 11, 26, 1, 30, tzinfo=utc)
    assert common.end_time_utc("23:55", now) == dt.datetime(2026, 11, 25, 23, 55, tzinfo=utc)
    assert common.end_time_utc("23:50", now) == dt.datetime(2026, 11, 26, 23, 50, tzinfo=utc)
    assert common.end_time_utc(None, now) is None
    assert common.seconds_left(None) == math.inf


def test_paused_step_counts_as_the_usual_one():
    train_modules()
    import common

    c = common.StepClock()
    assert [c.counted(1.0) for _ in range(12)] == [1.0] * 12
    assert c.counted(600.0) == 1.0  # SIGSTOP'd for ten minutes: not spent training
    assert c.counted(1.5) == 1.5
    assert c.counted(45.0) == 45.0  # slow, but under a minute: counted as it was
    slow = common.StepClock()  # steps of 5 s: 90 s is 18 of them, still counted
    for _ in range(12):
        slow.counted(5.0)
    assert slow.counted(90.0) == 90.0


def test_sentence_split():
    data, _export, _M = train_modules()
    texts = {0: "", 1: "Hello", 2: ".", 3: " there", 4: "!", 5: "\n", 6: " ok", 7: "e.g"}
    toks = np.array([1, 2, 3, 4, 5, 5, 1, 7, 3, 2])
    assert data.sentence_ends(toks, texts) == [1, 3]
    toks = np.array([1, 5, 5, 1, 5, 5, 5, 6])
    assert data.sentence_ends(toks, texts) == [2, 6]


def test_gguf_file_layout():
    f = fixture()
    _data, export, M = train_modules()
    kv, tensors = export.G.read_gguf(f["gates"])
    with open(f["gates"], "rb") as fh:
        head = fh.read(24)
    assert head[:4] == b"GGUF" and int.from_bytes(head[4:8], "little") == 3
    assert kv["general.architecture"] == "llama" and kv["general.alignment"] == 32
    assert kv["tokenizer.ggml.model"] == "llama" and kv["tokenizer.ggml.add_bos_token"]
    n = kv["llama.vocab_size"]
    first, count = kv["gistd.gist.first_token_id"], kv["gistd.gist.count"]
    assert len(kv["tokenizer.ggml.tokens"]) == n == first + count
    assert kv["tokenizer.ggml.tokens"][first:] == [f"<gist_{i}>" for i in range(count)]
    assert kv["tokenizer.ggml.token_type"][first:] == [3] * count
    assert kv["gistd.gist.mask"] == "sentence"
    hidden, nkv = kv["gistd.retention.hidden"], kv["llama.attention.head_count_kv"]
    assert tensors["blk.1.retention_in.weight"][0] == [kv["llama.embedding_length"], hidden]
    assert tensors["blk.1.retention_out.weight"][0] == [hidden, nkv]
    assert tensors["blk.1.attn_k.weight"][0] == [kv["llama.embedding_length"],
                                                 nkv * kv["llama.rope.dimension_count"]]
    m, ck = M.load_checkpoint(os.path.join(f["dir"], "gates", "ckpt.pt"))
    w = m.blocks[1].ffn_down.weight.detach().numpy()
    assert np.array_equal(tensors["blk.1.ffn_down.weight"][2], w)


# ---- the C engine -----------------------------------------------------------------------

def test_engine_base_logits():
    f = fixture()
    toks = sample_tokens(f["tok"])
    got, _d = engine_logits(f["base"], toks)
    want, _lb, kv = torch_forward(f["base"], toks)
    assert got.size == want.size, f"engine wrote {got.size} floats, expected {want.size}"
    close(got.reshape(want.shape), want, "base logits")


def test_engine_gist_logits_under_sentence_mask():
    f = fixture()
    _d, export, _M = train_modules()
    kv, _t = export.G.read_gguf(f["gist"])
    toks = sample_tokens(f["tok"], kv["gistd.gist.first_token_id"], kv["gistd.gist.count"])
    got, _d = engine_logits(f["gist"], toks, ["--gist-mask"])
    want, _lb, _kv = torch_forward(f["gist"], toks, gist_mask=True)
    causal, _lb, _kv = torch_forward(f["gist"], toks, gist_mask=False)
    assert np.abs(want - causal).max() > 1e-3, "the mask should change these logits"
    close(got.reshape(want.shape), want, "gist logits under the sentence mask")


def test_engine_retention_logbeta():
    f = fixture()
    toks = sample_tokens(f["tok"])
    d = tap.tmpdir()
    rfile = os.path.join(d, "logbeta.f32")
    got, _d = engine_logits(f["gates_rand"], toks, ["--retention-out", rfile])
    want, lb, kv = torch_forward(f["gates_rand"], toks)
    close(got.reshape(want.shape), want, "gated model logits (gates do not change them)")
    r = np.fromfile(rfile, dtype="<f4")
    assert r.size == lb.size, f"{r.size} log-beta values, expected {lb.size} {lb.shape}"
    assert lb.std() > 0.05, "log beta should vary across tokens, layers and heads"
    close(r.reshape(lb.shape), lb, "log beta")


def test_engine_tokenizer_matches_sentencepiece():
    f = fixture()
    exe = engine()
    data, _export, _M = train_modules()
    sp = data.load_sp(f["tok"])
    book = data.read_text(tap.shared("corpus/persuasion.txt"))  # held out of training
    texts = [book[o : o + 700] for o in (20000, 150000, 400000)]
    texts.append("Caf\u00e9  na\u00efve \u2014 1812 \"quoted\"\n\n\ttabs   and\u00a0\u00e6ther!")
    for text in texts:
        r = subprocess.run([exe, "tokenize", f["gates"], "--text", text],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr.strip()
        got = [int(v) for v in r.stdout.split()]
        want = data.encode_text(sp, text)
        assert got == want, f"engine {got[:20]}... != sentencepiece {want[:20]}... " \
            f"for {text[:40]!r}"


def test_committed_model():
    """Every model under models/ is consistent, and the engine computes what PyTorch does;
    gistd-6m-thought.gguf has its gists after each thought, the others after each sentence."""
    need_torch()
    mdir = os.path.join(tap.ROOT, "models")
    files = sorted(n for n in os.listdir(mdir) if n.endswith(".gguf")) if os.path.isdir(
        mdir) else []
    assert "gistd-6m.gguf" in files, f"no gistd-6m.gguf under {mdir}"
    _d, export, _M = train_modules()
    for name in files:
        path = os.path.join(mdir, name)
        kv, tensors = export.G.read_gguf(path)
        assert kv["general.architecture"] == "llama"
        assert len(kv["tokenizer.ggml.tokens"]) == kv["llama.vocab_size"]
        if "gistd.gist.count" in kv:
            first, count = kv["gistd.gist.first_token_id"], kv["gistd.gist.count"]
            want = "thought" if name.endswith("-thought.gguf") else "sentence"
            assert kv["gistd.gist.mask"] == want, (name, kv["gistd.gist.mask"])
            assert kv["tokenizer.ggml.tokens"][first : first + count] == [
                f"<gist_{i}>" for i in range(count)]
        if "gistd.retention.hidden" in kv:
            assert tensors["blk.0.retention_out.weight"][0] == [
                kv["gistd.retention.hidden"], kv["llama.attention.head_count_kv"]]
        toks = [kv["tokenizer.ggml.bos_token_id"], 450, 451, 452, 453, 454, 455]
        got, _dd = engine_logits(path, toks)
        want, _lb, _kv = torch_forward(path, toks)
        close(got.reshape(want.shape), want, f"{name} logits", tol=1e-3)


tap.main(globals())
