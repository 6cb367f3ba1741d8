"""Writes models/README.md (the model card) from the run folder's logs and figures."""
import argparse
import ast
import csv
import hashlib
import json
import os
import re


def finals(log):
    """[(figures dict, steps, tokens, minutes)] of each 'final eval' line in a log."""
    out = []
    if not os.path.exists(log):
        return out
    for line in open(log, encoding="utf-8"):
        m = re.match(r"final eval (\{.*\}) steps (\d+) tokens (\d+) minutes ([\d.]+)", line)
        if m:
            out.append((ast.literal_eval(m.group(1)), int(m.group(2)), int(m.group(3)),
                        float(m.group(4))))
    return out


def config(log):
    for line in open(log, encoding="utf-8"):
        m = re.match(r"# config (\{.*\}) params (\d+)", line)
        if m:
            return json.loads(m.group(1)), int(m.group(2))
    return {}, 0


def quality_section(path, name):
    """The KV-budget table of bench/quality.py's CSV for this model: perplexity under each
    policy and budget, and the rows each keeps per token seen."""
    rows = [r for r in csv.DictReader(open(path)) if r["model"] == name]
    full = next((r for r in rows if r["policy"] == "full"), None)
    if not full:
        return ""
    budgets = sorted({r["budget_pct"] for r in rows if r["budget_pct"]}, key=float, reverse=True)
    pols = []
    for r in rows:
        if r["policy"] != "full" and r["policy"] not in pols:
            pols.append(r["policy"])
    cell = {(r["policy"], r["budget_pct"]): r for r in rows}

    def fmt(r, what):
        if not r or not r["ppl"]:
            return r["error"] if r else ""
        return f"{float(r['ppl']):.2f} ({r['vs_full']})" if what == "ppl" else r["rows_per_token"]

    cut = re.match(r"(.*)\.(\d+)\.txt$", full["text"])
    text = (f"the first {int(cut.group(2)):,} characters of `{cut.group(1)}`" if cut
            else f"`{full['text']}`")
    out = (f"\n## What gists and gates cost and keep (`bench/quality.sh`)\n\n"
           f"Held out: {text}, {int(full['tokens']):,} tokens scored\nin windows of "
           f"{full['ctx']} tokens; full cache: perplexity **{float(full['ppl']):.2f}**, "
           f"{int(full['full_kv_bytes']):,} bytes per window.\nBudgets are each session's "
           f"hard limit as a share of the full cache; cells: perplexity\n(change against the "
           f"full cache).\n\n| policy | " + " | ".join(f"{b}%" for b in budgets) + " |\n|---|"
           + "---|" * len(budgets) + "\n")
    for p in pols:
        out += f"| {p} | " + " | ".join(fmt(cell.get((p, b)), "ppl") for b in budgets) + " |\n"
    out += ("\n`gist` runs the learned gist tokens: every closed sentence is seen through its "
            "gists only,\nwhatever the budget (the sentence mask). `auto`, the default, pools "
            "the oldest sentences\ninto gists as the budget requires, merges old gists and "
            "evicts by the gates' retention\nscores (TRIM-KV). A cell shows the error the "
            "policy gave when it could not run.\n")
    out += ("\nRows kept per token seen (end of each window):\n\n| policy | "
            + " | ".join(f"{b}%" for b in budgets) + " |\n|---|" + "---|" * len(budgets) + "\n")
    for p in pols:
        out += f"| {p} | " + " | ".join(fmt(cell.get((p, b)), "rows") for b in budgets) + " |\n"
    return out


def bench_section(path, heading, mark="##"):
    """A benchmark's markdown tables (bench/memory.py, bench/reasoning.py) under a heading
    of the card (mark: its markdown level)."""
    if not path:
        return ""
    with open(path) as f:
        body = f.read().split("\n", 1)[1]  # its own title goes
    return f"\n{mark} {heading}\n" + body.replace("\n## ", "\n### ")


def file_line(path):
    """The card's line on a model file: name, size and the start of its sha256."""
    size = os.path.getsize(path)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return (f"- File: `{os.path.basename(path)}`, {size:,} bytes ({size / 2**20:.1f} MiB), "
            f"sha256 `{sha[:16]}...`.")


