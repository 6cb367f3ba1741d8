"""Stage 3: TRIM-KV retention gates (Bui et al. 2025) on a frozen model.

Each layer gets a small gate MLP from its normalised attention input x to one log beta
per kv head: log beta = logsigmoid(W_out silu(W_in x + b_in) + b_out), b_out starting
high (beta ~ 1, nothing forgotten). While training, the attention logits of key i at
query t get + (t - i) log beta_i, i.e. the key's probability is scaled by beta_i^(t-i).
Loss = KL(frozen model || gated model) + next-token loss
       + lambda * mean(max(0, sum_i beta_i^(t-i) - budget)),
the last term over every (row, layer, kv head, query t): the expected number of rows
kept may not pass the budget. Only the gates learn. Windows are plain text (no gists).

    nice -n 10 /usr/bin/python3 train/train_gates.py --tok train/runs/tok4096.model \
        --model train/runs/gist/ckpt.pt --out train/runs/gates --minutes 10
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402
import model as M  # noqa: E402


def gate_losses(model, x, y, budget, lam):
    """(total loss, dict of parts) for one batch x, y [B, T]."""
    B, T = x.shape
    with torch.no_grad():
        teacher = F.log_softmax(model(x).float(), dim=-1)  # (float: under --bf16 too)
    aux = {"apply_gates": True}
    logits = model(x, aux=aux)
    logp = F.log_softmax(logits.float(), dim=-1)
    kl = F.kl_div(logp, teacher, log_target=True, reduction="batchmean") / T
    nll = F.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1))
    causal = torch.ones(T, T).tril()
    caps = []
    for decay in aux["decay"]:                       # [B, KV, T, T]
        kept = (decay.exp() * causal).sum(-1)        # expected rows kept at each query
        caps.append(F.relu(kept - budget).mean())
    cap = torch.stack(caps).mean()
    total = kl + nll + lam * cap
    return total, {"kl": float(kl), "nll": float(nll), "cap": float(cap)}


@torch.no_grad()
def evaluate(model, xs, ys, budget, batch=2):
    """Validation NLL without and with the gates' decay, the KL between them, and the mean
    expected rows kept per (layer, kv head) at the last query."""
    model.eval()
    n_plain = n_gated = kl = kept = 0.0
    n = 0
    for i in range(0, len(xs), batch):
        x = torch.from_numpy(xs[i : i + batch])
        y = torch.from_numpy(ys[i : i + batch])
        lp = F.log_softmax(model(x), -1)
        aux = {"apply_gates": True}
        lg = F.log_softmax(model(x, aux=aux), -1)
        n_plain += float(F.nll_loss(lp.reshape(-1, lp.shape[-1]), y.reshape(-1), reduction="sum"))
        n_gated += float(F.nll_loss(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), reduction="sum"))
        kl += float((lp.exp() * (lp - lg)).sum())
        T = x.shape[1]
        kept += sum(float(d[..., -1, :].exp().sum(-1).mean()) for d in aux["decay"]) \
            / len(aux["decay"]) * x.shape[0]
        n += y.numel()
    model.train()
    return {"plain_ppl": round(math.exp(n_plain / n), 3),
            "gated_ppl": round(math.exp(n_gated / n), 3),
            "kl_per_token": round(kl / n, 5),
            "kept_rows_last_query": round(kept / len(xs), 1), "window": T, "budget": budget}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--model", required=True, help="checkpoint to gate (base or gist)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-bytes", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=32, help="gate MLP width")
    ap.add_argument("--budget", type=int, default=128, help="rows per (layer, kv head)")
    ap.add_argument("--lam", type=float, default=0.01, help="capacity hinge weight")
    ap.add_argument("--init-bias", type=float, default=6.0, help="b_out at start")
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--mix", type=float, default=0.0,
                    help="share of windows packed with generated documents (mix.py)")
    common.add_budget_args(ap, minutes=10, lr=1e-2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    ckpt = os.path.join(a.out, "ckpt.pt")
    sp = data.load_sp(a.tok)
    books, valid = data.split_books(a.corpus)
    train_tok = [data.book_tokens(a.tok, p, a.max_bytes) for p in books]
    valid_tok = data.book_tokens(a.tok, valid, a.max_bytes)
    vx, vy = data.eval_windows(valid_tok, a.seq, sp.bos_id(), a.eval_windows)

    if os.path.exists(ckpt):
        model, d = M.load_checkpoint(ckpt)
    else:
        model, d = M.load_checkpoint(a.model)
        model.add_gates(a.hidden, a.init_bias)
        d = {"step": 0, "elapsed": 0.0, "tokens": 0, "gist": d.get("gist")}
    for p in model.parameters():
        p.requires_grad_(False)
    gate_params = [p for b in model.blocks for p in b.retention.parameters()]
    for p in gate_params:
        p.requires_grad_(True)
    opt = common.make_optimizer(gate_params, a.lr, weight_decay=0.0)
    if "opt" in d:
        opt.load_state_dict(d["opt"])
    if a.mix > 0:
        import mix
        sampler = mix.MixSampler(sp, train_tok, [data.read_text(p, a.max_bytes) for p in books],
                                 a.seq, a.seed + d["step"], a.mix)
    else:
        sampler = data.TokenSampler(train_tok, a.seq, sp.bos_id(), a.seed + d["step"])

    def step_fn(step):
        x, y = sampler.batch(a.batch)
        loss, parts = gate_losses(model, torch.from_numpy(x), torch.from_numpy(y),
                                  a.budget, a.lam)
        if step % a.log_every == 0:
            print("  parts", {k: round(v, 4) for k, v in parts.items()}, flush=True)
        return loss, x.size

    st = {k: d[k] for k in ("step", "elapsed", "tokens")}
    fig = common.train_loop(a, model, opt, step_fn, lambda: evaluate(model, vx, vy, a.budget),
                            ckpt, st, {"gist": d.get("gist"), "retention_budget": a.budget})
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(fig, f, indent=1)


if __name__ == "__main__":
    main()
