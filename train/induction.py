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
    """([BOS] + a random span repeated, then book tokens (or, with book None, more repeats)
    to fill seq + 1 ids; the span's length; where the repeats end)."""
    n = int(rng.integers(a.span_min, a.span_max + 1))
    span = rng.integers(4, n_vocab, n)  # past the control ids
    reps = a.repeats if book is not None else max(a.repeats, -(-seq // n))
    w = np.concatenate([[bos]] + [span] * reps)[:seq + 1]
    end = len(w)
    return (w if book is None else np.concatenate([w, book[1:seq + 2 - len(w)]])), n, end


def attention_targets(seq, copies):
    """Where a previous-token head and an induction head should look, [B, seq] each (-1:
    nowhere): every query at its previous position; a query inside a repeat, whose token
    stood n positions back, at the position after that earlier occurrence (t - n + 1), the
    one that holds the token to copy. copies: (n, end) per row, or None for a book row."""
    t = np.arange(seq)
    prev = np.where(t >= 1, t - 1, -1)
    ind = np.full((len(copies), seq), -1)
    for r, c in enumerate(copies):
        if c is not None:
            n, end = c
            live = (t >= 1 + n) & (t < end - 1)
            ind[r] = np.where(live, t - n + 1, -1)
    return (torch.from_numpy(np.broadcast_to(prev, (len(copies), seq)).copy()),
            torch.from_numpy(ind))


def text_targets(x, y):
    """attention_targets for any text, [B, T] each from ids x and next ids y [B, T]: the
    previous position; and for a query whose bigram (x[t-1], x[t]) was written before, at
    the position after its latest earlier occurrence, when that position holds y[t] (a
    repeat that copying gets right: a name, a number, a phrase written again)."""
    B, T = x.shape
    t = np.arange(T)
    prev = np.broadcast_to(np.where(t >= 1, t - 1, -1), (B, T)).copy()
    ind = np.full((B, T), -1)
    for r in range(B):
        after = {}  # bigram -> the position after its latest occurrence
        row, nxt = x[r].tolist(), y[r].tolist()
        for i in range(1, T):
            key = (row[i - 1], row[i])
            j = after.get(key)
            if j is not None and row[j] == nxt[i]:
                ind[r, i] = j
            after[key] = i + 1
    return torch.from_numpy(prev), torch.from_numpy(ind)


def recall_targets(x, y, span=3):
    """Where a recall head should look, [B, T] from ids x and next ids y [B, T] (-1:
    nowhere): for a query whose next span ids (y[t .. t+span)) were written once before, and
    only once, entirely at or before t, the position where that earlier occurrence starts
    (the first id to copy). Unlike text_targets this does not ask that the current bigram
    match: the answer of a needle ("... mentioned in the provided text is" -> " 5447241")
    follows words other than the ones its statement did ("... is: 5447241"), so its first id
    must be found through the key, and the copying heads only carry on from there."""
    B, T = x.shape
    rec = np.full((B, T), -1)
    for r in range(B):
        row, nxt = x[r].tolist(), y[r].tolist()
        starts = {}  # span of ids -> its start positions, once entirely written
        for t in range(T):
            j = t - span + 1  # the span starting at j ends at t: written by now
            if j >= 0:
                starts.setdefault(tuple(row[j:t + 1]), []).append(j)
            if t + span <= T:
                seen = starts.get(tuple(nxt[t:t + span]))
                if seen is not None and len(seen) == 1:
                    rec[r, t] = seen[0]
    return torch.from_numpy(rec)


def parse_heads(spec):
    """[(layer, head), ...] from "0:0,1:2"; [] from ""."""
    return [tuple(int(v) for v in lh.split(":")) for lh in spec.split(",") if lh]


def supervision(model, y, prev, ind, sup_prev, sup_ind, ov, rec=None, sup_rec=()):
    """The aux dict of model.forward that asks the sup_prev heads for the prev targets, the
    sup_ind heads for the ind targets and the sup_rec heads for the rec targets, and with ov
    the summed output of the sup_ind heads, and of the sup_rec heads, for the ids to copy."""
    targets = [[] for _ in range(model.c.n_layer)]
    groups = [(sup_prev, prev, False), (sup_ind, ind, True)]
    if rec is not None:
        groups.append((sup_rec, rec, True))
    heads = [[] for _ in range(model.c.n_layer)]
    for sup, tgt, copies in groups:
        copy_heads = {}
        for layer, head in sup:
            targets[layer].append((head, tgt))
            copy_heads.setdefault(layer, []).append(head)
        if copies and ov:
            for layer, hs in copy_heads.items():
                heads[layer].append((hs, torch.where(tgt >= 0, y, torch.full_like(y, -1))))
    aux = {"attn_target": targets}
    if ov:
        aux.update(ov_heads=heads, head_dim=model.c.head_dim,
                   unembed=model.output.weight.detach())
    return aux


def self_copy(model, x, heads, rng):
    """The entries of model.forward's aux dict that model.supervise_self_copy reads: the heads
    [(layer, head), ...] and, for every token id the batch x [B, T] holds past each window's
    first position, one of its positions drawn at random, so rare words weigh as much as
    common ones."""
    flat = x.reshape(-1)
    T = x.shape[1]
    order = torch.from_numpy(rng.permutation(flat.numel()))
    order = order[order % T != 0]  # BOS and a window's first token: no value to copy
    # a stable sort keeps the shuffled order among equal ids: each id's first is random
    srt, idx = torch.sort(flat[order], stable=True)
    lead = torch.ones_like(srt, dtype=torch.bool)
    lead[1:] = srt[1:] != srt[:-1]
    at = order[idx[lead]]
    by_layer = [[] for _ in range(model.c.n_layer)]
    for layer, head in heads:
        by_layer[layer].append(head)
    # the unembedding learns from this loss too: frozen, it kept semantically close words
    # close in any 32 dimensions a head writes ("window" read back as "river"), and the
    # loss stalled near 2 where with it trained it falls to 0.02 (train/README.md, "A
    # recall head's copy, for every word")
    return {"ov_self": by_layer, "ov_self_at": at, "ov_self_tok": flat[at],
            "ov_self_unembed": model.output.weight}


def add_supervision_args(ap):
    """The arguments of the copying circuit's supervision (induction.py, train_base.py)."""
    ap.add_argument("--attn-sup", type=float, default=0.0,
                    help="weight of a loss that shows the --sup-prev heads the previous token "
                         "and the --sup-ind heads the position after the earlier occurrence of "
                         "the current token (0: off): the induction circuit, taught instead of "
                         "waited for")
    ap.add_argument("--ov-sup", type=float, default=0.0,
                    help="with --attn-sup, weight of a loss that asks the --sup-ind heads' own "
                         "output, read through the unembedding, for the token to copy")
    ap.add_argument("--sup-prev", default="0:0", help="LAYER:HEAD,... previous-token heads")
    ap.add_argument("--sup-ind", default="1:0", help="LAYER:HEAD,... induction heads")
    ap.add_argument("--sup-rec", default="",
                    help="LAYER:HEAD,... recall heads, shown where the text about to come was "
                         "written before (recall_targets: a needle's value after its question); "
                         "empty: none")


def supervision_loss(a, aux):
    """The supervision's weighted terms that the forward pass collected in aux (0.0 when
    there is none)."""
    if aux is None:
        return 0.0
    return a.attn_sup * aux.get("attn_loss", 0.0) + a.ov_sup * aux.get("ov_loss", 0.0)


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
    g.add_argument("--init", help="start from this checkpoint (.pt) or model file (.gguf): "
                   "its base weights and gist rows, its gates dropped (export.load_start)")
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
    add_supervision_args(ap)
    ap.add_argument("--ov-lr", type=float, default=0.0,
                    help="learning rate of the value and output projections of the layers of "
                         "the --sup-ind heads (0: --lr)")
    ap.add_argument("--sup-steps", type=int, default=0,
                    help="supervise the first this many steps only (0: all)")
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
        import export
        model = export.load_start(a.init)
        model.set_context(max(model.c.n_ctx, a.seq))
    else:
        ff = int(np.ceil(a.dim * 8 / 3 / 16) * 16)
        if a.vocab and a.copy_frac < 1:
            raise SystemExit("--vocab needs --copy-frac 1 (book windows use the tokenizer's ids)")
        model = M.Llama(M.Config(n_vocab=a.vocab or sp.GetPieceSize(), n_embd=a.dim, n_layer=a.layers,
                                 n_head=a.dim // 32, n_head_kv=max(1, a.dim // 64), n_ff=ff,
                                 n_ctx=a.seq))
    V = model.c.n_vocab
    sup_prev, sup_ind = parse_heads(a.sup_prev), parse_heads(a.sup_ind)
    opt = common.make_optimizer(model.parameters(), a.lr)
    if a.ov_lr > 0:  # the copying heads' value and output projections in a faster group
        fast = {id(p) for layer in {lh[0] for lh in sup_ind}
                for p in (model.blocks[layer].attn_v.weight, model.blocks[layer].attn_output.weight)}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in fast]}
                  for g in opt.param_groups]
        groups.append({**opt.param_groups[0], "params": [p for p in model.parameters()
                                                          if id(p) in fast]})
        for g in groups:
            g["base_lr"] = a.lr
        groups[-1]["base_lr"] = a.ov_lr
        opt = type(opt)(groups)
    t0 = time.time()
    print(f"# step 0 copy accuracy {copy_accuracy(model, rng, V, sp.bos_id()):.3f}", flush=True)
    for step in range(1, a.steps + 1):
        bx, by = sampler.batch(a.batch)
        rows, copies = [], []
        for r in range(a.batch):
            book = np.concatenate([bx[r], by[r, -1:]])
            if rng.random() < a.copy_frac:
                w, n, end = copy_window(rng, V, a.seq, sp.bos_id(), a, None if a.vocab else book)
                rows.append(w)
                copies.append((n, end))
            else:
                rows.append(book)
                copies.append(None)
        w = np.stack(rows)
        x, y = torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, 1:])
        for grp in opt.param_groups:
            grp["lr"] = grp.get("base_lr", a.lr) * min(1.0, step / a.warmup)
        aux = None
        if a.attn_sup > 0 and (a.sup_steps == 0 or step <= a.sup_steps):
            prev, ind = attention_targets(a.seq, copies)
            aux = supervision(model, y, prev, ind, sup_prev, sup_ind, a.ov_sup > 0)
        logits = model(x, aux=aux)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        attn_loss = aux.get("attn_loss") if aux is not None else None
        ov_loss = aux.get("ov_loss") if aux is not None else None
        total = loss + supervision_loss(a, aux)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.every == 0:
            acc = copy_accuracy(model, rng, V, sp.bos_id())
            sup = "" if attn_loss is None else f" attention loss {float(attn_loss):.3f}"
            sup += "" if ov_loss is None else f" copy-head loss {float(ov_loss):.3f}"
            print(f"step {step} loss {float(loss):.3f}{sup} copy accuracy {acc:.3f} "
                  f"{time.time() - t0:.0f} s", flush=True)
            if a.out:  # each report, so a run stopped early keeps what it learned
                M.save_checkpoint(a.out, model, step=step, copy_accuracy=acc)


if __name__ == "__main__":
    main()
