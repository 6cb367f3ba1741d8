"""The generated training and evaluation documents (train/synth.py, train/mix.py).

Answers are checked against independent solvers written here from the problem text
alone; held-out values against the training side; the ChatML renderer against Jinja's
rendering of the template the export writes.
"""
import os
import re
import sys

import tap

sys.path.insert(0, os.path.join(tap.ROOT, "train"))
try:
    import numpy as np  # noqa: F401
    import synth
except ImportError as ex:
    synth = None
    MISSING = str(ex)

FILLER_TEXT = " ".join(f"Sentence number {i} of the filler is here, and it goes on." for i in
                       range(400))


def need():
    if synth is None:
        raise tap.Skip(f"numpy absent ({MISSING})")
    return synth.Filler([FILLER_TEXT])


def probes(kind, n, evaluation, seed=7, chars=1500):
    f = need()
    rng = synth.eval_rng(seed) if evaluation else synth.train_rng(seed)
    return [synth.make(kind, rng, f, chars, evaluation) for _ in range(n)]


def stated_numbers(text):
    """{key: value} of a several-keys document's needles."""
    return dict(re.findall(r"for ([\w-]+) is: (\d+)\.", text))


def stated_values(text):
    """{key: value} of a several-keys document's needles, numbers or words."""
    return dict(re.findall(r"magic (?:numbers|words) for ([\w-]+) is: ([\w-]+)\.", text))


def marked_runs(marks):
    """The runs of consecutive True positions in a bool row, as index arrays."""
    idx = np.nonzero(marks)[0]
    return [r for r in np.split(idx, np.nonzero(np.diff(idx) != 1)[0] + 1) if len(r)]


def solve_chain(text):
    """Evaluates 'a = 5. b = a + 3. ... What is b?' from the text."""
    env = {}
    for name, expr in re.findall(r"(\w) = ([^.]+)\.", text):
        m = re.fullmatch(r"(\d+)|(\w) ([+-]) (\d+)", expr)
        assert m, expr
        if m.group(1):
            env[name] = int(m.group(1))
        else:
            v, k = env[m.group(2)], int(m.group(4))
            env[name] = v + k if m.group(3) == "+" else v - k
    return env[re.search(r"What is (\w)\?", text).group(1)]


def solve_story(text):
    """Counts one person's items through 'X has N', 'Y gives X k more', 'X gives k to Y'."""
    text = re.sub(r"Step \d+: ", "", text)
    who, n = re.match(r"(\w+) has (\d+) ", text).groups()
    n = int(n)
    for sent in text.split(". "):
        m = re.match(r"(\w+) gives (\w+) (\d+) more", sent)
        if m and m.group(2) == who:
            n += int(m.group(3))
        m = re.match(r"(\w+) gives (\d+) to (\w+)", sent)
        if m and m.group(1) == who:
            n -= int(m.group(2))
    return n


def test_reasoning_answers_match_an_independent_solver():
    for ev in (False, True):
        for p in probes("reasoning", 300, ev):
            q = p.meta["problem"]
            want = solve_chain(q) if " = " in q else solve_story(q)
            assert p.answer == f" {want}", (q, p.answer, want)
            assert p.prompt.endswith("Answer:"), p.prompt[-40:]
            # one thought per step, each its own paragraph (gistd's thought boundary), then
            # the question again
            assert len(p.meta["thoughts"]) == p.meta["steps"] + 1
            assert all(t in p.prompt.split(synth.THOUGHT) or t in p.prompt
                       for t in p.meta["thoughts"])
            # each thought starts with its step's line as the problem numbered it
            for i, t in enumerate(p.meta["thoughts"]):
                head = t[:t.index(".") + 1] if "?" not in t else t
                assert head.startswith(f"Step {i + 1}: ") and head in q, (head, q)


