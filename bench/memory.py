#!/usr/bin/python3
"""bench/memory.py — long-memory recall against KV budget, for every policy.

Held-out probes (train/synth.py with its evaluation seed and the held-out book
persuasion.txt as filler): a pass key, a single needle, a needle among several keys
(RULER's niah forms) and a multi-turn chat whose first turns state facts asked for at the
end. Each prompt is sized to a depth in contexts of the model (1/2, 1, 2, 4, 8 x n_ctx
tokens); each runs through `gist-model generate` (the session loop the daemon runs) with
greedy decoding under every policy at budgets of 100/50/25/12.5% of ONE context's full
cache. A probe scores 1 when its answer holds every value (RULER's string_match_all).
A configuration that fails is reported as not run, with the tool's error, and is not tried
on the remaining probes of that depth; the full cache is not run past one context (the
model has never seen those positions). Under a budget the store keeps every lane within
the model's context (DESIGN.md section 3), so those run at every depth.

Writes, under --out: memory_runs.csv (one row per probe and configuration), memory.csv
(accuracy per task, depth, policy and budget), memory.md (the tables) and memory.png
(gnuplot: accuracy against budget, one panel per depth, one line per policy).

`--dev` draws the probes from the training generator instead, with a training book as
filler: the split to tune policy parameters on, so that the held-out probes stay unseen.

A policy may carry parameters after '+': `--policies auto,auto+expand=0` compares `auto`
(which re-expands compressed spans relevant to the end of the prompt before it answers) with
`auto` without re-expansion. The store's blocks hold 16 rows here (`--block-rows`; gist-model's
default is 64): at 12.5% of a context, the project's model (24 lanes of 256 rows) would hold
4 blocks of 64 rows a lane, too coarse for a policy to shape and for an expansion to find
room in; every policy runs with the same blocks, so the bytes stay equal.

Usage: bench/memory.sh [--quick] [--model M] [--probes N] [--depths 0.5,1,2,4,8] ...
"""
import argparse
import csv
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "train"))
import quality as Q  # noqa: E402  (tool, run, supported, write_csv)
import synth  # noqa: E402

TASKS = {"passkey": ("passkey", 12), "niah_single": ("niah_single", 16),
         "niah_multikey": ("niah_multikey", 16), "chat": ("chat", 24)}
GEN_ROOM = 32  # tokens left in the context for the answer
DEV_FILLER = "emma.txt"  # --dev: a training book


def n_ctx(model):
    m = re.search(r"^\s*n_ctx\s+(\d+)", Q.run(["info", model]).stdout, re.M)
    if not m:
        raise RuntimeError(f"{model}: no n_ctx in gist-model info")
    return int(m.group(1))


def n_tokens(model, text):
    # through a file: a prompt that overshoots may pass what one argument can hold
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt") as f:
        f.write(text)
        f.flush()
        return len(Q.run(["tokenize", model, "--bos", "--file", f.name]).stdout.split())


def make_probe(model, task, target, seed, filler, dev=False):
    """A held-out probe whose prompt is at most `target` tokens (and not far below); with dev,
    one of the training generator's (for tuning parameters: see --dev)."""
    kind = TASKS[task][0]
    chars = int(target * 3.3)
    for attempt in range(12):
        # from the 6th attempt, other values too (a chat's turns are not all as long)
        s = seed + 7919 * max(0, attempt - 5)
        rng = synth.train_rng(s) if dev else synth.eval_rng(s)
        p = synth.make(kind, rng, filler, max(chars - 300, 0), not dev)
        n = n_tokens(model, p.prompt)
        if n <= target and (n >= 0.85 * target or chars < 600):
            return p, n
        # a chat's length follows its filler only in part: at most double it a try
        scale = min(2.0, target / n * (0.95 if n > target else 1.0))
        chars = int(chars * scale) - (50 if n > target else 0)
    raise RuntimeError(f"{task}: no probe of at most {target} tokens (the last had {n})")


