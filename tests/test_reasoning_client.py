"""The reasoning client against a real gistd: Compact{last_thought} after each thought takes
exactly that thought, and clients/python/examples/reasoning.py runs its loop end to end.

A real gistd on loopback serves the committed model. A question and its worked thoughts are
appended one thought at a time, each followed by Compact{last_thought}: each request must
pool exactly the positions the thought was stored at (counted from the session's own
transcript), free bytes, and leave the transcript's text whole. The example then runs its
loop (gistc's Session.think) on held-out problems; its answers are checked against a solver
written from the problem text, and its figures against each other.
"""
import os
import re
import subprocess
import sys

import tap
from reasoning_ref import solve

sys.path.insert(0, os.path.join(tap.ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(tap.BUILD, "gen", "python"))
sys.path.insert(0, os.path.join(tap.ROOT, "train"))
MODEL = os.path.join(tap.ROOT, "models", "gistd-6m.gguf")
EXAMPLE = os.path.join(tap.ROOT, "clients", "python", "examples", "reasoning.py")


def need():
    if not os.path.exists(tap.tool("gistd")):
        raise tap.Skip("gistd not built")
    if not os.path.exists(MODEL):
        raise tap.Skip("models/gistd-6m.gguf absent")
    try:
        import numpy  # noqa: F401
        import zmq  # noqa: F401
    except ImportError as ex:
        raise tap.Missing(f"a package is absent: {ex}")
    import gistc
    return gistc


def daemon(gistc):
    return gistc.Daemon(tap.tool("gistd"), MODEL, "--block-rows", "8", "--threads", "1")


def test_compact_takes_each_finished_thought():
    gistc = need()
    import synth

    p = synth.reasoning(synth.eval_rng(77), None, 0, True, steps=5)
    question = f"Problem: {p.meta['problem']}\n\n"
    thoughts = [t + "\n\n" for t in p.meta["thoughts"]]
    with daemon(gistc) as d, gistc.Client(d.endpoint) as c:
        s = c.open_session(policy="pool", params={"unit": "thought"})
        s.append(question)
        n = s.info()["tokens"]
        for t in thoughts:
            s.append(t)
            after = s.info()
            evs = s.compact(last_thought=True)
            assert len(evs) == 1, evs
            e = evs[0]
            assert (e.action, e.method, e.reason) == ("gist", "pooled", "request"), e
            assert (e.first, e.last) == (n, after["tokens"] - 1), (e, n, after["tokens"])
            assert e.tokens == after["tokens"] - n
            assert e.bytes_freed > 0 and e.session_bytes < e.session_bytes_before
            assert s.info()["bytes"] == e.session_bytes
            n = after["tokens"]
        # nothing finished since the last compaction: the same thought is not taken twice
        evs = s.compact(last_thought=True)
        assert all(e.first >= n - len(thoughts[-1]) for e in evs)
        # (each append's text starts a fresh tokenization: the vocabulary's leading space)
        text, _ = s.transcript()
        assert " ".join(text.split()).endswith(" ".join((question + "".join(thoughts))
                                                        .split())), text[-200:]


def test_compact_keeps_the_next_tokens_prediction():
    """A Compact request leaves the session's prediction of the next token as its last token
    made it, as when gistd closes a thought on its own: the next text's first token reads the
    same log-prob as in a session that did not compact, while the compacted rows did go (the
    learned gists ran, bytes fell) and the later tokens read them. Two cases: the last thought
    under thought gists, and a span reaching the open sentence under sentence gists."""
    gistc = need()
    import synth

    thought_model = os.path.join(tap.ROOT, "models", "gistd-6m-thought.gguf")
    if not os.path.exists(thought_model):
        raise tap.Skip("models/gistd-6m-thought.gguf absent")
    p = synth.reasoning(synth.eval_rng(78), None, 0, True, steps=3)
    question = f"Problem: {p.meta['problem']}\n\n"
    story = ("Anne walked to the harbour in the morning. The boats were coming in with the tide, "
             "and the men were calling across the water. Then she turned and walked back up "
             "the hill to the house, where her")
    cases = [(thought_model, {"unit": "thought"}, question + p.meta["thoughts"][0] + "\n\n",
              p.meta["thoughts"][1], lambda s: s.compact(last_thought=True)),
             (MODEL, {}, story, " father was waiting at the door.",
              lambda s: s.compact(0, s.info()["tokens"] - 5))]
    for model, params, text, then, compact in cases:
        with gistc.Daemon(tap.tool("gistd"), model, "--block-rows", "8", "--threads", "1") as d, \
                gistc.Client(d.endpoint) as c:
            read = {}
            for compacted in (False, True):
                s = c.open_session(policy="gist", params=params)
                s.append(text)
                if compacted:
                    before = s.info()["bytes"]
                    evs = compact(s)
                    assert ("gist", "learned") in [(e.action, e.method) for e in evs], evs
                    assert s.info()["bytes"] < before
                read[compacted] = s.score(text=then)
                s.close()
        (toks, plain), (toks2, after) = read[False], read[True]
        assert toks == toks2 and len(plain) > 3
        assert after[0] == plain[0], (model, after[0], plain[0])
        # the later tokens read the gists, not the compacted text: their log-probs moved
        assert after[1:] != plain[1:], model


def run_example(endpoint, *args):
    p = subprocess.run(["/usr/bin/python3", EXAMPLE, "--endpoint", endpoint, *args],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_example_reasoning_loop():
    gistc = need()
    sys.path.insert(0, os.path.dirname(EXAMPLE))
    import reasoning as example

    with daemon(gistc) as d:
        runs = {}
        for mode in ("compact", "keep"):
            args = ["--problems", "3", "--steps", "3", "--max-tokens", "90"]
            out = run_example(d.endpoint, *args, *(["--no-compact"] if mode == "keep" else []))
            lines = re.findall(r"problem (\d+): answered (\S+), solver (\S+); (\d+) thoughts, "
                               r"(\d+) compactions, (\d+) tokens, peak (\d+) bytes", out)
            assert len(lines) == 3, out
            qs = list(example.problems(3, 3))
            right = 0
            for (i, said, solver, thoughts, comps, tokens, peak), (q, want) in zip(lines, qs):
                assert solver == want == solve(q), (q, solver, want)
                right += said == solver
                assert 0 < int(tokens) <= 90 + 16
                if mode == "compact":  # every finished thought, compacted once
                    assert int(comps) == int(thoughts), out
                else:
                    assert int(comps) == 0, out
            assert f"accuracy: {right}/3" in out, out
            peaks = [int(x[6]) for x in lines]
            assert f"peak bytes: {max(peaks)}" in out, out
            runs[mode] = (lines, peaks)
        # the same greedy text both ways would not be guaranteed; the bytes held are: when
        # thoughts were compacted, no session held more than its uncompacted twin
        for a, b in zip(runs["compact"][0], runs["keep"][0]):
            if int(a[3]) > 0 and a[5] == b[5]:
                assert int(a[6]) <= int(b[6]), (a, b)
        # a budget: the soft watermark is gistd's room below it, or the budget itself
        budget = 4 << 20
        for soft, want in (("0", None), ("budget", budget), ("3M", 3 << 20)):
            out = run_example(d.endpoint, "--problems", "1", "--steps", "2", "--max-tokens",
                              "60", "--budget", str(budget), "--soft", soft)
            got = int(re.search(r"soft watermark: (\d+) bytes", out).group(1))
            assert got == want if want else 0 < got < budget, (soft, got, out)
            assert int(re.search(r"peak bytes: (\d+)", out).group(1)) <= budget, out


tap.main(globals())