def test_arith_sums_are_right():
    for ev in (False, True):
        for p in probes("arith", 20, ev):
            sums = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)[.,]", p.text)
            assert len(sums) >= 3, p.text
            for a, op, k, r in sums:
                assert int(r) == (int(a) + int(k) if op == "+" else int(a) - int(k)) >= 0
                assert 1 <= int(k) <= 9 and int(a) < 100
            assert p.text.endswith(f"={p.answer}.\n") and p.values == [p.answer.strip()]


def test_instruction_sums_are_right_in_digits_and_words():
    """Instruction turns' sums, in digits and (training only) in words, are right."""
    need()
    words = {w: i for i, w in enumerate(synth.NUMBER_WORDS)}
    seen = {False: set(), True: set()}
    for ev in (False, True):
        rng = synth.eval_rng(3) if ev else synth.train_rng(3)
        for _ in range(400):
            q, a = synth.instruct_turn(rng, ev)
            m = re.fullmatch(r"What is (\w+) plus (\w+)\?", q)
            if not m:
                continue
            x, y = m.groups()
            if x.isdigit():
                assert a == f"{x} plus {y} is {int(x) + int(y)}.", (q, a)
                seen[ev].add("digits")
            else:
                total = synth.NUMBER_WORDS[words[x] + words[y]]
                assert a == f"{x.capitalize()} plus {y} is {total}.", (q, a)
                seen[ev].add("words")
    assert seen == {False: {"digits", "words"}, True: {"digits"}}, seen


def test_worked_sums_go_digit_by_digit():
    need()
    for a in range(100):
        for op in "+-":
            for k in range(1, 10):
                if op == "-" and k > a:
                    continue
                r = a + k if op == "+" else a - k
                w = synth.worked_sum(a, op, k)
                assert w.endswith(f"{a} {op} {k} = {r}"), w
                if a >= 10:
                    # the ones digit's fact first (with a borrow when it needs one), and the
                    # result's last digit is that fact's
                    m = re.fullmatch(r"(\d+) ([+-]) (\d) = (\d+), so .*", w)
                    assert m, w
                    u, d = int(m.group(1)), int(m.group(4))
                    assert u % 10 == a % 10 and u - k == d if op == "-" else u + k == d, w
                    assert u < 10 or (op == "-" and a % 10 < k), w
                    assert d % 10 == r % 10, w
                else:
                    assert w == f"{a} {op} {k} = {r}", w


def test_reasoning_steps_are_as_asked():
    f = need()
    rng = synth.eval_rng(3)
    for steps in range(2, 9):
        p = synth.make("reasoning", rng, f, 0, True, steps=steps)
        assert p.meta["steps"] == steps
        assert p.prompt.count(synth.THOUGHT) >= steps


def test_facts_are_stated_before_they_are_asked():
    for kind in ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "chat",
                 "repeat", "copy"):
        for ev in (False, True):
            for p in probes(kind, 60, ev):
                assert p.values, kind
                for v in p.values:
                    assert v in p.prompt, (kind, v)           # stated in the context
                assert synth.string_match_all(p.answer, p.values) == 1.0, (kind, p.answer)
                assert p.text.startswith(p.prompt) and p.completion.startswith(p.answer)


