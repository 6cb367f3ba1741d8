"""Whether a model learns to copy from its context: spans of random token ids repeated.

Copying (induction heads: a head that finds the earlier occurrence of the current token and
one that reads what followed it) is what every retrieval probe needs. This trains a model,
from a checkpoint (--init) or fresh (--scratch, the pipeline's shape or a smaller one), on
windows whose share --copy-frac is a span of --span-min to --span-max random ids written
--repeats times over (the rest: book windows), and every --every steps prints the share of
repeated ids the model predicts (argmax) on fresh spans of 64 written twice. Nothing but the
first copy predicts the repeats, so that share stays near 0 until the model copies and goes
near 1 once it does; a step count is what this measures.

    /usr/bin/python3 train/induction.py --tok train/runs/tok4096.model --scratch --steps 300
    /usr/bin/python3 train/induction.py --tok train/runs/tok4096.model \\
        --init train/runs/mem/base/ckpt.pt --lr 5e-4 --out /tmp/copy.pt
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import common
import data
import model as M


def copy_window(rng, n_vocab, seq, bos, a, book):
    """[BOS] + a random span repeated, then book tokens (or, with book None, more repeats) to
    fill seq + 1 ids."""
    n = int(rng.integers(a.span_min, a.span_max + 1))
    span = rng.integers(4, n_vocab, n)  # past the control ids
    reps = a.repeats if book is not None else max(a.repeats, -(-seq // n))
    w = np.concatenate([[bos]] + [span] * reps)[:seq + 1]
    return w if book is None else np.concatenate([w, book[1:seq + 2 - len(w)]])


def copy_accuracy(model, rng, n_vocab, bos, n=64, rows=8):
    span = torch.from_numpy(rng.integers(4, n_vocab, (rows, n)))
    x = torch.cat([torch.full((rows, 1), bos), span, span], 1)
    model.eval()
    with torch.no_grad():
        pred = model(x[:, :-1]).argmax(-1)
    model.train()
    return float((pred[:, n + 1:] == x[:, n + 2:]).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--tok", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--init", help="start from this checkpoint")
    g.add_argument("--scratch", action="store_true", help="a fresh model of --dim, --layers")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=0,
                    help="with --scratch: a model of this many ids, spans drawn from them "
                         "(book windows then use only --copy-frac 1); default the tokenizer's")
    ap.add_argument("--out", default=None, help="save the model here at every report")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--copy-frac", type=float, default=0.75)
    ap.add_argument("--span-min", type=int, default=16)
    ap.add_argument("--span-max", type=int, default=127)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    sp = data.load_sp(a.tok)
    books, _valid = data.split_books(a.corpus)
    sampler = data.TokenSampler([data.book_tokens(a.tok, p) for p in books], a.seq,
                                sp.bos_id(), a.seed)
    if a.init:
        model, _d = M.load_checkpoint(a.init)
        model.c.n_ctx = max(model.c.n_ctx, a.seq)
        model.cos, model.sin = M.rope_tables(model.c.n_ctx, model.c.head_dim,
                                             model.c.rope_base)
    else:
        ff = int(np.ceil(a.dim * 8 / 3 / 16) * 16)
        if a.vocab and a.copy_frac < 1:
            raise SystemExit("--vocab needs --copy-frac 1 (book windows use the tokenizer's ids)")
        model = M.Llama(M.Config(n_vocab=a.vocab or sp.GetPieceSize(), n_embd=a.dim, n_layer=a.layers,
                                 n_head=a.dim // 32, n_head_kv=max(1, a.dim // 64), n_ff=ff,
                                 n_ctx=a.seq))
    V = model.c.n_vocab
    opt = common.make_optimizer(model.parameters(), a.lr)
    t0 = time.time()
    print(f"# step 0 copy accuracy {copy_accuracy(model, rng, V, sp.bos_id()):.3f}", flush=True)
    for step in range(1, a.steps + 1):
        bx, by = sampler.batch(a.batch)
        w = np.stack([copy_window(rng, V, a.seq, sp.bos_id(), a,
                                  None if a.vocab else np.concatenate([bx[r], by[r, -1:]]))
                      if rng.random() < a.copy_frac else np.concatenate([bx[r], by[r, -1:]])
                      for r in range(a.batch)])
        x, y = torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, 1:])
        for grp in opt.param_groups:
            grp["lr"] = a.lr * min(1.0, step / a.warmup)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.every == 0:
            acc = copy_accuracy(model, rng, V, sp.bos_id())
            print(f"step {step} loss {float(loss):.3f} copy accuracy {acc:.3f} "
                  f"{time.time() - t0:.0f} s", flush=True)
            if a.out:  # each report, so a run stopped early keeps what it learned
                M.save_checkpoint(a.out, model, step=step, copy_accuracy=acc)


if __name__ == "__main__":
    main()
