#!/usr/bin/python3
"""bench/reasoning.py — reasoning accuracy when each finished thought is compressed.

Held-out problems (train/synth.py's reasoning kind with its evaluation seed: chains of
assignments and word problems of 2 to 8 steps) are posed without their worked thoughts; the
model writes the thoughts itself, one per paragraph (a paragraph break is gistd's thought
boundary), then "Answer: N". A problem scores 1 when the first number after "Answer:" in the
greedy continuation is the solver's answer.

Every problem runs through the session loop the daemon runs (`gist-model generate`): first
with the full cache, which gives the bytes the full trace needs (the question and the
thoughts up to the answer line), then under every policy at 50/25/12.5% of them. The
question is pinned (the policies' sinks) and each policy compresses finished thoughts only
(unit=thought: a finished thought pools into a few gist rows, eviction spares the thought
being written while finished ones have rows to give), so the budget is the question's bytes
plus that share of the bytes the thoughts took under the full cache. The soft watermark is
the budget itself (--watermark budget): a pipeline decodes a token a step, and a reservation
that needs a block compacts first, so the budget holds rows to its last block. The tools'
default watermark (--watermark default) sits a prefill step's blocks below it, a block in
every lane: 54 KB on the bundled model, a third of the room a 4-step problem's thoughts get
at 25%. With --gistd the same problems run through a real gistd too, a thought a request
(gistc's Session.think, which stops at the end of the answer line; `gist-model generate`
writes all its tokens): "compact" sends Compact{last_thought} after each thought, "auto"
leaves it to the thought boundaries under the budget.

Writes, under --out: reasoning_runs.csv (one row per problem and configuration),
reasoning.csv (accuracy, peak bytes and tokens/s per steps, policy, budget and path) and
reasoning.md (the tables), and prints the tables.

Usage: bench/reasoning.py [--quick] [--model M] [--steps 2,4,8] [--probes N] [--gistd] ...
"""
import argparse
import csv
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "train"))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import quality as Q  # noqa: E402  (tool, run, supported, write_csv)
import synth  # noqa: E402

BLOCK_ROWS = 8  # rows per KV block: a 2-step trace is ~60 tokens, 12.5% of it is 8 rows
POLICIES = ["gist", "pool", "h2o", "tova", "window", "trim"]
ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def problem(steps, i):
    """Held-out problem i of `steps` steps: (question prompt, the solver's answer, the worked
    trace the model was trained to write)."""
    p = synth.reasoning(synth.eval_rng(steps * 100003 + i), None, 0, True, steps=steps)
    q = synth.reasoning_question(p)
    return q, p.values[0], p.prompt[len(q):] + p.answer


def answer_of(said):
    """The first number after "Answer:" in the generated text, or None."""
    m = ANSWER.search(said)
    return m.group(1) if m else None


def answer_end(said):
    """Characters of said up to the end of its answer line (None without an answer)."""
    m = ANSWER.search(said)
    if not m:
        return None
    nl = said.find("\n", m.end())
    return len(said) if nl < 0 else nl + 1