def test_multikey_asks_one_of_its_keys_with_distractors():
    for p in probes("niah_multikey", 50, True):
        keys = re.findall(r"special magic numbers for ([\w-]+) is", p.prompt)
        asked = re.search(r"number for ([\w-]+) mentioned", p.prompt).group(1)
        assert len(keys) == p.meta["keys"] >= 2 and asked in keys
        stated = stated_numbers(p.prompt)
        assert p.values == [stated[asked]]
        assert not p.later_answers and p.completion == p.answer + "\n"
    # training asks for every key once, the prompt's first; each later answer's offsets
    # hold the value stated for the key asked right before it
    # kv_recall: the same with 4 to 12 keys close together, half of them words
    for kind, lo, hi in (("niah_multikey", 2, 4), ("kv_recall", 4, 12)):
        sizes, forms = [], set()
        for p in probes(kind, 50, False, chars=6000):
            stated = stated_values(p.prompt)
            forms |= {v.isdigit() for v in stated.values()}
            asked = re.findall(r"The special magic (?:number|word) for ([\w-]+) mentioned",
                               p.text)
            assert sorted(asked) == sorted(stated) and asked[0] in p.prompt
            assert len(p.later_answers) == len(stated) - 1
            for (a, b), key in zip(p.later_answers, asked[1:]):
                assert p.text[:a].endswith(f"for {key} mentioned in the provided text is")
                assert p.text[a:b] == f" {stated[key]}."
            sizes.append(len(stated))
            if kind == "kv_recall":  # at most 360 characters of filler a needle
                needles = re.findall(r"One of the special magic \w+ for [^.]+\.", p.prompt)
                filler = len(p.prompt) - sum(len(x) + 1 for x in needles)
                assert filler <= len(stated) * 360 + 400, (filler, len(stated))
        assert min(sizes) == lo and max(sizes) == hi, (kind, sorted(set(sizes)))
        assert forms == ({True} if kind == "niah_multikey" else {True, False}), (kind, forms)


def test_chat_follows_the_template_and_asks_a_stated_fact():
    for p in probes("chat", 50, True, chars=4000):
        assert p.prompt.endswith(f"{synth.IM_START}assistant\n")
        turns = re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n", p.prompt, re.S)
        assert turns and turns[-1][0] == "user"
        roles = [r for r, _ in turns if r != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        first_user = [c for r, c in turns if r == "user"][0]
        assert p.values[0] in " ".join(c for r, c in turns if r == "user")
        assert p.completion.endswith(synth.IM_END + "\n")
        assert first_user  # facts come first
        assert not p.later_answers and p.completion == p.answer + synth.IM_END + "\n"
    # training goes on to ask for every other fact stated: each a user turn, then the
    # assistant's answer at the later answer's offsets, naming a value the user stated
    for p in probes("chat", 50, False, chars=4000):
        turns = re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n", p.text, re.S)
        n_asked = len(re.findall(r"<\|im_start\|>user\n", p.completion)) + 1
        assert n_asked == p.meta["facts"] and len(p.later_answers) == n_asked - 1
        said_by_user = " ".join(c for r, c in turns if r == "user")
        for a, b in p.later_answers:
            assert p.text[:a].endswith(f"{synth.IM_START}assistant\n")
            assert p.text[b:].startswith(synth.IM_END)
            assert any(w in said_by_user for w in re.findall(r"[\w-]{3,}", p.text[a:b])[-1:])


def test_heldout_values_never_train():
    """Every hidden value of an evaluation probe is on the held-out side of the split,
    and no training probe hides one of them."""
    shared_pools = set(synth.COLOURS + synth.FOODS + synth.PETS + synth.JOBS)
    kinds = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "chat", "repeat",
             "copy")
    seen = {ev: set() for ev in (False, True)}
    for ev in (False, True):
        for kind in kinds:
            for p in probes(kind, 150, ev, seed=11):
                for v in p.values:
                    if kind in ("repeat", "copy") and " " in v:
                        vs = v.split(" ") if all(w in synth.NOUNS + synth.FIRST_NAMES +
                                                 synth.PLACES or w.isdigit()
                                                 for w in v.split(" ")) else []
                    else:
                        vs = [v]
                    seen[ev].update(x for x in vs if x not in shared_pools)
    assert len(seen[True]) > 100 and len(seen[False]) > 500
    assert not (seen[True] & seen[False]), sorted(seen[True] & seen[False])[:5]
    assert all(synth.heldout(v) for v in seen[True])


class ClosedFiller(synth.Filler if synth else object):
    """A filler whose open vocabulary must never be asked for."""

    def words(self):
        raise AssertionError("evaluation drew from the open vocabulary")


