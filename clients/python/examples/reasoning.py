#!/usr/bin/python3
"""A reasoning loop against gistd that compacts each finished thought.

    clients/python/examples/reasoning.py [--endpoint tcp://127.0.0.1:5557] [--policy pool]
        [--problems 10] [--steps 4] [--budget SIZE] [--soft SIZE] [--no-compact] [--pin]

Poses held-out multi-step problems (train/synth.py's reasoning kind, evaluation seed) as
"Problem: ...", followed by a paragraph break, so the question is a thought of its own. The
model writes its thoughts one paragraph at a time with greedy decoding (gistc's
Session.think); after each, the client sends Compact{last_thought} and gistd pools that
thought into a few gist rows before the next one is written. With --pin the question is
pinned (the policy's sinks cover its tokens) and stays whole, as models/gistd-6m-thought.gguf
was trained: with gistd serving that file, `--pin --policy gist` replaces each finished
thought by the model's own thought gists. Prints each problem's answer against the
solver's, then the accuracy and the most bytes any session held. --soft sets each session's
soft watermark ("budget": the budget itself, as bench/reasoning.py runs it; a pipeline
decodes a token a step and needs no prefill room below its limit).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # gistc.py
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "train"))  # synth.py
import gistc  # noqa: E402
import synth  # noqa: E402


def problems(n, steps, seed=0):
    """n held-out problems of `steps` steps: (question, the solver's answer)."""
    for i in range(n):
        p = synth.reasoning(synth.eval_rng(seed + steps * 100003 + i), None, 0, True,
                            steps=steps)
        yield f"Problem: {p.meta['problem']}{synth.THOUGHT}", p.values[0]


def answer(text):
    """The number after the first "Answer:", or None."""
    at = text.find("Answer:")
    if at < 0:
        return None
    words = text[at + len("Answer:"):].split()
    return words[0].rstrip(".") if words else None


def question_tokens(client, question):
    """How many tokens the question takes in a session (its BOS included): a scratch
    session's transcript after appending it."""
    s = client.open_session(policy="full")
    try:
        s.append(question)
        return len(s.transcript()[1])
    finally:
        s.close(forget=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5557")
    ap.add_argument("--policy", default="pool")
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4, help="steps a problem (2 to 8)")
    ap.add_argument("--budget", default="0", help="each session's hard limit (0: gistd's)")
    ap.add_argument("--soft", default="0",
                    help="each session's soft watermark: a size, \"budget\" (the budget "
                         "itself), or 0 (gistd's: a prefill step's blocks below the budget)")
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--no-compact", action="store_true", help="leave finished thoughts be")
    ap.add_argument("--pin", action="store_true", help="pin the question (the policy's sinks)")
    a = ap.parse_args()
    right = peak = soft_bytes = 0
    with gistc.Client(a.endpoint, timeout=120) as c:
        for i, (question, expected) in enumerate(problems(a.problems, a.steps)):
            params = {}
            if a.pin:  # as bench/reasoning.py runs the policies
                params = {"sinks": question_tokens(c, question), "unit": "thought"}
            soft = a.budget if a.soft == "budget" else a.soft
            s = c.open_session(policy=a.policy, budget=a.budget, soft=soft, params=params)
            try:
                t = s.think(question, max_tokens=a.max_tokens, compact=not a.no_compact,
                            temp=0)
                info = s.info()
            finally:
                s.close()
            said = answer(t.text)
            right += said == expected
            peak = max(peak, info["peak_bytes"])
            soft_bytes = info.get("soft_bytes", 0)
            print(f"problem {i}: answered {said}, solver {expected}; {t.thoughts} thoughts, "
                  f"{len(t.events)} compactions, {t.tokens} tokens, peak {info['peak_bytes']} "
                  f"bytes", flush=True)
    print(f"accuracy: {right}/{a.problems}")
    print(f"peak bytes: {peak}")
    if soft_bytes:
        print(f"soft watermark: {soft_bytes} bytes")


if __name__ == "__main__":
    main()
