"""Stage 2: sentence-anchored gist tokens (Tarasov et al. 2025) on top of the base model.

N_g gist ids are appended to the vocabulary (after the SentencePiece pieces) and inserted
after every closed sentence of the training text; attention follows the sentence mask
(model.sentence_mask: sinks, every earlier gist, and one's own sentence). Loss: next-token
cross-entropy on regular tokens only. Gist positions are never scored; the first token of
a sentence is predicted from the last gist of the group before it (as gistd scores text)
and, in training, from the sentence's own last token too (as gistd draws it while it
generates: inputs_targets).

With --unit thought the gists follow each thought instead (LightThinker: after a thought
closes, later tokens see its gists, not its text): thoughts are split where gistd's segmenter
closes them (data.thought_ends: paragraph breaks), and the mask is the same rule over the
segments the gist groups close (model.sentence_mask); the export records gistd.gist.mask
"thought". --problems F makes a share F of the batches reasoning problems the way a pipeline
runs them (ProblemSampler): the question pinned, each finished thought seen through its gists
only, so the gists must carry what the next thought needs (the value the step ended with).

Phase 1 (--frozen-minutes) trains only the new rows of token_embd and output (the base
is frozen); phase 2 (--minutes) fine-tunes everything at a lower rate, with a share
(--plain-frac) of the windows left without gists so the model stays a plain causal LM.

    nice -n 10 /usr/bin/python3 train/train_gist.py --tok train/runs/tok4096.model \
        --base train/runs/base/ckpt.pt --out train/runs/gist --frozen-minutes 6 --minutes 12
"""
import argparse
import copy
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402
import export  # noqa: E402
import mix  # noqa: E402
import model as M  # noqa: E402
import synth  # noqa: E402

IGNORE = -100