def test_open_vocabulary_trains_only():
    """Training draws words, names and keys from outside evaluation's lists too (the books'
    words, made-up names), never a held-out one; evaluation never touches the open
    vocabulary, so its probes are those the lists alone give."""
    need()
    book = open(tap.shared("corpus/emma.txt"), encoding="utf-8").read()
    f = synth.Filler([book])
    assert len(f.words()) >= synth.OPEN_MIN_WORDS and f.words() == sorted(set(f.words()))
    words, names, keys = [], [], []
    rng = synth.train_rng(4)
    for _ in range(200):
        p = synth.make("niah_single", rng, f, 600)
        words += [v for v in p.values if not v.isdigit()]
        keys.append(re.search(r"magic \w+ for ([\w-]+) mentioned", p.prompt).group(1))
        c = synth.make("chat", rng, f, 600)
        names += [v for v in c.meta["stated"] if re.fullmatch(r"[A-Z][a-z]+", v)]
    for found, lists in ((words, synth.NOUNS), (names, synth.FIRST_NAMES + synth.PLACES)):
        outside = [v for v in found if v not in lists]
        assert 0.3 < len(outside) / len(found) < 0.7, (len(outside), len(found))
        assert not any(synth.heldout(v) for v in found)
    assert any(k.split("-")[0] not in synth.ADJECTIVES for k in keys)
    assert not any(synth.heldout(k) for k in keys)
    for kind in synth.KINDS:
        ra, rb = synth.eval_rng(9), synth.eval_rng(9)
        a = [synth.make(kind, ra, f, 900, True).text for _ in range(20)]
        b = [synth.make(kind, rb, ClosedFiller([book]), 900, True).text for _ in range(20)]
        assert a == b, kind


def test_evaluation_and_training_seeds_differ():
    a = synth.eval_rng(5).integers(0, 1 << 30, 8) if synth else need()
    b = synth.train_rng(5).integers(0, 1 << 30, 8)
    assert list(a) != list(b)


def test_string_match_all_scores():
    need()
    assert synth.string_match_all(" 4821.", ["4821"]) == 1.0
    assert synth.string_match_all("The key is 4812.", ["4821"]) == 0.0
    assert synth.string_match_all("1, 2, and 3", ["1", "3"]) == 1.0
    assert synth.string_match_all("1 and 2", ["1", "3"]) == 0.0
    assert synth.string_match_all("Your name is LENA.", ["Lena"]) == 1.0


def test_chat_template_renders_as_jinja_does():
    need()
    try:
        import jinja2
    except ImportError:
        raise tap.Skip("python3-jinja2 absent (make deps-train installs it)")
    msgs = [("system", "Be brief."), ("user", "My name is Ada."), ("assistant", "Noted."),
            ("user", "What is my name?")]
    t = jinja2.Environment().from_string(synth.CHAT_TEMPLATE)
    for gen in (False, True):
        want = t.render(messages=[{"role": r, "content": c} for r, c in msgs],
                        add_generation_prompt=gen)
        assert synth.render_chat(msgs, gen) == want, (synth.render_chat(msgs, gen), want)


