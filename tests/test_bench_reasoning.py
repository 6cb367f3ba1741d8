"""bench/reasoning.py: its --quick form end to end on the committed model, and its scorer.

The quick run goes through `gist-model generate` (the session loop) and a real gistd (a
client compacting each finished thought, and automatic thought boundaries). The test checks
the tables are whole (every path, step count and configuration), that each score is the
greedy answer compared with the answer of a solver written here from the problem text (not
synth's own), that budgets are what the bench says they are and no run held more, and that
the summary and the markdown agree with the runs.
"""
import csv
import os
import re
import subprocess
import sys

import tap
from reasoning_ref import solve

sys.path.insert(0, os.path.join(tap.ROOT, "bench"))
sys.path.insert(0, os.path.join(tap.ROOT, "train"))
MODEL = os.path.join(tap.ROOT, "models", "gistd-6m.gguf")


def need():
    for t in ("gist-model", "gistd"):
        if not os.path.exists(tap.tool(t)):
            raise tap.Skip(f"{t} not built")
    if not os.path.exists(MODEL):
        raise tap.Skip("models/gistd-6m.gguf absent")
    try:
        import numpy  # noqa: F401
        import zmq  # noqa: F401
    except ImportError as ex:
        raise tap.Missing(f"a package is absent: {ex}")


def test_problems_and_scorer():
    need()
    import reasoning

    kinds = set()
    for steps in range(2, 9):
        for i in range(6):
            q, expected, trace = reasoning.problem(steps, i)
            assert solve(q) == expected, (q, expected)
            kinds.add("chain" if "What is" in q else "words")
            # the worked trace: one thought per step, the question again, then the answer
            assert trace.count("\n\n") == steps + 1, trace
            assert reasoning.answer_of(trace) == expected
            assert reasoning.answer_end(trace + "\nProblem: more") == len(trace) + 1
            wrong = str(int(expected) + 1)
            assert reasoning.score(trace.replace(f"Answer: {expected}", f"Answer: {wrong}"),
                                   expected)[0] == "0"
    assert kinds == {"chain", "words"}
    assert reasoning.answer_of("no answer here") is None
    assert reasoning.score("x\n\nAnswer: 12\nAnswer: 13", "12") == ("1", "12")


def test_quick_run_writes_whole_tables():
    need()
    out = tap.tmpdir()
    p = subprocess.run(["/usr/bin/python3", os.path.join(tap.ROOT, "bench", "reasoning.py"),
                        "--quick", "--model", MODEL, "--out", out],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    import reasoning

    with open(os.path.join(out, "reasoning_runs.csv")) as f:
        runs = list(csv.DictReader(f))
    want = {("gist-model", "full", "")}
    for path in ("gist-model", "gistd-compact", "gistd-auto"):
        want |= {(path, pol, "25") for pol in ("pool", "window")}
    for steps in ("2", "4"):
        got = {(r["path"], r["policy"], r["budget_pct"]) for r in runs if r["steps"] == steps}
        assert got == want, (steps, got ^ want)
    for r in runs:
        assert r["error"] == "", r
        q, expected, _ = reasoning.problem(int(r["steps"]), int(r["probe"]))
        assert r["expected"] == solve(q) == expected, r
        # the score is the greedy answer compared with the solver's
        a = reasoning.answer_of(r["said"])
        assert r["answer"] == (a or ""), r
        assert r["score"] == ("1" if a == expected else "0"), r
        assert int(r["peak_bytes"]) > 0 and int(r["tokens"]) > 0, r
        if r["budget_pct"]:
            q_b, full_b = int(r["question_bytes"]), int(r["full_bytes"])
            assert 0 < q_b < full_b, r
            assert int(r["budget_bytes"]) == int(q_b + 0.25 * (full_b - q_b)), r
            assert int(r["peak_bytes"]) <= int(r["budget_bytes"]), r
        else:
            assert int(r["peak_bytes"]) >= int(r["full_bytes"]), r
    with open(os.path.join(out, "reasoning.csv")) as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 * len(want)
    for s in summary:
        mine = [r for r in runs if (r["path"], r["steps"], r["policy"], r["budget_pct"])
                == (s["path"], s["steps"], s["policy"], s["budget_pct"])]
        scores = [float(r["score"]) for r in mine]
        assert abs(float(s["accuracy"]) - sum(scores) / len(scores)) < 1e-9
        assert int(s["peak_bytes"]) == max(int(r["peak_bytes"]) for r in mine)
    md = open(os.path.join(out, "reasoning.md")).read()
    for path in ("gist-model", "gistd-compact", "gistd-auto"):
        assert f"## gistd-6m.gguf, {path} (1 problems per cell)" in md
    rows = [x for x in md.splitlines() if x.startswith("| ") and not x.startswith("| policy")]
    assert len(rows) == len(want)
    for x in rows:  # every cell filled: two step counts, peak bytes, tokens/s
        cells = [c.strip() for c in x.strip("|").split("|")]
        assert len(cells) == 6 and all(cells), x
        assert all(re.fullmatch(r"[01]\.\d{3}", c) for c in cells[2:4]), x


tap.main(globals())
