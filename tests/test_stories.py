"""tests/test_stories.py — a real trained model (../shared/models/stories260K-f32.gguf,
Karpathy's TinyStories 260K) through `gist-model generate` and `perplexity`, checked
against the numpy reference (tests/ref_llama.py) and for plain good sense. Skips when
the shared folder is absent."""
import math
import os
import re
import subprocess

import numpy as np

import tap
import ref_llama

GM = tap.tool("gist-model")
STORY = os.path.join(tap.ROOT, "tests", "data", "tinystory.txt")
PROMPT = "Once upon a time"

# Words a TinyStories model uses all the time; greedy text should be made of them.
COMMON = set("""a an the and but so then once upon time there was were is are be it its he she
they them their his her him i you we my your our this that one day named little girl boy big
small red blue green happy sad very loved love to play played playing with in on at of for
from up down out into over all saw see said went go going had has have wanted want could can
did do not no yes too friend friends mom dad park ball tree house toy toys dog cat bird fun
good nice new help helped find found look looked sun sky when what how who lily tom ben
timmy sue sam spot mia max about again some many like liked after together because thought
decided asked run ran jump jumped smiled laughed felt feel hug home room day time way each
other everyone would will just now back away around inside outside high long let s
mommy daddy""".split())


def model():
    return tap.shared("models/stories260K-f32.gguf")


def run(*args):
    p = subprocess.run([GM, *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, f"{args[0]} failed ({p.returncode}): {p.stderr.strip()}"
    return p.stdout


def tokenize(m, text):
    return [int(t) for t in run("tokenize", m, "--bos", "--text", text).split()]


def piece_text(vocab, ids):
    out = []
    for t in ids:
        s = vocab[t]
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", s)
        out.append(chr(int(m.group(1), 16)) if m else s.replace("\u2581", " "))
    return "".join(out)


def test_greedy_story():
    m = model()
    text = run("generate", m, "--prompt", PROMPT, "-n", 80, "--temp", 0)
    for line in text.splitlines():
        print("# " + line)
    assert text.startswith(PROMPT)
    assert all(c == "\n" or 32 <= ord(c) < 127 for c in text), "unexpected characters"
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
    assert len(words) >= 40, words
    known = sum(w in COMMON for w in words) / len(words)
    assert known >= 0.85, f"only {known:.0%} common story words: {text!r}"
    assert len({"little", "girl", "boy", "day", "play", "happy", "named"} & set(words)) >= 3

    # the same continuation as the numpy reference's greedy decoding (first 30 tokens)
    ref = ref_llama.RefModel(m)
    ids = tokenize(m, PROMPT)
    prompt_len = len(ids)
    for _ in range(30):
        ids.append(int(np.argmax(ref.forward(ids)[-1])))
    want = PROMPT + piece_text(ref.meta["tokenizer.ggml.tokens"], ids[prompt_len:])
    assert text.startswith(want), f"engine: {text[:len(want)]!r}\nnumpy:  {want!r}"


def test_sampling_is_seeded():
    m = model()
    args = ["generate", m, "--prompt", PROMPT, "-n", 40, "--temp", 1.0, "--top-k", 0,
            "--top-p", 1.0, "--min-p", 0]
    a = run(*args, "--seed", 7)
    b = run(*args, "--seed", 7)
    c = run(*args, "--seed", 8)
    assert a == b
    assert a != c  # 40 draws at temperature 1 from different seeds
    # top-k 1 is greedy whatever the temperature and seed
    greedy = run("generate", m, "--prompt", PROMPT, "-n", 25, "--temp", 0)
    topk1 = run("generate", m, "--prompt", PROMPT, "-n", 25, "--temp", 1.5, "--top-k", 1,
                "--seed", 3)
    assert greedy == topk1


def test_perplexity_tinystory():
    """The model card gives ~2.8 on TinyStories-like text; this hand-written story measures
    ~3.3. A bound of 4.5 still fails on any real breakage (Austen gives ~40 with this model,
    random weights give hundreds), and the figure must equal the numpy reference's."""
    m = model()
    out = run("perplexity", m, "--file", STORY).strip().splitlines()
    assert out[-1].startswith("ppl: "), out
    ppl = float(out[-1].split()[1])
    n_scored = int(next(line for line in out if line.startswith("tokens: ")).split()[1])
    print(f"# perplexity {ppl:.4f} over {n_scored} tokens")
    assert 1.5 < ppl < 4.5, ppl

    # numpy over the same windows: 512 tokens (the model's context), each window starting
    # at the previous window's last token
    ids = tokenize(m, open(STORY).read())
    assert n_scored == len(ids) - 1
    ref = ref_llama.RefModel(m)
    ctx, nll, start = 512, 0.0, 0
    while start + 1 < len(ids):
        win = ids[start:start + ctx]
        lg = ref.forward(win)
        mx = lg.max(axis=1, keepdims=True)
        lse = (np.log(np.exp(lg - mx).sum(axis=1)) + mx[:, 0])[:-1]
        nll += float((lse - lg[np.arange(len(win) - 1), win[1:]]).sum())
        start += ctx - 1
    ref_ppl = math.exp(nll / (len(ids) - 1))
    assert abs(ppl - ref_ppl) < 1e-3 * ref_ppl, (ppl, ref_ppl)

    # shorter windows see less context: a little worse, same ballpark
    short = float(run("perplexity", m, "--file", STORY, "--ctx", 64).split()[-1])
    assert ppl < short < 2 * ppl, (ppl, short)


tap.main(globals())