def answer_text(out, prompt):
    """The greedy continuation: what follows the prompt, up to the end of its first line
    or of the turn (chat)."""
    said = out[len(prompt):] if out.startswith(prompt) else out
    return said.split(synth.IM_END)[0].strip().split("\n")[0]


def generate(model, prompt, n_gen, policy, budget, block_rows=0):
    """policy: a name, or NAME+KEY=VALUE+... with policy parameters (auto+expand=0)."""
    name, *params = policy.split("+")
    args = ["generate", model, "--prompt", prompt, "-n", str(n_gen), "--temp", "0",
            "--threads", "1", "--policy", name]
    for kv in params:
        args += ["--param", kv]
    if block_rows:
        args += ["--kv-block-rows", str(block_rows)]
    if budget is not None:
        args += ["--kv-budget", f"{budget:g}%"]
    t0 = time.time()
    p = Q.run(args, check=False)
    dt = time.time() - t0
    if p.returncode != 0:
        lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
        return {"error": lines[-1] if lines else f"exit {p.returncode}", "seconds": dt}
    m = re.search(r"peak (\d+), budget (\d+)\), (\d+) rows for (\d+) positions", p.stderr)
    x = re.search(r"expansion: (\d+) of \d+ compressed spans, (\d+) tokens re-prefilled, "
                  r"[+-]?\d+ bytes, ([\d.]+) ms", p.stderr)
    return {"out": p.stdout.rstrip("\n"), "seconds": dt,
            "peak": m.group(1) if m else "", "budget_bytes": m.group(2) if m else "",
            "rows": m.group(3) if m else "", "positions": m.group(4) if m else "",
            "expand_spans": x.group(1) if x else "0", "expand_tokens": x.group(2) if x else "0",
            "expand_ms": x.group(3) if x else "0"}


def other_value(said, score, probe):
    """For a miss of a probe that states several values (several keys, chat facts): "1"
    when the answer names another of them (the fact was found but not the right one), "0"
    when it names none; "" for a hit or a probe of one value."""
    stated = probe.meta.get("stated")
    if score or not stated:
        return ""
    s = said.lower()
    return "1" if any(str(v).lower() in s for v in stated if v not in probe.values) else "0"


def configs(policies, budgets):
    out = [("full", None)]
    for b in budgets:
        out += [(p, b) for p in policies]
    return out


def bench(model, tasks, depths, n_probes, policies, budgets, filler, log, seed0=1,
          block_rows=0, dev=False):
    ctx = n_ctx(model)
    name = os.path.basename(model)
    runs = []
    for task in tasks:
        n_gen = TASKS[task][1]
        for depth in depths:
            target = int(depth * ctx) - GEN_ROOM
            failed = {}
            for i in range(n_probes):
                seed = seed0 * 100000 + hash_task(task) * 1000 + i
                try:
                    p, n = make_probe(model, task, target, seed, filler, dev)
                except RuntimeError as err:  # e.g. a chat's turns alone pass a short depth
                    p, n = None, ""
                    for key in configs(policies, budgets):
                        failed.setdefault(key, str(err))
                for pol, b in configs(policies, budgets):
                    key = (pol, b)
                    r = {"model": name, "task": task, "depth_ctx": f"{depth:g}",
                         "prompt_tokens": n, "probe": i,
                         "fact_depth": f"{p.depth:.2f}" if p else "",
                         "policy": pol, "budget_pct": "" if b is None else f"{b:g}"}
                    if p and pol == "full" and n + n_gen > ctx:
                        failed.setdefault(key, f"{n} prompt tokens: the full cache would pass "
                                               f"the model's context of {ctx}")
                    if key in failed:
                        runs.append({**r, "score": "", "said": "", "error":
                                     f"not run: {failed[key]}", "seconds": "0"})
                        continue
                    g = generate(model, p.prompt, n_gen, pol, b, block_rows)
                    if "error" in g:
                        failed[key] = g["error"]
                        runs.append({**r, "score": "", "said": "", "error": g["error"],
                                     "seconds": f"{g['seconds']:.2f}"})
                        continue
                    said = answer_text(g["out"], p.prompt)
                    score = synth.string_match_all(said, p.values)
                    runs.append({**r, "expected": "|".join(p.values), "said": said,
                                 "score": f"{score:g}",
                                 "other_value": other_value(said, score, p),
                                 "peak_kv_bytes": g["peak"], "budget_bytes": g["budget_bytes"],
                                 "rows": g["rows"], "expand_spans": g["expand_spans"],
                                 "expand_tokens": g["expand_tokens"],
                                 "expand_ms": g["expand_ms"], "error": "",
                                 "seconds": f"{g['seconds']:.2f}"})
            done = [x for x in runs if x["task"] == task and x["depth_ctx"] == f"{depth:g}"
                    and x["score"] != ""]
            full = [x for x in done if x["policy"] == "full"]
            right = sum(float(x["score"]) for x in full)
            misses = [x["other_value"] for x in full if x["other_value"]]
            log(f"{name} {task:14s} depth {depth:g} ctx ({target} tokens): full cache "
                + (f"{right:g}/{len(full)}" if full else "not run")
                + (f" ({misses.count('1')} of {len(misses)} misses name another stated value)"
                   if misses else "")
                + (f"; not run: {', '.join(f'{k[0]}@{k[1]}' for k in failed)}"
                   if failed else ""))
    return runs