class GistSampler:
    """Windows [BOS] sentence gists sentence gists ... (the last sentence cut and unclosed),
    each starting at a random sentence of a random book."""

    def __init__(self, book_sentences, seq_len, bos, gist_first, n_gist, seed):
        self.books = [s for s in book_sentences if len(s) > 1]
        sizes = np.array([len(s) for s in self.books], dtype=np.float64)
        self.p = sizes / sizes.sum()
        self.seq, self.bos = seq_len, bos
        self.gists = np.arange(gist_first, gist_first + n_gist, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def window(self, sents, start, with_gists=True):
        """seq_len + 1 tokens built from sents[start:] (or None if the book runs out)."""
        parts, n = [np.array([self.bos])], 1
        i = start
        while n < self.seq + 1 and i < len(sents):
            parts.append(sents[i].astype(np.int64))
            n += len(sents[i])
            if with_gists and n < self.seq + 1:
                parts.append(self.gists)
                n += len(self.gists)
            i += 1
        if n < self.seq + 1:
            return None
        return np.concatenate(parts)[: self.seq + 1]

    def batch(self, batch_size, plain_frac=0.0):
        """[batch_size, seq_len + 1] windows; each is left without gists with probability
        plain_frac."""
        rows = []
        while len(rows) < batch_size:
            sents = self.books[self.rng.choice(len(self.books), p=self.p)]
            w = self.window(sents, int(self.rng.integers(0, len(sents))),
                            with_gists=self.rng.random() >= plain_frac)
            if w is not None:
                rows.append(w)
        return np.stack(rows)


class MixGistSampler:
    """GistSampler.batch over windows of the training mix (mix.MixSampler): each plain
    window is cut into sentences (or thoughts: split) and gisted as a book would be."""

    def __init__(self, mix_sampler, gist_sampler, texts, split=data.split_sentences):
        self.mix, self.gist, self.texts, self.split = mix_sampler, gist_sampler, texts, split

    def batch(self, batch_size, plain_frac=0.0):
        rows = []
        for _ in range(batch_size):
            w, _ = self.mix.window()
            sents = self.split(w[1:], self.texts)
            rows.append(self.gist.window(sents, 0,
                                         with_gists=self.gist.rng.random() >= plain_frac))
        return np.stack(rows)


class ProblemSampler:
    """Rows packed with reasoning problems (synth's reasoning kind), as a pipeline runs them
    through gistd: the question pinned (sinks), gists after each closed thought.

    A row is problems one after another, each [BOS] question thoughts "Answer: N", cut at
    seq_len + 1 tokens. The question's tokens stay in view of the problem's later text; every
    finished thought is seen through its gists only (model.packed_gist_mask), the rest of the
    one the question closes in too (a chat's question closes with the first thought: gistd
    keeps the pinned tokens of a span raw and gists the span whole, policy/learned.c).
    No target crosses from one problem into the next. evaluation=True draws held-out
    problems (synth's evaluation seed). filler (synth.Filler of the training books) opens
    the vocabulary for training: a share of the word problems' names are made up, as in the
    base's mix, so the thoughts learn to copy any name, not the training list's; evaluation
    draws the same problems with or without it.
    """

    def __init__(self, sp, seq_len, gist_first, n_gist, seed, evaluation=False, filler=None):
        self.sp, self.seq, self.bos = sp, seq_len, sp.bos_id()
        self.gf, self.ng = gist_first, n_gist
        self.texts = data.piece_texts(sp)
        self.ev, self.filler = evaluation, filler
        self.rng = synth.eval_rng(seed) if evaluation else synth.train_rng(seed + 0x7e)

    def problem(self, with_gists=True, steps=None):
        """(tokens, pinned, answer): answer is the slice of tokens its answer takes."""
        p = synth.reasoning(self.rng, self.filler, 0, self.ev, steps=steps)
        full = self.sp.EncodeAsIds(p.text)
        q = self.sp.EncodeAsIds(synth.reasoning_question(p))
        head = self.sp.EncodeAsIds(p.prompt)
        n_answer = len(self.sp.EncodeAsIds(p.prompt + p.answer)) - len(head)
        n_q = next((i for i, (a, b) in enumerate(zip(q, full)) if a != b), len(q))
        toks, pinned, at, start = [self.bos], [True], None, 0
        for seg in data.split_thoughts(np.asarray(full), self.texts):
            if at is None and start + len(seg) > len(head):
                at = len(toks) + len(head) - start
            toks += seg.tolist()
            pinned += [start + i < n_q for i in range(len(seg))]
            start += len(seg)
            if with_gists and start < len(full):
                toks += range(self.gf, self.gf + self.ng)
                pinned += [False] * self.ng
        return toks, pinned, slice(at, at + n_answer)

    def row(self, with_gists=True):
        """(tokens [seq_len + 1], document ids, pinned), numpy."""
        toks, doc, pin = [], [], []
        while len(toks) < self.seq + 1:
            t, p, _ = self.problem(with_gists)
            doc += [len(set(doc))] * len(t)
            toks += t
            pin += p
        n = self.seq + 1
        return (np.asarray(toks[:n], dtype=np.int64), np.asarray(doc[:n], dtype=np.int64),
                np.asarray(pin[:n], dtype=bool))


@torch.no_grad()
def problem_accuracy(model, sampler, n, with_gists=True):
    """(answers, thought ends) over n held-out problems (2 to 8 steps), under teacher forcing.
    answers: share of problems whose every answer token is the argmax; with gists, the answer
    is read through the gists of the thoughts before the question's (the last thought, the
    question again, holds no value). thought ends (with gists; None without): share of closed
    thoughts whose next token, the next step's or "Answer", is the argmax at the thought's
    last token, where gistd draws it (inputs_targets)."""
    model.eval()
    right, ends, ends_right = 0, 0, 0
    for i in range(n):
        t, pin, ans = sampler.problem(with_gists, steps=2 + i % 7)
        x = torch.tensor(t[:-1])[None]
        mask = M.packed_gist_mask(x, torch.zeros_like(x), torch.tensor(pin[:-1])[None],
                                  sampler.gf, sampler.ng)
        pred = model(x, mask=mask)[0].argmax(-1).numpy()
        right += bool((pred[ans.start - 1:ans.stop - 1] == np.asarray(t[ans])).all())
        w = np.asarray(t)[None]
        _x, y = inputs_targets(w, sampler.gf, sampler.ng, boundary=True)
        gist = (w[0] >= sampler.gf) & (w[0] < sampler.gf + sampler.ng)
        at = np.nonzero(~gist[:-1] & gist[1:] & (y[0] != IGNORE))[0]
        ends += len(at)
        ends_right += int((pred[at] == y[0, at]).sum())
    model.train()
    return right / n, (ends_right / ends if ends else None)


def problem_batch(sampler, batch_size, plain_frac):
    """(x, y, mask) from sampler's rows: targets that are gists or a next problem's BOS are
    IGNORE; a row is left without gists with probability plain_frac."""
    rows = [sampler.row(sampler.rng.random() >= plain_frac) for _ in range(batch_size)]
    w, doc, pin = (np.stack(c) for c in zip(*rows))
    x, y = inputs_targets(w, sampler.gf, sampler.ng, boundary=True)
    y[doc[:, 1:] != doc[:, :-1]] = IGNORE
    mask = M.packed_gist_mask(torch.from_numpy(x), torch.from_numpy(doc[:, :-1]),
                              torch.from_numpy(pin[:, :-1]), sampler.gf, sampler.ng)
    return x, y, mask


def inputs_targets(w, gist_first, n_gist, boundary=False):
    """(inputs [B, T], targets [B, T]) from windows [B, T + 1]: a target is the next token
    when it is a regular token, IGNORE when it is a gist, so the token after a gist group is
    predicted by the group's last gist, as gistd scores text (`gist-model perplexity` and
    `logits`: the logits follow the gists) and continues after a Compact. With boundary it
    is predicted by the segment's last token as well, as gistd draws it while it generates:
    a segment closes only once the token after it came, and that token was drawn from the
    logits of the segment's last token, its text still in view (policy.c, pol_next). A
    segment whose gists end the window adds no such target."""
    x = w[:, :-1].copy()
    y = w[:, 1:].copy()
    gist = (w >= gist_first) & (w < gist_first + n_gist)
    y[gist[:, 1:]] = IGNORE
    if boundary:  # a regular token followed by a gist group: the token after the group
        for b, i in zip(*np.nonzero(~gist[:, :-1] & gist[:, 1:])):
            j = i + 1
            while j < w.shape[1] and gist[b, j]:
                j += 1
            if j < w.shape[1]:
                y[b, i] = w[b, j]
    return x, y


def masked_loss(model, x, y, gist_first, n_gist, reduction="mean", mask=None):
    """Cross-entropy of the regular targets under mask (default: the sentence mask)."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if mask is None:
        mask = M.sentence_mask(xt, gist_first, n_gist)
    logits = model(xt, mask=mask)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yt.reshape(-1),
                           ignore_index=IGNORE, reduction=reduction), int((yt != IGNORE).sum())


def valid_windows(sents, seq, bos, gist_first, n_gist, max_windows=None):
    """Consecutive windows over the validation book: (gisted windows, the same windows with
    the gists removed). Both predict exactly the same regular tokens."""
    s = GistSampler([sents], seq, bos, gist_first, n_gist, 0)
    gisted, plain, i = [], [], 0
    while i < len(sents) and (max_windows is None or len(gisted) < max_windows):
        w = s.window(sents, i)
        if w is None:
            break
        gisted.append(w)
        # sentences used: count closed sentences (gist groups) in the window
        used = int(((w[:-1] >= gist_first) & (w[1:] < gist_first)).sum())
        pw = w[(w < gist_first) | (w >= gist_first + n_gist)]
        plain.append(pw)
        i += max(used, 1)
    return gisted, plain


@torch.no_grad()
def eval_gisted(model, gisted, gist_first, n_gist, batch=4):
    """(mean NLL, tokens scored) of the regular tokens, with gists and the sentence mask."""
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(gisted), batch):
        x, y = inputs_targets(np.stack(gisted[i : i + batch]), gist_first, n_gist)
        loss, k = masked_loss(model, x, y, gist_first, n_gist, "sum")
        tot, n = tot + float(loss), n + k
    model.train()
    return tot / n, n


@torch.no_grad()
def eval_plain(model, plain):
    """(mean NLL, tokens scored) of the same tokens without gists, causal attention."""
    model.eval()
    tot, n = 0.0, 0
    for pw in plain:
        logits = model(torch.from_numpy(pw[None, :-1]))
        tot += float(F.cross_entropy(logits[0], torch.from_numpy(pw[1:]), reduction="sum"))
        n += len(pw) - 1
    model.train()
    return tot / n, n


SPLIT = {"sentence": data.split_sentences, "thought": data.split_thoughts}


def book_sentences(tok_path, sp, paths, max_bytes, unit="sentence"):
    """Each book as a list of its sentences (or thoughts)."""
    texts = data.piece_texts(sp)
    return [SPLIT[unit](data.book_tokens(tok_path, p, max_bytes), texts) for p in paths]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--base", required=True,
                    help="the start: a checkpoint (.pt) or a model file (.gguf; its gist rows "
                         "carry on when it has --gists of them), gates dropped")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-bytes", type=int, default=None)
    ap.add_argument("--gists", type=int, default=2, help="N_g gist tokens per sentence")
    ap.add_argument("--unit", choices=sorted(SPLIT), default="sentence",
                    help="what a gist group closes: a sentence, or a thought (paragraph)")
    ap.add_argument("--frozen-minutes", type=float, default=5.0,
                    help="phase 1: only the gist rows learn")
    ap.add_argument("--frozen-lr", type=float, default=3e-3)
    ap.add_argument("--frozen-steps", type=int, default=None)
    ap.add_argument("--plain-frac", type=float, default=0.25,
                    help="phase 2: share of the windows left without gists")
    ap.add_argument("--eval-windows", type=int, default=8)
    mix.add_args(ap)
    ap.add_argument("--problems", type=float, default=0.0,
                    help="with --unit thought: share of batches packed with reasoning "
                         "problems, their question pinned (ProblemSampler)")
    common.add_budget_args(ap, minutes=10, lr=3e-4)
    a = ap.parse_args(argv)
    kinds = mix.checked_args(ap, a)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    sp = data.load_sp(a.tok)
    books, valid = data.split_books(a.corpus)
    train_s = book_sentences(a.tok, sp, books, a.max_bytes, a.unit)
    valid_s = book_sentences(a.tok, sp, [valid], a.max_bytes, a.unit)[0]

    ck1, ck2 = os.path.join(a.out, "phase1.pt"), os.path.join(a.out, "ckpt.pt")
    gist_first = sp.GetPieceSize()
    gist = {"count": a.gists, "first_token_id": gist_first, "sinks": 1, "mask": a.unit}
    vg, vp = valid_windows(valid_s, a.seq, sp.bos_id(), gist_first, a.gists, a.eval_windows)
    sampler = GistSampler(train_s, a.seq, sp.bos_id(), gist_first, a.gists, a.seed)
    # the texts: the mix's filler and the open vocabulary of the problems' names
    book_texts = [data.read_text(p, a.max_bytes) for p in books] \
        if a.mix > 0 or a.problems > 0 else None
    if a.mix > 0:
        sampler = MixGistSampler(
            mix.MixSampler(sp, [data.book_tokens(a.tok, p, a.max_bytes) for p in books],
                           book_texts, a.seq, a.seed, a.mix, kinds), sampler, data.piece_texts(sp),
            SPLIT[a.unit])

    if a.problems > 0 and a.unit != "thought":
        ap.error("--problems needs --unit thought")
    problems = None
    if a.problems > 0:
        problems = ProblemSampler(sp, a.seq, gist_first, a.gists, a.seed,
                                  filler=synth.Filler(book_texts))

    def eval_fn(m):
        (g, ng), (p, npl) = eval_gisted(m, vg, gist_first, a.gists), eval_plain(m, vp)
        assert ng == npl, "gisted and plain windows must score the same tokens"
        out = {"gist_nll": round(g, 4), "gist_ppl": round(math.exp(g), 3),
               "plain_nll": round(p, 4), "plain_ppl": round(math.exp(p), 3)}
        if problems is not None:  # the same held-out problems each time
            for k, gists in (("problems_gisted", True), ("problems_plain", False)):
                ev = ProblemSampler(sp, a.seq, gist_first, a.gists, 1, evaluation=True)
                acc, ends = problem_accuracy(m, ev, 28, gists)
                out[k] = round(acc, 3)
                if ends is not None:
                    out["thought_ends_gisted"] = round(ends, 3)
        return out

    def batch_loss(model, plain_frac):
        if problems is not None and problems.rng.random() < a.problems:
            x, y, mask = problem_batch(problems, a.batch, plain_frac)
            return masked_loss(model, x, y, gist_first, a.gists, mask=mask)
        x, y = inputs_targets(sampler.batch(a.batch, plain_frac), gist_first, a.gists,
                              boundary=True)
        return masked_loss(model, x, y, gist_first, a.gists)

    # ---- phase 1: new rows only --------------------------------------------------------
    if os.path.exists(ck2):
        model, d = M.load_checkpoint(ck2)
    else:
        if os.path.exists(ck1):
            model, d = M.load_checkpoint(ck1)
        else:
            model = export.load_start(a.base)
            base_nll = eval_plain(model, vp)[0]
            print(f"# base model, plain: nll {base_nll:.4f} ppl {math.exp(base_nll):.3f}",
                  flush=True)
            model.resize_vocab(gist_first + a.gists)
            d = {"step": 0, "elapsed": 0.0, "tokens": 0}
        for p in model.parameters():
            p.requires_grad_(False)
        emb, out = model.token_embd.weight, model.output.weight
        emb.requires_grad_(True)
        out.requires_grad_(True)
        keep = torch.zeros(model.c.n_vocab, 1)
        keep[gist_first:] = 1.0
        emb.register_hook(lambda g: g * keep)
        out.register_hook(lambda g: g * keep)
        opt = common.make_optimizer([emb, out], a.frozen_lr, weight_decay=0.0)
        if "opt" in d:
            opt.load_state_dict(d["opt"])

        def step1(step):
            return batch_loss(model, 0.0)

        a1 = copy.copy(a)
        a1.minutes, a1.lr, a1.max_steps, a1.end_utc = (a.frozen_minutes, a.frozen_lr,
                                                       a.frozen_steps, None)
        st = {k: d[k] for k in ("step", "elapsed", "tokens")}
        print("# phase 1: gist rows only", flush=True)
        common.train_loop(a1, model, opt, step1, lambda: eval_fn(model), ck1, st,
                          {"gist": gist})
        for p in model.parameters():
            p.requires_grad_(True)
        model, d = M.load_checkpoint(ck1)  # drops the hooks
        d = {"step": 0, "elapsed": 0.0, "tokens": 0}

    # ---- phase 2: everything -----------------------------------------------------------
    opt = common.make_optimizer(model.parameters(), a.lr)
    if "opt" in d:
        opt.load_state_dict(d["opt"])

    def step2(step):
        return batch_loss(model, a.plain_frac)

    st = {k: d[k] for k in ("step", "elapsed", "tokens")}
    print("# phase 2: all weights", flush=True)
    fig = common.train_loop(a, model, opt, step2, lambda: eval_fn(model), ck2, st,
                            {"gist": gist})
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump({**fig, "gist": gist}, f, indent=1)


if __name__ == "__main__":
    main()