def test_mix_windows():
    need()
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise tap.Skip("python3-sentencepiece absent")
    corpus = os.path.dirname(tap.shared("corpus/persuasion.txt"))
    d = tap.tmpdir()
    os.environ["GISTD_TRAIN_RUNS"] = os.path.join(d, "runs")
    import data
    import mix
    import tokenizer

    tok = tokenizer.train_tokenizer(corpus, os.path.join(d, "tok"), 400, max_bytes=30000)
    sp = data.load_sp(tok)
    books, _ = data.split_books(corpus)
    toks = [data.book_tokens(tok, p, 30000) for p in books]
    texts = [data.read_text(p, 30000) for p in books]
    s = mix.MixSampler(sp, toks, texts, 256, seed=3, synth_frac=1.0)
    x, y = s.batch(6)
    assert x.shape == (6, 256) and y.shape == (6, 256)
    assert (x[:, 0] == sp.bos_id()).all() and (x[:, 1:] == y[:, :-1]).all()
    text = " ".join(sp.DecodeIds([int(t) for t in row]) for row in x)
    assert any(k in text for k in ("pass key", "magic", "im_start", "Answer:", "list")), text
    # the gist stage's windows over the same mix: gists right after sentence ends
    import train_gist

    n_g, first = 2, sp.GetPieceSize()
    texts_ = data.piece_texts(sp)
    # a GistSampler only for its window(): the sentences come from the mix
    gs = train_gist.GistSampler([[np.array([5, 6]), np.array([7, 8])]], 256, sp.bos_id(),
                                first, n_g, 1)
    g = train_gist.MixGistSampler(s, gs, texts_)
    w = g.batch(3)
    assert w.shape == (3, 257) and (w[:, 0] == sp.bos_id()).all()
    for row in w:
        is_g = (row >= first) & (row < first + n_g)
        assert is_g.sum() >= 2 * n_g
        starts = [i for i in range(1, len(row)) if is_g[i] and not is_g[i - 1]]
        for i in starts:  # the token before a gist group closes a sentence
            assert texts_[row[i - 1]][-1:] in ".?!\n", repr(texts_[row[i - 1]])
    b = mix.MixSampler(sp, toks, texts, 256, seed=3, synth_frac=0.0)
    xb, _ = b.batch(4)
    tb = " ".join(sp.DecodeIds([int(t) for t in row]) for row in xb)
    assert "im_start" not in tb and "magic" not in tb
    # --kinds: only the kinds named are drawn
    k = mix.MixSampler(sp, toks, texts, 256, seed=3, synth_frac=1.0,
                       kinds=mix.parse_kinds("passkey=1"))
    tk = [sp.DecodeIds([int(t) for t in row]) for row in k.batch(4)[0]]
    assert all("pass key" in t for t in tk) and not any("im_start" in t for t in tk)
    # the answer marks: each marked run of targets is the key the document asked for, right
    # after its question; book windows mark nothing
    xa, ya, ma = k.batch_answers(4)
    assert ma.shape == ya.shape and ma.dtype == bool and ma.any()
    for row, marks in zip(ya, ma):
        for run in marked_runs(marks):
            said = sp.DecodeIds([int(t) for t in row[run]])
            before = sp.DecodeIds([int(t) for t in row[max(0, run[0] - 16):run[0]]])
            assert re.fullmatch(r"\s*\d+\.", said), (said, before)
            assert before.endswith("pass key is"), (said, before)
    assert not b.batch_answers(2)[2].any()
    # several keys: every key's answer is marked, each the value stated for the key asked
    m = mix.MixSampler(sp, toks, texts, 1024, seed=3, synth_frac=1.0,
                       kinds=mix.parse_kinds("niah_multikey=1"))
    n_runs = 0
    for row, marks in zip(*m.batch_answers(4)[1:]):
        text = sp.DecodeIds([int(t) for t in row])
        stated = stated_numbers(text)
        for run in marked_runs(marks):
            said = sp.DecodeIds([int(t) for t in row[run]]).strip()
            before = sp.DecodeIds([int(t) for t in row[max(0, run[0] - 64):run[0]]])
            key = re.search(r"number for ([\w-]+) mentioned in the provided text is$", before)
            assert key and said == stated[key.group(1)] + ".", (said, before)
            n_runs += 1
    assert n_runs >= 8, n_runs


def test_parse_kinds():
    import mix
    assert mix.parse_kinds("") is None
    assert mix.parse_kinds("passkey=3,repeat=0.5") == {"passkey": 3.0, "repeat": 0.5}
    for bad in ("pasky=1", "passkey", "passkey=0"):
        try:
            mix.parse_kinds(bad)
        except ValueError as e:
            assert "--kinds" in str(e)
        else:
            raise AssertionError(bad)


tap.main(globals())
