#!/usr/bin/python3
"""bench/quality.py — perplexity against KV budget for every policy, and the recall test.

For each model: the text is scored by `gist-model perplexity` in windows of --ctx tokens,
once with the full cache (no budget: the reference) and then for every policy the model
supports under budgets that are fractions of the full cache of one window (100%, 50%, 25%,
12.5% by default). Writes, under --out:
  quality.csv      one row per (model, policy, budget) with every figure the tool prints
  quality.md       a table per model: ppl and its change against the full cache
  quality.png      ppl against budget, one line per policy (gnuplot; one panel per model)
  recall.csv       the recall test: a code word stated early, asked for after filler text
and prints the tables. Runs on one thread (the models are tiny; OpenMP would only contend).

Usage: bench/quality.sh [--quick] [--out DIR] [--models M1,M2] ...
"""
import argparse
import csv
import glob
import math
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("GISTD_SHARED", os.path.join(ROOT, "..", "shared"))
ALL_POLICIES = ["window", "h2o", "tova", "pool", "gist", "trim", "auto"]


def tool():
    return os.path.join(ROOT, os.environ.get("GISTD_BUILD", "build"), "bin", "gist-model")


def run(args, check=True):
    p = subprocess.run([tool(), *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"gist-model {' '.join(args)}: {p.stderr.strip()}")
    return p


def figures(out):
    d = {}
    for line in out.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            d[k.strip()] = v.strip()
    return d


def supported(model):
    info = run(["info", model]).stdout
    gist = "gist tokens:     none" not in info
    gates = "retention gates: none" not in info
    out = []
    for p in ALL_POLICIES:
        if (p == "gist" and not gist) or (p == "trim" and not gates):
            continue
        out.append(p)
    return out, gist, gates


def text_file(path, limit, outdir):
    """The text, cut to `limit` characters (at a paragraph break) when asked."""
    if not limit:
        return path
    with open(path, encoding="utf-8", errors="replace") as f:
        t = f.read()
    if len(t) > limit:
        cut = t.rfind("\n\n", 0, limit)
        t = t[: cut if cut > limit // 2 else limit]
    dst = os.path.join(outdir, os.path.basename(path) + f".{limit}.txt")
    with open(dst, "w", encoding="utf-8") as f:
        f.write(t)
    return dst


# KV block rows for budgeted runs: a budget must hold a block in every lane, and 12.5% of a
# 2048-token context's f16 cache is less than one 64-row block per lane
BLOCK_ROWS = 16


def perplexity(model, text, ctx, policy, budget, extra=()):
    args = ["perplexity", model, "--file", text, "--ctx", str(ctx), "--threads", "1"]
    if policy:
        args += ["--policy", policy]
    if budget is not None:
        args += ["--kv-budget", f"{budget:g}%", "--kv-block-rows", str(BLOCK_ROWS)]
    t0 = time.time()
    p = run(args + list(extra), check=False)
    dt = time.time() - t0
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed",
                "seconds": dt}
    f = figures(p.stdout)
    f["seconds"] = dt
    return f


def bench_model(model, text, ctx, budgets, policies, rows, log):
    name = os.path.basename(model)
    full = perplexity(model, text, ctx, "full", None)
    if "error" in full:
        raise RuntimeError(f"{name}: full cache: {full['error']}")
    full_ppl = float(full["ppl"])
    log(f"{name}: {full['tokens']} tokens of {os.path.basename(text)}, ctx {ctx}, full cache "
        f"{int(full['full_kv_bytes'])} bytes per window, ppl {full_ppl:.4f}")
    rows.append(row(name, text, ctx, "full", None, full, full_ppl))
    for b in budgets:
        for pol in policies:
            f = perplexity(model, text, ctx, pol, b)
            rows.append(row(name, text, ctx, pol, b, f, full_ppl))
            r = rows[-1]
            log(f"  {pol:7s} {b:5g}%  ppl {r['ppl']:>9s} ({r['vs_full']:>7s})  peak "
                f"{r['peak_kv_bytes']:>8s}  rows/token {r['rows_per_token']:>6s}  "
                f"{r['compactions'] or r['error']}")
    return full_ppl


def row(model, text, ctx, policy, budget, f, full_ppl):
    ppl = f.get("ppl")
    return {
        "model": model,
        "text": os.path.basename(text),
        "ctx": ctx,
        "policy": policy,
        "budget_pct": "" if budget is None else f"{budget:g}",
        "budget_bytes": f.get("kv_budget", ""),
        "full_kv_bytes": f.get("full_kv_bytes", ""),
        "peak_kv_bytes": f.get("peak_kv_bytes", ""),
        "rows_per_token": f.get("rows_per_token", ""),
        "tokens": f.get("tokens", ""),
        "gist_tokens": f.get("gist_tokens", ""),
        "ppl": ppl or "",
        "vs_full": f"{(float(ppl) / full_ppl - 1) * 100:+.2f}%" if ppl else "",
        "compactions": f.get("compactions", ""),
        "error": f.get("error", ""),
        "seconds": f"{f.get('seconds', 0):.2f}",
    }


# ---------------------------------------------------------------------------- recall

WORDS = ["apple", "river", "seven", "purple", "window"]


def tokens(model, text, bos=True):
    args = ["tokenize", model, "--text", text] + (["--bos"] if bos else [])
    return [int(x) for x in run(args).stdout.split()]


def recall(model, filler, budgets, policies, out_rows, log):
    """A code word stated first, filler, then the question. For each policy and budget: does
    greedy decoding give the word back, and the log-probability of its first token."""
    name = os.path.basename(model)
    with open(filler, encoding="utf-8", errors="replace") as f:
        fill = f.read()
    results = {}
    for word in WORDS:
        prompt = (f"The code word is {word}. Remember it. {fill.strip()} "
                  f"What is the code word? The code word is")
        p_ids = tokens(model, prompt)
        a_ids = tokens(model, prompt + " " + word)
        if a_ids[: len(p_ids)] != p_ids or len(a_ids) == len(p_ids):
            continue
        answer = a_ids[len(p_ids)]
        ids = " ".join(map(str, a_ids[: len(p_ids) + 1]))
        for pol in ["full"] + policies:
            for b in [None] if pol == "full" else budgets:
                args = ["logits", model, "--tokens", ids, "--threads", "1", "--out",
                        os.path.join(OUTDIR, "recall.bin"), "--policy", pol]
                if b is not None:
                    args += ["--kv-budget", f"{b:g}%"]
                p = run(args, check=False)
                lp = float("nan")
                if p.returncode == 0:
                    lp = logprob_at(os.path.join(OUTDIR, "recall.bin"), len(p_ids) - 1, answer)
                g = ["generate", model, "--prompt", prompt, "-n", "3", "--temp", "0",
                     "--threads", "1", "--policy", pol]
                if b is not None:
                    g += ["--kv-budget", f"{b:g}%", "--ctx", str(len(p_ids) + 8)]
                q = run(g, check=False)
                said = q.stdout[len(prompt):].strip() if q.returncode == 0 else "(error)"
                hit = said.split(" ")[0].strip(".,!?\"'") == word if said else False
                key = (pol, "" if b is None else f"{b:g}")
                results.setdefault(key, []).append((hit, lp, said))
                out_rows.append({"model": name, "policy": pol, "budget_pct": key[1],
                                 "word": word, "prompt_tokens": len(p_ids), "recalled": int(hit),
                                 "logprob": f"{lp:.4f}", "said": said})
    log(f"recall on {name} (prompt about {len(p_ids)} tokens, budget % of its full cache):")
    for (pol, b), v in results.items():
        hits = sum(1 for h, _, _ in v if h)
        mlp = sum(lp for _, lp, _ in v) / len(v)
        log(f"  {pol:7s} {b or 'none':>5s}  recalled {hits}/{len(v)}  mean log p(word) "
            f"{mlp:.3f}")
    return results


def logprob_at(path, row, token):
    import array
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    n_vocab = len(a) // (row + 2)
    r = a[row * n_vocab:(row + 1) * n_vocab]
    m = max(r)
    return r[token] - m - math.log(sum(math.exp(x - m) for x in r))


# ---------------------------------------------------------------------------- outputs

def write_csv(path, rows):
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


ABLATIONS = [
    ("pool", ["recent_frac=0"]),
    ("pool", ["recent_frac=0.25"]),
    ("pool", []),
    ("pool", ["recent_frac=0.75"]),
    ("pool", ["gist_rows=1"]),
    ("pool", ["gist_rows=4"]),
    ("pool", ["mass_bias=0"]),
    ("pool", ["merge=0"]),
    ("h2o", ["recent_frac=0"]),
    ("h2o", ["recent_frac=0.75"]),
]


def ablations(model, text, ctx, budgets, rows, log):
    """The pooled policy's parameters one at a time, against its defaults (pool, no params)."""
    name = os.path.basename(model)
    full_ppl = float([r for r in rows if r["model"] == name and r["policy"] == "full"][0]["ppl"])
    out = []
    log(f"ablations on {name}:")
    for pol, params in ABLATIONS:
        extra = [x for p in params for x in ("--param", p)]
        for b in budgets:
            f = perplexity(model, text, ctx, pol, b, extra)
            r = row(name, text, ctx, pol + (" " + " ".join(params) if params else ""), b, f,
                    full_ppl)
            out.append(r)
            log(f"  {r['policy']:24s} {b:5g}%  ppl {r['ppl']:>9s} ({r['vs_full']:>7s})  "
                f"rows/token {r['rows_per_token']:>6s}  {r['compactions'] or r['error']}")
    return out


def markdown(rows, budgets, recall_res, machine):
    out = [f"# KV budget against perplexity\n", f"{machine}\n"]
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        full = [r for r in rs if r["policy"] == "full"][0]
        out.append(f"## {model} on {full['text']} ({full['tokens']} tokens scored, windows of "
                   f"{full['ctx']} tokens)\n")
        out.append(f"Full cache: ppl **{full['ppl']}**, {full['full_kv_bytes']} bytes per "
                   f"window. Cells: ppl (change against the full cache); budgets are the "
                   f"session's hard limit as a share of the full cache's bytes.\n")
        out.append("| policy | " + " | ".join(f"{b:g}%" for b in budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for pol in dict.fromkeys(r["policy"] for r in rs if r["policy"] != "full"):
            cells = []
            for b in budgets:
                r = [x for x in rs if x["policy"] == pol and x["budget_pct"] == f"{b:g}"]
                if not r or not r[0]["ppl"]:
                    cells.append("refused" if r else "")
                else:
                    cells.append(f"{float(r[0]['ppl']):.4f} ({r[0]['vs_full']})")
            out.append(f"| {pol} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("Rows held per token seen (end of each window) and peak bytes:\n")
        out.append("| policy | " + " | ".join(f"{b:g}%" for b in budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for pol in dict.fromkeys(r["policy"] for r in rs if r["policy"] != "full"):
            cells = []
            for b in budgets:
                r = [x for x in rs if x["policy"] == pol and x["budget_pct"] == f"{b:g}"]
                cells.append(f"{r[0]['rows_per_token']} / {r[0]['peak_kv_bytes']}"
                             if r and r[0]["ppl"] else "")
            out.append(f"| {pol} | " + " | ".join(cells) + " |")
        out.append("")
    for model, res in recall_res.items():
        out.append(f"## Recall on {model}\n")
        out.append("\"The code word is X.\" then filler, then \"What is the code word? The code "
                   "word is\": greedy answers that give X back, and the mean log-probability "
                   "of X's first token.\n")
        out.append("| policy | budget | recalled | mean log p |")
        out.append("|---|---|---|---|")
        for (pol, b), v in res.items():
            hits = sum(1 for h, _, _ in v if h)
            mlp = sum(lp for _, lp, _ in v) / len(v)
            out.append(f"| {pol} | {b + '%' if b else 'none'} | {hits}/{len(v)} | {mlp:.3f} |")
        out.append("")
    return "\n".join(out)


def plot(rows, budgets, path):
    if not shutil.which("gnuplot"):
        return "gnuplot not found: no plot"
    models = list(dict.fromkeys(r["model"] for r in rows))
    dat = []
    for mi, model in enumerate(models):
        rs = [r for r in rows if r["model"] == model and r["ppl"]]
        full = [r for r in rs if r["policy"] == "full"][0]
        pols = list(dict.fromkeys(r["policy"] for r in rs if r["policy"] != "full"))
        fn = os.path.join(os.path.dirname(path), f"quality_{mi}.dat")
        with open(fn, "w") as f:
            for pol in pols:
                f.write(f'# {pol}\n')
                for r in sorted((x for x in rs if x["policy"] == pol),
                                key=lambda x: float(x["budget_pct"])):
                    f.write(f"{r['budget_pct']} {r['ppl']}\n")
                f.write("\n\n")
        dat.append((model, fn, pols, float(full["ppl"])))
    script = [
        "set terminal pngcairo size 900,%d font 'sans,10'" % (420 * len(dat)),
        f"set output '{path}'",
        f"set multiplot layout {len(dat)},1",
        "set logscale x 2", "set xlabel 'KV budget (% of the full cache)'",
        "set ylabel 'perplexity'", "set key outside right", "set grid",
        "set xrange [%g:%g]" % (min(budgets) / 1.2, max(budgets) * 1.2),
    ]
    for model, fn, pols, full in dat:
        script.append(f"set title '{model}'")
        parts = [f"'{fn}' index {i} with linespoints title '{p}'" for i, p in enumerate(pols)]
        parts.append(f"{full} with lines dashtype 2 lc rgb 'black' title 'full cache'")
        script.append("plot " + ", ".join(parts))
    script.append("unset multiplot")
    gp = os.path.join(os.path.dirname(path), "quality.gp")
    with open(gp, "w") as f:
        f.write("\n".join(script) + "\n")
    p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    return p.stderr.strip() or f"plot: {path}"


def main():
    global OUTDIR
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "quality"))
    ap.add_argument("--models", help="comma-separated GGUF files (default: stories260K and "
                    "models/*.gguf)")
    ap.add_argument("--budgets", default="100,50,25,12.5")
    ap.add_argument("--policies", default=",".join(ALL_POLICIES))
    ap.add_argument("--quick", action="store_true", help="shorter texts, for a smoke test")
    ap.add_argument("--no-recall", action="store_true")
    ap.add_argument("--ablations", action="store_true",
                    help="also the pooled policy's parameters one at a time (ablations.csv)")
    a = ap.parse_args()
    OUTDIR = a.out
    os.makedirs(a.out, exist_ok=True)
    if not os.path.exists(tool()):
        sys.exit(f"{tool()} not built: run make")
    budgets = [float(x) for x in a.budgets.split(",")]
    want = a.policies.split(",")

    # (model, text, chars kept, ctx): TinyStories-like text for the TinyStories model; the
    # held-out book for the project's own model
    jobs = []
    stories = os.path.join(SHARED, "models", "stories260K-f32.gguf")
    own = sorted(glob.glob(os.path.join(ROOT, "models", "*.gguf")))
    models = a.models.split(",") if a.models else ([stories] if os.path.exists(stories)
                                                     else []) + own
    for m in models:
        if os.path.basename(m).startswith("stories"):
            jobs.append((m, os.path.join(ROOT, "bench", "quality_stories.txt"),
                         2500 if a.quick else 0, 512))
        else:
            book = os.path.join(SHARED, "corpus", "persuasion.txt")
            if not os.path.exists(book):
                print(f"skip {m}: {book} not found")
                continue
            jobs.append((m, book, 6000 if a.quick else 24000, 512))
    if not jobs:
        sys.exit("no model to measure (../shared/models/stories260K-f32.gguf or models/*.gguf)")

    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    machine = (f"Machine: {platform.node()}, {platform.machine()}, "
               f"{os.cpu_count()} CPUs, one thread; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    log(machine)
    rows, recall_rows, recall_res, abl = [], [], {}, []
    for model, text, limit, ctx in jobs:
        pols, gist, gates = supported(model)
        pols = [p for p in pols if p in want]
        src = text_file(text, limit, a.out)
        bench_model(model, src, ctx, budgets, pols, rows, log)
        if a.ablations:
            abl += ablations(model, src, ctx, [b for b in budgets if b in (25, 12.5)], rows, log)
        if not a.no_recall:
            filler = text_file(os.path.join(ROOT, "tests", "data", "tinystory.txt")
                               if os.path.basename(model).startswith("stories") else text,
                               1200 if os.path.basename(model).startswith("stories") else 1600,
                               a.out)
            recall_res[os.path.basename(model)] = recall(
                model, filler, [b for b in budgets if b < 100], pols, recall_rows, log)
    write_csv(os.path.join(a.out, "quality.csv"), rows)
    write_csv(os.path.join(a.out, "recall.csv"), recall_rows)
    write_csv(os.path.join(a.out, "ablations.csv"), abl)
    md = markdown(rows, budgets, recall_res, machine)
    if abl:
        md += "\n## Ablations (pooled gists, H2O's recent share)\n\n| variant | budget | ppl | " \
              "rows/token | compactions |\n|---|---|---|---|---|\n"
        for r in abl:
            md += (f"| {r['model']}: {r['policy']} | {r['budget_pct']}% | {r['ppl']} "
                   f"({r['vs_full']}) | {r['rows_per_token']} | {r['compactions']} |\n")
    with open(os.path.join(a.out, "quality.md"), "w") as f:
        f.write(md + "\n")
    log(plot(rows, budgets, os.path.join(a.out, "quality.png")))
    print()
    print(md)


if __name__ == "__main__":
    main()
