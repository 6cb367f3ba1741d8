#!/usr/bin/python3
"""bench/train_speed.py — training tokens/s of candidate model shapes (PyTorch, train/model.py).

One forward + backward of a [1, SEQ] window per candidate, the candidates alternated in
each round so that a machine others load slows them alike; prints the median of the
rounds and each candidate's ratio to the first. Debian's python3 with python3-torch.

    bench/train_speed.py [--seq 2048] [--threads 1] [--rounds 3] [--shapes 256x6,320x8,192x6]

A shape DIMxLAYERS has head_dim 32, half as many kv heads as heads, n_ff ~ 8/3 dim.
"""
import argparse
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "train"))
import torch  # noqa: E402

import model as M  # noqa: E402


def config(shape, seq, n_vocab):
    dim, layers = (int(x) for x in shape.split("x"))
    heads = dim // 32
    return M.Config(n_vocab=n_vocab, n_embd=dim, n_layer=layers, n_head=heads,
                    n_head_kv=max(1, heads // 2), n_ff=int(math.ceil(dim * 8 / 3 / 16) * 16),
                    n_ctx=seq)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", default="256x6,320x8,192x6")
    ap.add_argument("--vocab", type=int, default=4098)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    models = {s: M.Llama(config(s, a.seq, a.vocab)) for s in a.shapes.split(",")}
    x = torch.randint(0, a.vocab, (1, a.seq))
    rates = {s: [] for s in models}
    for _ in range(a.rounds):
        for s, m in models.items():
            t = time.time()
            m(x).logsumexp(-1).mean().backward()
            rates[s].append(x.numel() / (time.time() - t))
    print(f"Machine: {platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}, {a.threads} thread(s); seq {a.seq}, "
          f"median of {a.rounds} alternated rounds")
    first = statistics.median(rates[next(iter(rates))])
    for s, m in models.items():
        med = statistics.median(rates[s])
        n = sum(p.numel() for p in m.parameters())
        print(f"  {s:8s} {n / 1e6:5.2f}M params  {med:8.1f} tok/s  x{med / first:.2f}  "
              f"(rounds {', '.join(f'{r:.0f}' for r in rates[s])})")


if __name__ == "__main__":
    main()