def hash_task(task):
    return sorted(TASKS).index(task) + 1


FIELDS = ["model", "task", "depth_ctx", "prompt_tokens", "probe", "fact_depth", "policy",
          "budget_pct", "budget_bytes", "peak_kv_bytes", "rows", "expand_spans", "expand_tokens",
          "expand_ms", "expected", "said", "score", "other_value", "error", "seconds"]


def summarise(runs):
    """One row per (model, task, depth, policy, budget): probes scored, accuracy."""
    groups = {}
    for r in runs:
        k = (r["model"], r["task"], r["depth_ctx"], r["policy"], r["budget_pct"])
        groups.setdefault(k, []).append(r)
    out = []
    for (m, t, d, p, b), rs in groups.items():
        scored = [float(x["score"]) for x in rs if x["score"] != ""]
        err = next((x["error"] for x in rs if x["error"]), "")
        peaks = [int(x["peak_kv_bytes"]) for x in rs if x.get("peak_kv_bytes")]
        out.append({"model": m, "task": t, "depth_ctx": d, "policy": p, "budget_pct": b,
                    "probes": len(scored),
                    "accuracy": f"{sum(scored) / len(scored):.3f}" if scored else "",
                    "peak_kv_bytes": max(peaks) if peaks else "",
                    "error": "" if scored else err})
    return out


def markdown(summary, budgets, depths, machine, dev=False):
    probes = (f"Tuning probes, NOT held out (--dev: train/synth.py's training generator; filler "
              f"from {DEV_FILLER}). " if dev else "Held-out probes (train/synth.py's evaluation "
              "seed; filler from persuasion.txt). ")
    out = ["# Long-memory recall against KV budget\n", f"{machine}\n", probes +
           "Cells: share of probes whose greedy answer holds every value (RULER's "
           "string_match_all); budgets are the session's hard limit as a share of ONE "
           "context's full cache; depth is the prompt's length in contexts. \"not run\": "
           "the configuration failed (its error is in memory.csv).\n"]
    for model in dict.fromkeys(r["model"] for r in summary):
        for task in dict.fromkeys(r["task"] for r in summary if r["model"] == model):
            rs = [r for r in summary if r["model"] == model and r["task"] == task]
            n = max((r["probes"] for r in rs), default=0)
            out.append(f"## {model}: {task} ({n} probes per cell)\n")
            ds = [f"{d:g}" for d in depths]
            out.append("| policy | budget | " + " | ".join(f"depth {d}" for d in ds) + " |")
            out.append("|---|---|" + "---|" * len(ds))
            for pol, b in dict.fromkeys((r["policy"], r["budget_pct"]) for r in rs):
                cells = []
                for d in ds:
                    x = [r for r in rs if r["policy"] == pol and r["budget_pct"] == b
                         and r["depth_ctx"] == d]
                    cells.append(x[0]["accuracy"] or "not run" if x else "")
                out.append(f"| {pol} | {b + '%' if b else 'none'} | " + " | ".join(cells)
                           + " |")
            out.append("")
    return "\n".join(out)


