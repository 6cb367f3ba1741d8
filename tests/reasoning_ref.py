"""tests/reasoning_ref.py — a solver for train/synth.py's reasoning problems, written from the
problem text alone (not from synth's own bookkeeping): the reference the reasoning tests
score against."""
import re


def solve(question):
    """The answer of a problem, from its text alone: a chain of assignments ("a = 5. b = a +
    3. ... What is b?") or a count of items given and taken."""
    text = re.sub(r"<\|im_(start|end)\|>(user|assistant)?", " ", question)
    text = text.replace("Problem:", " ")
    m = re.search(r"What is (\w+)\?", text)
    if m:
        env = {}
        for name, a, op, k in re.findall(r"(\w+) = (\w+)(?: ([+-]) (\d+))?\.", text):
            v = int(a) if a.isdigit() else env[a]
            env[name] = v + int(k) if op == "+" else v - int(k) if op == "-" else v
        return str(env[m.group(1)])
    who, n, _ = re.search(r"(\w+) has (\d+) (\w+)\.", text).groups()
    n = int(n)
    for sent in re.findall(r"[^.?]+[.?]", text):
        g = re.search(r"(\w+) gives (\w+) (\d+) more\.", sent)
        t = re.search(r"(\w+) gives (\d+) to (\w+)\.", sent)
        if g and g.group(2) == who:
            n += int(g.group(3))
        elif t and t.group(1) == who:
            n -= int(t.group(2))
    return str(n)