def thought_section(model, runs, reasoning, base="the base above"):
    """The card's part on the second file, the one with gists after each thought."""
    if not model:
        return ""
    name = os.path.basename(model)
    st = finals(os.path.join(runs, "thought", "log.txt"))
    figs = ""
    if st:
        f, steps, tokens, minutes = st[-1]
        figs = (f"Its thought-gist stage ran {minutes:.1f} min ({steps} steps, {tokens:,} "
                f"tokens) after a {st[0][3]:.1f}-min phase on the gist rows alone. Held-out "
                f"problems of 2 to 8 steps under teacher forcing, answer right: "
                f"{f.get('problems_gisted', 0):.0%} reading earlier thoughts through their "
                f"gists only, {f.get('problems_plain', 0):.0%} with the full causal mask.\n")
    return f"""
## {name}: gists after each thought

For reasoning pipelines (LightThinker's recipe): {base}, with its own 2 gist tokens
trained to stand for a finished thought instead of a sentence (`gistd.gist.mask` "thought"),
and its own retention gates. A share of its training batches were reasoning problems run as
a pipeline runs them: the question pinned, every later token seeing a finished thought only
through its gists, so the gists carry what the next thought needs
(`train/train_gist.py --unit thought --problems`).

{file_line(model)}

{figs}{bench_section(reasoning, "Reasoning with finished thoughts compressed, this file", "###")}"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="train/pipeline.sh",
                    help="the command that made the model, quoted in the card")
    ap.add_argument("--origin", default="trained from scratch on public-domain English books",
                    help="what the model was trained from and on (the card's first line)")
    ap.add_argument("--base-desc", default="all; seq 1024, batch 2, AdamW 2e-3, cosine",
                    help="the base stage's row of the training table")
    ap.add_argument("--gist-lr", default="3e-4", help="the gist stage's phase-2 peak rate")
    ap.add_argument("--quality", help="bench/quality.py's quality.csv with rows for this model")
    ap.add_argument("--memory", help="bench/memory.py's memory.md for this model")
    ap.add_argument("--memory-deep", help="bench/memory.py's memory.md of prompts 2 to 8 "
                    "contexts long (with and without re-expansion)")
    ap.add_argument("--reasoning", help="bench/reasoning.py's reasoning.md for this model")
    ap.add_argument("--thought-model", help="the reasoning pipelines' file (THOUGHT_MIN)")
    ap.add_argument("--thought-reasoning", help="bench/reasoning.py's reasoning.md for it")
    ap.add_argument("--thought-base", default="the base above",
                    help="what the thought-gist file was trained from, in words")
    a = ap.parse_args()
    r = a.runs
    cfg, params = config(os.path.join(r, "base", "log.txt"))
    base = finals(os.path.join(r, "base", "log.txt"))
    gist = finals(os.path.join(r, "gist", "log.txt"))
    gates = finals(os.path.join(r, "gates", "log.txt"))
    ev = json.load(open(os.path.join(r, "eval.json")))
    name = os.path.basename(a.model)

    def stage(f, i=-1):
        if not f:
            return "not run"
        _fig, steps, tokens, minutes = f[i]
        return f"{minutes:.1f} min, {steps} steps, {tokens:,} tokens"

    def row(k, what):
        e = ev.get(k)
        if not e:
            return ""
        return (f"| {what} | {e['ppl']:.2f} | {e['nll']:.4f} | {e['bits_per_byte']:.3f} | "
                f"{e['tokens']:,} |\n")

    phase1 = stage(gist, 0) if len(gist) > 1 else "not run"
    # GIST_MIN=0: phase 2 saved phase 1's model without a step
    frozen = bool(gist) and gist[-1][1] == 0
    phase2 = "not run: every weight but the gist rows is the base's" if frozen else stage(gist)
    tuned = ("its base weights as the base's: the gist stage trained only the gist rows"
             if frozen else "after the gist fine-tune")
    rows = (row("base", "base, causal") + row("plain", "final, causal (no gists)")
            + row("gist", "final, gists + sentence mask")
            + row("gated", "final, causal + gate decay"))
    ec = ev.get("engine_check")
    engine = ""
    if ec:
        engine = (f"\nCross-check of the exported file: on the first {ec['bytes']:,} bytes "
                  f"of persuasion\n({ec['tokens']:,} tokens scored as `gist-model perplexity` "
                  f"scores a file, windows of {ec['ctx']}),\n`gist-model perplexity` gives "
                  f"{ec['engine_ppl']:.3f}, PyTorch on the same weights "
                  f"{ec['torch_ppl']:.3f}.\n")
    hd = cfg.get("n_embd", 0) // max(cfg.get("n_head", 1), 1)
    text = f"""# {name}