def gen(model, prompt, n_gen, policy="full", budget=None, params=(), soft=None):
    """One greedy `gist-model generate` run: the text it wrote and the figures it printed.
    budget: the session's hard limit (bytes); soft: its watermark (None: gist-model's)."""
    args = ["generate", model, "--prompt", prompt, "-n", str(n_gen), "--temp", "0",
            "--threads", "1", "--kv-block-rows", str(BLOCK_ROWS), "--policy", policy]
    for p in params:
        args += ["--param", p]
    if budget is not None:
        args += ["--kv-budget", str(int(budget))]
    if soft is not None:
        args += ["--kv-soft", str(int(soft))]
    # a small model may write bytes that are not UTF-8 (byte tokens): replaced, not fatal
    p = subprocess.run([Q.tool(), *args], capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
        return {"error": lines[-1] if lines else f"exit {p.returncode}"}
    kv = re.search(r"\(peak (\d+), budget (\d+)\), (\d+) rows for (\d+) positions", p.stderr)
    tps = re.search(r"generated: (\d+) tokens, ([\d.]+) tokens/s", p.stderr)
    comp = re.search(r"compactions: (.*)$", p.stderr, re.M)
    n_comp = sum(int(x) for x in re.findall(r"=(\d+)", comp.group(1))) if comp else 0
    out = p.stdout[:-1] if p.stdout.endswith("\n") else p.stdout
    return {"said": out[len(prompt):] if out.startswith(prompt) else out,
            "peak": int(kv.group(1)), "budget": int(kv.group(2)),
            "positions": int(kv.group(4)), "generated": int(tps.group(1)),
            "tps": float(tps.group(2)), "compactions": n_comp}


def n_gen_for(model, trace):
    """Tokens a run may generate: half as many again as the worked trace takes."""
    return len(Q.run(["tokenize", model, "--text", trace]).stdout.split()) * 3 // 2 + 8


def score(said, expected):
    a = answer_of(said)
    return ("1" if a == expected else "0"), a or ""


def budget_bytes(q_bytes, full_bytes, pct):
    return q_bytes + pct / 100.0 * (full_bytes - q_bytes)


def bench_probe(model, steps, i, policies, budgets, via_gistd, log, at_budget=True,
                extra=None):
    """Every configuration of one problem: a list of run rows. at_budget: the soft watermark
    at the budget (else the tools' default)."""
    q, expected, trace = problem(steps, i)
    n_gen = n_gen_for(model, trace)
    base = {"model": os.path.basename(model), "steps": steps, "probe": i,
            "expected": expected}
    rows = []
    qrun = gen(model, q, 0)
    if "error" in qrun:
        raise RuntimeError(f"{model}: the question alone: {qrun['error']}")
    q_tokens, q_bytes = qrun["positions"], qrun["peak"]
    full = gen(model, q, n_gen)
    if "error" in full:
        raise RuntimeError(f"{model}: full cache: {full['error']}")
    # the full trace ends with the answer line: its bytes are what a run to there held
    cut = answer_end(full["said"])
    trace_run = full
    if cut is not None and cut < len(full["said"]):
        t = len(Q.run(["tokenize", model, "--bos", "--text", q + full["said"][:cut]])
                .stdout.split())
        trace_run = gen(model, q, max(1, t - q_tokens))
    full_bytes = trace_run["peak"]
    s, a = score(full["said"], expected)
    rows.append({**base, "path": "gist-model", "policy": "full", "budget_pct": "",
                 "budget_bytes": "", "full_bytes": full_bytes, "question_bytes": q_bytes,
                 "peak_bytes": full["peak"], "tokens": full["generated"],
                 "tokens_per_s": f"{full['tps']:.1f}", "compactions": full["compactions"],
                 "answer": a, "score": s,
                 "said": full["said"], "error": ""})
    params = [f"sinks={q_tokens}", "unit=thought"] + [f"{k}={v}" for k, v in
                                                      (extra or {}).items()]
    for b in budgets:
        cap = budget_bytes(q_bytes, full_bytes, b)
        for pol in policies:
            r = {**base, "path": "gist-model", "policy": pol, "budget_pct": f"{b:g}",
                 "budget_bytes": int(cap), "full_bytes": full_bytes, "question_bytes": q_bytes}
            g = gen(model, q, n_gen, pol, cap, params, cap if at_budget else None)
            if "error" in g:
                rows.append({**r, "score": "", "error": g["error"]})
                continue
            s, a = score(g["said"], expected)
            rows.append({**r, "peak_bytes": g["peak"], "tokens": g["generated"],
                         "tokens_per_s": f"{g['tps']:.1f}", "compactions": g["compactions"],
                         "answer": a, "score": s,
                         "said": g["said"], "error": ""})
            for path in via_gistd:
                rows.append(via_gistd[path](q, q_tokens, n_gen, pol, cap,
                                            {**r, "path": path}, expected, at_budget))
    rest = rows[1:]
    log(f"{base['model']} {steps} steps, problem {i}: full cache answered "
        f"{rows[0]['answer'] or 'nothing'} (solver: {expected}); compressed runs right: "
        f"{sum(x['score'] == '1' for x in rest)}/{len(rest)}, failed: "
        f"{sum(x['score'] == '' for x in rest)}")
    return rows


def gistd_runner(model, extra=None):
    """Runs of a problem through a real gistd: {"gistd-compact": f, "gistd-auto": f} and a
    function that stops the daemon. extra: more policy parameters for every session."""
    import gistc

    # prefill steps of one block: with --watermark default, a session's soft watermark is
    # its budget less room for one prefill step, then the room gist-model's loop leaves (at
    # gistd's 64 tokens, a 2-step problem's 25% budget sat below its pinned question, and
    # every token written was evicted as it came)
    d = gistc.Daemon(os.path.join(ROOT, os.environ.get("GISTD_BUILD", "build"), "bin", "gistd"),
                     model, "--block-rows", str(BLOCK_ROWS), "--prefill-chunk", str(BLOCK_ROWS),
                     "--threads", "1")
    c = gistc.Client(d.endpoint, timeout=120)

    def run(compact):
        def one(q, q_tokens, n_gen, pol, cap, r, expected, at_budget):
            s = c.open_session(policy=pol, budget=int(cap), soft=int(cap) if at_budget else 0,
                               params={"sinks": q_tokens, "unit": "thought",
                                       **(extra or {})})
            try:
                t0 = time.time()
                t = s.think(q, max_tokens=n_gen, compact=compact, temp=0)
                said, made = t.text, t.tokens
                dt = time.time() - t0
                info = s.info()
            except gistc.GistdError as ex:
                return {**r, "score": "", "error": str(ex)}
            finally:
                s.close()
            sc, a = score(said, expected)
            return {**r, "peak_bytes": info["peak_bytes"], "tokens": made,
                    "tokens_per_s": f"{made / dt:.1f}" if dt > 0 else "",
                    "compactions": info["compactions"], "answer": a,
                    "score": sc, "said": said, "error": ""}
        return one

    def stop():
        c.close()
        d.stop()

    return {"gistd-compact": run(True), "gistd-auto": run(False)}, stop


FIELDS = ["model", "path", "steps", "probe", "policy", "budget_pct", "budget_bytes",
          "full_bytes", "question_bytes", "peak_bytes", "tokens", "tokens_per_s",
          "compactions", "expected", "answer", "score", "said", "error"]


def summarise(runs):
    """One row per (model, path, steps, policy, budget): accuracy, peak bytes, tokens/s."""
    groups = {}
    for r in runs:
        k = (r["model"], r["path"], r["steps"], r["policy"], r["budget_pct"])
        groups.setdefault(k, []).append(r)
    out = []
    for (m, path, steps, pol, b), rs in groups.items():
        scored = [float(x["score"]) for x in rs if x["score"] != ""]
        peaks = [int(x["peak_bytes"]) for x in rs if x.get("peak_bytes") not in (None, "")]
        tps = sorted(float(x["tokens_per_s"]) for x in rs if x.get("tokens_per_s"))
        out.append({"model": m, "path": path, "steps": steps, "policy": pol, "budget_pct": b,
                    "problems": len(rs), "scored": len(scored),
                    "accuracy": f"{sum(scored) / len(scored):.3f}" if scored else "",
                    "peak_bytes": max(peaks) if peaks else "",
                    "tokens_per_s": f"{tps[len(tps) // 2]:.1f}" if tps else "",
                    "error": next((x["error"] for x in rs if x["error"]), "")})
    return out


def markdown(summary, machine):
    out = ["# Reasoning accuracy when finished thoughts are compressed\n", f"{machine}\n",
           "Held-out problems (train/synth.py's reasoning kind, evaluation seed), greedy. "
           "Cells: share of problems whose first \"Answer: N\" is the solver's answer; "
           "budgets: the pinned question's bytes plus that share of the bytes the full "
           "cache's thoughts took (to the answer line); policies compress finished thoughts "
           "(unit=thought). gist-model runs write all their tokens, gistd runs stop at the "
           "answer line. Peak: the most bytes a problem's session held; tokens/s: the "
           "median generation speed (one thread). \"not run\": every problem of the cell "
           "failed (the error is in reasoning_runs.csv).\n"]
    for model in dict.fromkeys(r["model"] for r in summary):
        for path in dict.fromkeys(r["path"] for r in summary if r["model"] == model):
            rs = [r for r in summary if r["model"] == model and r["path"] == path]
            steps = sorted({int(r["steps"]) for r in rs})
            n = max(r["problems"] for r in rs)
            out.append(f"## {model}, {path} ({n} problems per cell)\n")
            out.append("| policy | budget | " + " | ".join(f"{s} steps" for s in steps)
                       + " | peak bytes | tokens/s |")
            out.append("|---|---|" + "---|" * (len(steps) + 2))
            for pol, b in dict.fromkeys((r["policy"], r["budget_pct"]) for r in rs):
                cells, peaks, tps = [], [], []
                for s in steps:
                    x = [r for r in rs if r["policy"] == pol and r["budget_pct"] == b
                         and int(r["steps"]) == s]
                    cells.append((x[0]["accuracy"] or "not run") if x else "")
                    peaks += [int(r["peak_bytes"]) for r in x if r["peak_bytes"] != ""]
                    tps += [float(r["tokens_per_s"]) for r in x if r["tokens_per_s"]]
                tps.sort()
                out.append(f"| {pol} | {b + '%' if b else 'full'} | " + " | ".join(cells)
                           + f" | {max(peaks) if peaks else ''} | "
                           + (f"{tps[len(tps) // 2]:.0f}" if tps else "") + " |")
            out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "reasoning"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "gistd-6m.gguf"))
    ap.add_argument("--steps", default="2,3,4,5,6,7,8")
    ap.add_argument("--probes", type=int, default=10, help="problems per step count")
    ap.add_argument("--budgets", default="50,25,12.5")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--gistd", action="store_true",
                    help="the same through a real gistd (Compact{last_thought}, and automatic)")
    ap.add_argument("--watermark", choices=("budget", "default"), default="budget",
                    help="each session's soft watermark: its budget, or the tools' default "
                         "(a prefill step's blocks below it)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a policy parameter for every compressed run (policy/policy.h), "
                         "e.g. min_gist=8; may be repeated")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: 2 and 4 steps, one problem each, pool and window at "
                         "25%%, through gistd too")
    a = ap.parse_args()
    if not os.path.exists(Q.tool()):
        sys.exit(f"{Q.tool()} not built: run make")
    if a.quick:
        a.steps, a.probes, a.budgets, a.policies, a.gistd = "2,4", 1, "25", "pool,window", True
    steps = [int(x) for x in a.steps.split(",")]
    if any(s < 2 or s > 8 for s in steps):
        sys.exit("--steps: the problems have 2 to 8 steps")
    budgets = [float(x) for x in a.budgets.split(",")]
    bad = [p for p in a.param if "=" not in p]
    if bad:
        sys.exit(f"--param {bad[0]}: KEY=VALUE")
    extra = dict(p.split("=", 1) for p in a.param)
    pols = [p for p in Q.supported(a.model)[0] if p in a.policies.split(",")]
    os.makedirs(a.out, exist_ok=True)
    machine = (f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
               f"one thread; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; soft "
               f"watermark: {'the budget' if a.watermark == 'budget' else 'the default'}"
               + "".join(f"; {k}={v}" for k, v in extra.items()))

    def log(s):
        print(s, flush=True)

    log(machine)
    via, stop = gistd_runner(a.model, extra) if a.gistd else ({}, None)
    runs = []
    try:
        for s in steps:
            for i in range(a.probes):
                runs += bench_probe(a.model, s, i, pols, budgets, via, log,
                                    a.watermark == "budget", extra)
    finally:
        if stop:
            stop()
    summary = summarise(runs)
    with open(os.path.join(a.out, "reasoning_runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)
    Q.write_csv(os.path.join(a.out, "reasoning.csv"), summary)
    md = markdown(summary, machine)
    with open(os.path.join(a.out, "reasoning.md"), "w") as f:
        f.write(md + "\n")
    print()
    print(md)


if __name__ == "__main__":
    main()
