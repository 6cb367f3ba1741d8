"""Held-out probes of a checkpoint under teacher forcing, at several window lengths.

For each window length, mix.heldout_probes (held-out values, persuasion as filler, depths
spread over the window) of every kind, scored by mix.probe_accuracy: per kind, the share
of probes whose whole answer is the argmax, then the share of answer tokens that are. A
stage trained on shorter windows is read at longer ones with its RoPE tables extended.

    /usr/bin/python3 train/probes.py train/runs/mem6/carry2-1024/ckpt.pt --windows 512,1024
"""
import argparse

import torch

import data
import mix
import model as M

KINDS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "copy", "chat",
         "reasoning")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--tok", default="train/runs/tok4096.model")
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--windows", default="512,1024,2048")
    ap.add_argument("--probes", default="12,8,8", help="probes a kind, for each window")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sp = data.load_sp(a.tok)
    _books, valid = data.split_books(a.corpus)
    text = data.read_text(valid)
    model, _d = M.load_checkpoint(a.ckpt)
    model.eval()
    kinds = a.kinds.split(",")
    counts = [int(n) for n in a.probes.split(",")]
    print("| windows | " + " | ".join(kinds) + " |")
    print("|---" * (len(kinds) + 1) + "|")
    for i, seq in enumerate(int(w) for w in a.windows.split(",")):
        model.set_context(seq)
        probes = mix.heldout_probes(counts[min(i, len(counts) - 1)], text, seq, kinds=kinds)
        with torch.no_grad():
            acc = mix.probe_accuracy(model, sp, probes, seq, per_token=True)
        cells = [f"{acc[k][0]:.2f} / {acc[k][1]:.2f}" if k in acc else "-" for k in kinds]
        print(f"| {seq} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
