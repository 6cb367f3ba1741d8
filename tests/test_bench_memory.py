"""bench/memory.py: its --quick form end to end on the committed model, and its scorer.

The quick run goes through `gist-model generate` (the session loop) for every task; the
test checks the CSVs are whole and consistent (every task and configuration present,
scores 0 or 1, prompts within the asked depth, peak bytes within the budget) and that the
scorer gives 1 to each probe's own answer and 0 to a wrong one.
"""
import csv
import os
import subprocess
import sys

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "bench"))
sys.path.insert(0, os.path.join(tap.ROOT, "train"))
MODEL = os.path.join(tap.ROOT, "models", "gistd-6m.gguf")


def need():
    if not os.path.exists(tap.tool("gist-model")):
        raise tap.Skip("gist-model not built")
    if not os.path.exists(MODEL):
        raise tap.Skip("models/gistd-6m.gguf absent")
    tap.shared("corpus/persuasion.txt")
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise tap.Skip("numpy absent")


def test_quick_run_writes_whole_tables():
    need()
    out = tap.tmpdir()
    p = subprocess.run(["/usr/bin/python3", os.path.join(tap.ROOT, "bench", "memory.py"),
                        "--quick", "--model", MODEL, "--out", out],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(os.path.join(out, "memory_runs.csv")) as f:
        runs = list(csv.DictReader(f))
    import memory

    assert {r["task"] for r in runs} == set(memory.TASKS)
    for task in memory.TASKS:
        cfg = {(r["policy"], r["budget_pct"]) for r in runs if r["task"] == task}
        assert cfg == {("full", ""), ("window", "25")}, cfg
    ctx = memory.n_ctx(MODEL)
    for r in runs:
        assert r["error"] == "", r
        assert r["score"] in ("0", "1"), r
        assert 0 < int(r["prompt_tokens"]) <= ctx // 2 - memory.GEN_ROOM, r
        if r["budget_pct"]:
            assert int(r["peak_kv_bytes"]) <= int(r["budget_bytes"]), r
            assert int(r["budget_bytes"]) > 0
    with open(os.path.join(out, "memory.csv")) as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 * len(memory.TASKS)
    for s in summary:
        mine = [float(r["score"]) for r in runs if r["task"] == s["task"]
                and r["policy"] == s["policy"] and r["budget_pct"] == s["budget_pct"]]
        assert abs(float(s["accuracy"]) - sum(mine) / len(mine)) < 1e-9
    md = open(os.path.join(out, "memory.md")).read()
    assert "| window | 25% |" in md and "## gistd-6m.gguf: chat" in md
    # --merge of that run and of a copy holding only its chat rows (as two processes split by
    # --tasks would leave them): the same tables as the run's own
    part = tap.tmpdir()
    with open(os.path.join(part, "memory_runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(runs[0]))
        w.writeheader()
        w.writerows(r for r in runs if r["task"] == "chat")
    with open(os.path.join(part, "memory.md"), "w") as f:
        f.write("# another run\n")
    keep = [r for r in runs if r["task"] != "chat"]
    with open(os.path.join(out, "memory_runs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(runs[0]))
        w.writeheader()
        w.writerows(keep)
    merged = tap.tmpdir()
    p = subprocess.run(["/usr/bin/python3", os.path.join(tap.ROOT, "bench", "memory.py"),
                        "--merge", f"{out},{part}", "--out", merged, "--depths", "0.5",
                        "--budgets", "25"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(os.path.join(merged, "memory.csv")) as f:
        assert sorted(map(str, csv.DictReader(f))) == sorted(map(str, summary))
    assert open(os.path.join(merged, "memory.md")).read() == md
    # a policy run again apart and given first (window's rows, then the full cache's): the
    # tables keep the full cache first, as the run's own
    for d, pol in ((part, "window"), (out, "full")):
        with open(os.path.join(d, "memory_runs.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(runs[0]))
            w.writeheader()
            w.writerows(r for r in runs if r["policy"] == pol)
    merged = tap.tmpdir()
    p = subprocess.run(["/usr/bin/python3", os.path.join(tap.ROOT, "bench", "memory.py"),
                        "--merge", f"{part},{out}", "--out", merged, "--depths", "0.5",
                        "--budgets", "25"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert open(os.path.join(merged, "memory.md")).read() == md


def test_scorer_on_known_answers():
    need()
    import memory
    import synth

    with open(tap.shared("corpus/persuasion.txt"), encoding="utf-8") as f:
        filler = synth.Filler([f.read()])
    for i, task in enumerate(memory.TASKS):
        p, n = memory.make_probe(MODEL, task, 300, 40 + i, filler)
        assert n <= 300
        right = memory.answer_text(p.prompt + p.completion + "and then more text", p.prompt)
        assert synth.string_match_all(right, p.values) == 1.0, (task, right)
        wrong = memory.answer_text(p.prompt + " 1234567 nobody.\n" + p.answer, p.prompt)
        assert synth.string_match_all(wrong, p.values) == 0.0, (task, wrong)
        # a miss that names another value the probe stated is told from an invented one
        assert memory.other_value(right, 1.0, p) == ""
        others = [v for v in p.meta.get("stated", []) if v not in p.values]
        if task in ("niah_multikey", "chat"):
            assert len(p.meta["stated"]) >= 1 and p.values[0] in p.meta["stated"]
            assert memory.other_value(wrong, 0.0, p) == "0"
        else:
            assert memory.other_value(wrong, 0.0, p) == ""
        if others:
            assert memory.other_value(f"It is {others[0]}.", 0.0, p) == "1"
    # several keys always state more than one value: the case above is always tried there
    p, _ = memory.make_probe(MODEL, "niah_multikey", 300, 41, filler)
    assert len(p.meta["stated"]) >= 2


def test_dev_probes_are_training_probes():
    """--dev draws from the training generator (no held-out value) with a training book as
    filler; the default draws held-out values from the held-out book."""
    need()
    import memory
    import synth

    with open(tap.shared(f"corpus/{memory.DEV_FILLER}"), encoding="utf-8") as f:
        dev_filler = synth.Filler([f.read()])
    with open(tap.shared("corpus/persuasion.txt"), encoding="utf-8") as f:
        filler = synth.Filler([f.read()])
    for task in ("passkey", "niah_single"):
        for seed in range(4):
            d, _ = memory.make_probe(MODEL, task, 300, seed, dev_filler, dev=True)
            h, _ = memory.make_probe(MODEL, task, 300, seed, filler)
            assert not any(synth.heldout(v) for v in d.values), (task, d.values)
            assert all(synth.heldout(v) for v in h.values), (task, h.values)


def test_expansion_cost_quantiles():
    import memory

    assert memory.quantile([4, 1, 3, 2], 0.5) == 2
    assert memory.quantile(list(range(1, 101)), 0.99) == 99
    assert memory.quantile([7], 0.99) == 7
    runs = [{"policy": "auto", "budget_pct": "25", "score": "1", "expand_spans": str(s),
             "expand_tokens": str(10 * s), "expand_ms": f"{s}.5"} for s in (1, 2, 3)]
    runs += [{"policy": "auto+expand=0", "budget_pct": "25", "score": "0",
              "expand_spans": "0", "expand_tokens": "0", "expand_ms": "0"}]
    md = memory.expansion_cost(runs)
    assert "| auto | 25% | 3 | 2 | 20 / 30 | 2.5 / 3.5 |" in md, md
    assert "expand=0" not in md
    assert memory.expansion_cost(runs[3:]) == ""


tap.main(globals())
