"""Held-out probes of a checkpoint under teacher forcing, at several window lengths.

For each window length, mix.heldout_probes (held-out values, persuasion as filler, depths
spread over the window) of every kind, scored by mix.probe_accuracy: per kind, the share
of probes whose whole answer is the argmax, then the share of answer tokens that are. A
stage trained on shorter windows is read at longer ones with its RoPE tables extended.
With --sums N it also reads the digits of N held-out runs of worked sums (synth.worked_sum)
and N of digit facts alone: the share of result digits that are the argmax, for the digit
facts ("4 + 9 = 13") and for the whole values after "so" ("14 + 9 = 23").

    /usr/bin/python3 train/probes.py train/runs/mem6/carry2-1024/ckpt.pt --windows 512,1024
"""
import argparse
import re

import torch

import data
import mix
import model as M
import synth

KINDS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "copy", "chat",
         "reasoning")


def sum_digits(model, sp, n, seed=1):
    """{"digit facts": share, "worked values": share} of result digits predicted right under
    teacher forcing, over n documents of digit facts and n of worked sums (about 40 sums
    each), the result digits found by their characters' offsets."""
    rng = synth.eval_rng([0x53554D53, seed])
    right = {"digit facts": [0, 0], "worked values": [0, 0]}
    for make, per in ((synth.digit_fact, 40), (synth.random_sum, 15)):
        for _ in range(n):
            text = " ".join(f"{q} {r}." for q, r in (make(rng) for _ in range(per)))
            # the characters of every result (digits right after "= "), and whether it is
            # a whole value (after ", so" in its sum) or a digit fact
            spans = [(m.start(1), m.end(1),
                      ", so " in text[text.rfind(".", 0, m.start()) + 1:m.start()])
                     for m in re.finditer(r"= (\d+)", text)]
            enc = sp.encode(text, out_type="immutable_proto").pieces
            ids = [sp.bos_id()] + [p.id for p in enc]
            with torch.no_grad():
                pred = model(torch.tensor([ids]))[0].argmax(-1).tolist()
            for t, piece in enumerate(enc, start=1):
                for b, e, whole in spans:
                    if b <= piece.begin < e:
                        key = "worked values" if whole else "digit facts"
                        right[key][0] += pred[t - 1] == ids[t]
                        right[key][1] += 1
    return {k: a / max(c, 1) for k, (a, c) in right.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--tok", default="train/runs/tok4096.model")
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--windows", default="512,1024,2048")
    ap.add_argument("--probes", default="12,8,8", help="probes a kind, for each window")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--sums", type=int, default=0,
                    help="also the digits of this many held-out documents of sums")
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
    if a.sums:
        model.set_context(1024)
        got = sum_digits(model, sp, a.sums)
        print("result digits right: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()))


if __name__ == "__main__":
    main()