def quantile(xs, q):
    """The q-quantile of xs by the nearest rank (q = 0.5: the median)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def expansion_cost(runs):
    """Markdown: what re-expansion cost per answered probe, for each configuration that
    expanded anything: tokens re-prefilled and milliseconds, median and p99."""
    groups = {}
    for r in runs:
        if r.get("score", "") != "" and r.get("expand_ms") not in (None, "", "0"):
            groups.setdefault((r["policy"], r["budget_pct"]), []).append(r)
    if not groups:
        return ""
    out = ["## What re-expansion cost\n",
           "Per probe (its prompt is one turn): spans and tokens re-prefilled, and the time the "
           "choice and the prefill took, median and p99 over the probes of every task and depth.\n",
           "| policy | budget | probes | spans, median | tokens, median / p99 | ms, median / p99 |",
           "|---|---|---|---|---|---|"]
    for (pol, b), rs in groups.items():
        sp = [int(x["expand_spans"]) for x in rs]
        tk = [int(x["expand_tokens"]) for x in rs]
        ms = [float(x["expand_ms"]) for x in rs]
        out.append(f"| {pol} | {b}% | {len(rs)} | {quantile(sp, 0.5)} | "
                   f"{quantile(tk, 0.5)} / {quantile(tk, 0.99)} | "
                   f"{quantile(ms, 0.5):.1f} / {quantile(ms, 0.99):.1f} |")
    return "\n".join(out) + "\n"


def plot(summary, depths, path):
    if not shutil.which("gnuplot"):
        return "gnuplot not found: no plot"
    rs = [r for r in summary if r["accuracy"] and r["budget_pct"]]
    shown = [d for d in (f"{x:g}" for x in depths) if any(r["depth_ctx"] == d for r in rs)]
    if not shown:
        return "nothing to plot"
    pols = list(dict.fromkeys(r["policy"] for r in rs))
    dat = os.path.join(os.path.dirname(path), "memory.dat")
    with open(dat, "w") as f:
        for d in shown:
            for pol in pols:
                f.write(f"# depth {d} {pol}\n")
                pts = {}
                for r in rs:
                    if r["depth_ctx"] == d and r["policy"] == pol:
                        pts.setdefault(float(r["budget_pct"]), []).append(float(r["accuracy"]))
                for b in sorted(pts):
                    f.write(f"{b:g} {sum(pts[b]) / len(pts[b]):.4f}\n")
                f.write("\n\n")
    script = ["set terminal pngcairo size 900,%d font 'sans,10'" % (360 * len(shown)),
              f"set output '{path}'", f"set multiplot layout {len(shown)},1",
              "set logscale x 2", "set xlabel 'KV budget (% of one context''s full cache)'",
              "set ylabel 'recall (mean over tasks)'", "set yrange [-0.05:1.05]",
              "set xrange [10:120]", "set key outside right", "set grid"]
    for di, d in enumerate(shown):
        script.append(f"set title 'depth {d} contexts'")
        parts = [f"'{dat}' index {di * len(pols) + i} with linespoints title '{p}'"
                 for i, p in enumerate(pols)]
        script.append("plot " + ", ".join(parts))
    script.append("unset multiplot")
    gp = os.path.join(os.path.dirname(path), "memory.gp")
    with open(gp, "w") as f:
        f.write("\n".join(script) + "\n")
    p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    return p.stderr.strip() or f"plot: {path}"


def write_tables(out, runs, budgets, depths, machine, dev=False, log=print):
    """memory_runs.csv, memory.csv, memory.md and memory.png under out; returns the
    markdown."""
    summary = summarise(runs)
    with open(os.path.join(out, "memory_runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    Q.write_csv(os.path.join(out, "memory.csv"), summary)
    md = markdown(summary, budgets, depths, machine, dev) + "\n" + expansion_cost(runs)
    with open(os.path.join(out, "memory.md"), "w") as f:
        f.write(md + "\n")
    log(plot(summary, depths, os.path.join(out, "memory.png")))
    return md


def merge(a):
    """The runs of several directories in the order one run writes them: by task, the full
    cache first, then each of --budgets with its policies in the order they first appear (so
    that a policy run again apart keeps its place beside the others). The machine line is the
    first directory's."""
    runs, machine = [], ""
    for d in a.merge.split(","):
        with open(os.path.join(d, "memory_runs.csv"), newline="") as f:
            runs += list(csv.DictReader(f))
        with open(os.path.join(d, "memory.md")) as f:
            machine = machine or next((x for x in f if x.startswith("Machine:")), "").strip()
    budgets = [float(x) for x in a.budgets.split(",")]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    pols = list(dict.fromkeys(r["policy"] for r in runs))
    order = [f"{b:g}" for b in budgets]

    def place(r):
        b = r["budget_pct"]
        return (tasks.index(r["task"]), b != "", order.index(b) if b in order else len(order),
                pols.index(r["policy"]))

    os.makedirs(a.out, exist_ok=True)
    print(write_tables(a.out, sorted(runs, key=place), budgets,
                       [float(x) for x in a.depths.split(",")], machine, a.dev))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "memory"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "gistd-6m.gguf"))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--depths", default="0.5,1,2,4,8", help="prompt lengths in contexts")
    ap.add_argument("--budgets", default="100,50,25,12.5")
    ap.add_argument("--policies", default=",".join(Q.ALL_POLICIES))
    ap.add_argument("--probes", type=int, default=5, help="probes per task and depth")
    ap.add_argument("--block-rows", type=int, default=16,
                    help="rows per KV block (gist-model --kv-block-rows; 0: its default, 64)")
    ap.add_argument("--dev", action="store_true",
                    help="probes of the training generator with a training book as filler, "
                         "to tune policy parameters on (never report these)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: depth 1/2, one probe a task, full and window at 25%%")
    ap.add_argument("--merge", help="DIR,DIR,...: no runs; the tables of earlier runs' "
                    "memory_runs.csv (say, one process a core, split by --tasks) written "
                    "together under --out, for the --depths and --budgets given")
    a = ap.parse_args()
    if a.merge:
        return merge(a)
    if not os.path.exists(Q.tool()):
        sys.exit(f"{Q.tool()} not built: run make")
    book = os.path.join(Q.SHARED, "corpus", DEV_FILLER if a.dev else "persuasion.txt")
    if not os.path.exists(book):
        sys.exit(f"{book} (the filler) not found")
    with open(book, encoding="utf-8") as f:
        filler = synth.Filler([f.read()])
    if a.quick:
        a.depths, a.budgets, a.policies, a.probes = "0.5", "25", "window", 1
    depths = [float(x) for x in a.depths.split(",")]
    budgets = [float(x) for x in a.budgets.split(",")]
    pols, _gist, _gates = Q.supported(a.model)
    # a policy may carry parameters: auto+expand=0 (re-expansion off)
    pols = [p for p in a.policies.split(",") if p.split("+")[0] in pols]
    os.makedirs(a.out, exist_ok=True)
    machine = (f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
               f"one thread; KV blocks of {a.block_rows or 64} rows; "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    def log(s):
        print(s, flush=True)

    log(machine)
    runs = bench(a.model, a.tasks.split(","), depths, a.probes, pols, budgets, filler, log,
                 block_rows=a.block_rows, dev=a.dev)
    md = write_tables(a.out, runs, budgets, depths, machine, a.dev, log)
    print()
    print(md)


if __name__ == "__main__":
    main()