The project's own small llama model: {a.origin},
with sentence-anchored gist tokens and TRIM-KV retention gates, all in one GGUF file.
Made by the recipes in `train/` (see `train/README.md`); everything below was measured
by them.

{file_line(a.model)}
  Big matrices F16; norms and gate weights F32.
- Architecture: llama, {cfg.get('n_layer')} layers, n_embd {cfg.get('n_embd')},
  {cfg.get('n_head')} query heads / {cfg.get('n_head_kv')} kv heads (head_dim {hd}),
  SwiGLU n_ff {cfg.get('n_ff')}, RMSNorm eps {cfg.get('eps')}, RoPE base
  {cfg.get('rope_base')} on adjacent pairs, context {cfg.get('n_ctx')}, untied output;
  {params:,} parameters in the base model (vocabulary {cfg.get("n_vocab")}).
- Tokenizer: SentencePiece BPE, 4096 pieces (byte fallback, no normalisation, dummy
  space prefix, digits split), trained on the training books; GGUF `llama` tokenizer.
  Then 2 gist tokens `<gist_0>`, `<gist_1>` (control) at ids 4096 and 4097.
- Data: `../shared/corpus/` (Austen, Melville, the King James Bible, Conan Doyle, Twain,
  the Jargon File, Dasher's training text; about 3.4M tokens), minus the held-out
  `persuasion.txt` (never seen by the tokenizer or any training stage).
  `train/rebuild_corpus.sh` rebuilds the corpus from its Debian packages.

## Training (2 CPU cores shared with other work, PyTorch 1.13)

| stage | what learns | time |
|---|---|---|
| base | {a.base_desc} | {stage(base)} |
| gist, phase 1 | only the 2 gist rows of token_embd and output | {phase1} |
| gist, phase 2 | everything, lr {a.gist_lr}; 1/4 of windows without gists | {phase2} |
| gates | only the retention gates (hidden 32, budget 128) | {stage(gates)} |

Gists (Tarasov et al. 2025): 2 gist tokens after every sentence (`.`/`?`/`!` followed by
whitespace, or a paragraph break), sentence mask with 1 sink (BOS). Gist positions are
not scored; the first token of a sentence is predicted from the last gist of the group
before it (as gistd scores text) and, in training, from the sentence's last token too (as
gistd draws it while it generates). Gates (TRIM-KV, Bui et al. 2025) were trained on the
gist model (frozen), on plain text without gists, with loss KL(model || gated model) +
next-token loss + 0.01 * mean(max(0, sum_i beta_i^(t-i) - 128)).

Command: `{a.command}`
(see the script for every stage's flags).

## Validation (held-out persuasion.txt)

{ev['windows']} sentence-aligned windows of about 1024 tokens from the start of the book;
every row scores the same {ev['base']['tokens']:,} tokens. Persuasion tokenizes at
{ev['tokens_per_byte']} tokens/byte.

| model | perplexity / token | nll (nats) | bits / byte | tokens |
|---|---|---|---|---|
{rows}
"final" is this file ({tuned}). "gists + sentence mask": no token sees the
raw tokens of an earlier sentence, only its gists. "gate decay": key i weighs
beta_i^(t-i) at query t (the soft form the gates are trained with).
{engine}{quality_section(a.quality, name) if a.quality else ""}\
{bench_section(a.memory, "What each policy remembers (`bench/memory.sh`)")}\
{bench_section(a.memory_deep, "Several contexts deep, with and without re-expansion")}\
{bench_section(a.reasoning, "Reasoning with finished thoughts compressed (`bench/reasoning.py`)")}\
{thought_section(a.thought_model, r, a.thought_reasoning, a.thought_base)}"""
    with open(a.out, "w") as f:
        f.write(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
