"""Stage 1: train the base llama model on the training books.

    nice -n 10 /usr/bin/python3 train/train_base.py --tok train/runs/tok4096.model \
        --out train/runs/base --minutes 55 --end-utc 22:40

Writes OUT/ckpt.pt every few minutes; running the same command again resumes from it.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402
import induction  # noqa: E402
import mix  # noqa: E402
import model as M  # noqa: E402


@torch.no_grad()
def eval_nll(model, xs, ys, batch=4):
    """Mean next-token NLL (nats) over the given windows, with causal attention."""
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(xs), batch):
        x = torch.from_numpy(xs[i : i + batch])
        y = torch.from_numpy(ys[i : i + batch])
        logits = model(x)
        tot += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                     reduction="sum"))
        n += y.numel()
    model.train()
    return tot / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--tok", required=True, help="SentencePiece .model file")
    ap.add_argument("--out", required=True, help="run folder (checkpoint, log)")
    ap.add_argument("--max-bytes", type=int, default=None, help="read only this much per book")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=None, help="default: ~8/3 dim, multiple of 16")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--init-gguf", default=None,
                    help="start from this GGUF's weights (gist rows kept, gates dropped); "
                    "--ctx sets the new context")
    ap.add_argument("--init-ckpt", default=None,
                    help="start from this checkpoint's weights (a fresh optimizer and step count), "
                         "e.g. a shorter-context stage carried on at a longer context")
    mix.add_args(ap)
    ap.add_argument("--answer-loss", type=float, default=0.0,
                    help="weight of a second loss term: the mean next-token loss over the "
                         "generated documents' answer tokens alone (with --mix)")
    ap.add_argument("--eval-probes", type=int, default=0,
                    help="held-out probes per kind scored at each evaluation")
    # keeps a copying circuit (induction.py) on every window, at the repeats the text holds
    # (induction.text_targets)
    induction.add_supervision_args(ap)
    ap.add_argument("--ov-self", type=float, default=0.0,
                    help="weight of a loss that asks each --sup-rec head's value at one position "
                         "of every token id in the batch, alone through its output and the "
                         "unembedding (both trained by it), for that token "
                         "(model.supervise_self_copy): the copy a recall head makes, for the "
                         "whole vocabulary the text holds (0: off)")
    common.add_budget_args(ap, minutes=60, lr=3e-3)
    a = ap.parse_args(argv)
    if a.answer_loss > 0 and a.mix <= 0:
        ap.error("--answer-loss needs --mix: book windows have no answers")
    kinds = mix.checked_args(ap, a)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    ckpt = os.path.join(a.out, "ckpt.pt")

    sp = data.load_sp(a.tok)
    books, valid = data.split_books(a.corpus)
    train_tok = [data.book_tokens(a.tok, p, a.max_bytes) for p in books]
    valid_tok = data.book_tokens(a.tok, valid, a.max_bytes)
    vx, vy = data.eval_windows(valid_tok, min(a.seq, a.ctx), sp.bos_id(), a.eval_windows)

    if os.path.exists(ckpt):
        model, d = M.load_checkpoint(ckpt)
        state = {k: d[k] for k in ("step", "elapsed", "tokens")}
        print(f"# resuming {ckpt} at step {state['step']}", flush=True)
    elif a.init_gguf or a.init_ckpt:
        import export
        model = export.load_start(a.init_ckpt or a.init_gguf)
        model.set_context(a.ctx)
        d = None
        state = {"step": 0, "elapsed": 0.0, "tokens": 0}
        print(f"# from {a.init_ckpt or a.init_gguf}, context {a.ctx}", flush=True)
    else:
        ff = a.ff or int(math.ceil(a.dim * 8 / 3 / 16) * 16)
        cfg = M.Config(n_vocab=sp.GetPieceSize(), n_embd=a.dim, n_layer=a.layers,
                       n_head=a.heads, n_head_kv=a.kv_heads, n_ff=ff, n_ctx=a.ctx)
        model, d = M.Llama(cfg), None
        state = {"step": 0, "elapsed": 0.0, "tokens": 0}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# config {json.dumps(model.c.to_dict())} params {n_params}", flush=True)
    opt = common.make_optimizer(model.parameters(), a.lr)
    if d is not None and "opt" in d:
        opt.load_state_dict(d["opt"])
    if a.mix > 0:
        sampler = mix.MixSampler(sp, train_tok, [data.read_text(p, a.max_bytes) for p in books],
                                 a.seq, a.seed + state["step"], a.mix, kinds)
        probes = mix.heldout_probes(a.eval_probes, data.read_text(valid), a.seq) \
            if a.eval_probes else []
    else:
        sampler = data.TokenSampler(train_tok, a.seq, sp.bos_id(), a.seed + state["step"])
        probes = []

    if a.attn_sup > 0:
        sup_prev, sup_ind = induction.parse_heads(a.sup_prev), induction.parse_heads(a.sup_ind)
    sup_rec = induction.parse_heads(a.sup_rec)
    if a.ov_self > 0 and not sup_rec:
        raise SystemExit("--ov-self needs --sup-rec: the heads whose copy it asks for")
    self_rng = np.random.default_rng(a.seed + 0x5e1f + state["step"])

    def step_fn(step):
        if a.answer_loss > 0:
            xn, yn, an = sampler.batch_answers(a.batch)
        else:
            xn, yn = sampler.batch(a.batch)
        x, y = torch.from_numpy(xn), torch.from_numpy(yn)
        aux = None
        if a.attn_sup > 0:
            prev, ind = induction.text_targets(xn, yn)
            rec = induction.recall_targets(xn, yn) if sup_rec else None
            aux = induction.supervision(model, y, prev, ind, sup_prev, sup_ind, a.ov_sup > 0,
                                        rec, sup_rec)
        if a.ov_self > 0:
            aux = {**(aux or {}), **induction.self_copy(model, x, sup_rec, self_rng)}
        logits = model(x, aux=aux)
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                    reduction="none")
        loss = per_token.mean()
        if a.answer_loss > 0 and an.any():
            # the answers are a few tokens in thousands: alone they weigh next to nothing
            loss = loss + a.answer_loss * per_token[torch.from_numpy(an).reshape(-1)].mean()
        if a.ov_self > 0:
            loss = loss + a.ov_self * aux["ov_self_loss"]
        return loss + induction.supervision_loss(a, aux), y.numel()

    def eval_fn():
        nll = eval_nll(model, vx, vy)
        fig = {"valid_nll": round(nll, 4), "valid_ppl": round(math.exp(nll), 3)}
        if probes:
            fig["probes"] = mix.probe_accuracy(model, sp, probes, model.c.n_ctx)
        return fig

    fig = common.train_loop(a, model, opt, step_fn, eval_fn, ckpt, state)
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump({**fig, "params": n_params, "config": model.c.to_dict()}, f, indent=1)


if __name__ == "__main__":
    main()
