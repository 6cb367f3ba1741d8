"""The training mix: book windows and windows packed with generated documents (synth.py).

A window is [BOS] + seq_len tokens (the last one only a target). With probability
1 - synth_frac it is a slice of one training book (as data.TokenSampler draws them);
otherwise it is packed with generated documents: the first is sized to a random share of
the whole window (so facts stand at every depth up to the full context), the next ones
fill what is left, separated by a paragraph break, and the tail is book text. Every stage
(base, gist tokens, gates) draws from the same mix.

probe_accuracy() scores held-out probes in PyTorch under teacher forcing (every answer
token the argmax), a quick check while training; bench/memory.py scores the exported file
through gist-model with greedy decoding.
"""
import numpy as np
import torch

import data
import synth

CHARS_PER_TOKEN = 3.2  # a first guess for sizing documents; the encoder has the last word


class MixSampler:
    def __init__(self, sp, books, filler_texts, seq_len, seed, synth_frac=0.5, kinds=None):
        """books: token arrays of the training books; filler_texts: their texts (haystack).
        kinds: {kind: weight}, default synth.WEIGHTS."""
        self.sp, self.seq, self.bos = sp, seq_len, sp.bos_id()
        self.books = data.TokenSampler(books, seq_len, self.bos, seed)
        self.filler = synth.Filler(filler_texts)
        kinds = kinds or synth.WEIGHTS
        self.kinds = list(kinds)
        w = np.array([kinds[k] for k in self.kinds], dtype=np.float64)
        self.kp = w / w.sum()
        self.frac = synth_frac
        self.rng = synth.train_rng(seed)
        self.sep = sp.EncodeAsIds("\n\n")[-2:]

    def document(self, room):
        """One generated document of at most `room` tokens: (its token ids, the slices of
        them that are its answers), or None."""
        kind = self.kinds[self.rng.choice(len(self.kinds), p=self.kp)]
        n = room
        for _ in range(4):
            chars = int(n * CHARS_PER_TOKEN)
            p = synth.make(kind, self.rng, self.filler, max(chars - 400, 0))
            ids = self.sp.EncodeAsIds(p.text)
            if len(ids) <= room:
                return ids, self.answer_spans(p, ids)
            n = int(n * room / len(ids) * 0.9)
        return None

    def answer_spans(self, p, ids):
        """The slices of ids (p.text's tokens) that say p.answer and p.later_answers: each from
        the first token where they part from the tokens of the text before it to where the
        tokens of the text up to its end end."""
        spans = []
        for a, b in [(len(p.prompt), len(p.prompt) + len(p.answer))] + p.later_answers:
            head = self.sp.EncodeAsIds(p.text[:a])
            start = 0
            while start < min(len(head), len(ids)) and head[start] == ids[start]:
                start += 1
            end = len(self.sp.EncodeAsIds(p.text[:b]))
            spans.append(slice(start, max(start, min(end, len(ids)))))
        return spans

    def window(self):
        """(int64 [seq_len + 1]: BOS then tokens, bool [seq_len + 1]: the tokens that are a
        generated document's answer)."""
        if self.rng.random() >= self.frac:
            x, y = self.books.batch(1)
            w = np.concatenate([x[0], y[0, -1:]])
            return w, np.zeros(len(w), dtype=bool)
        out = [self.bos]
        answers = []
        room = self.seq
        # the first document: a random share of the window, at least a quarter of it
        first = int(room * (0.25 + 0.75 * self.rng.random()))
        while room > 48:
            doc = self.document(first if len(out) == 1 else room)
            if doc is None:
                break
            ids, spans = doc
            answers += [slice(len(out) + a.start, len(out) + a.stop) for a in spans]
            out += ids
            room = self.seq - (len(out) - 1)
            if room > len(self.sep) + 48:
                out += self.sep
                room -= len(self.sep)
            first = room
        if room > 0:
            x, y = self.books.batch(1)
            out += list(np.concatenate([x[0, 1:], y[0, -1:]])[:room])
        w = np.asarray(out[:self.seq + 1], dtype=np.int64)
        is_answer = np.zeros(len(w), dtype=bool)
        for a in answers:
            is_answer[a] = True
        return w, is_answer

    def batch(self, batch_size):
        """(inputs, targets) int64 [batch, seq_len], like data.TokenSampler.batch."""
        x, y, _ = self.batch_answers(batch_size)
        return x, y

    def batch_answers(self, batch_size):
        """(inputs, targets, answer_targets): the batch, and bool [batch, seq_len] marking the
        targets that are a generated document's answer (the tokens recall is scored on)."""
        ws, ms = zip(*(self.window() for _ in range(batch_size)))
        w, m = np.stack(ws), np.stack(ms)
        return w[:, :-1], w[:, 1:], m[:, 1:]


def add_args(ap):
    """The mix's arguments, as every stage that trains on it takes them: --mix, --kinds and
    --open (check them with checked_args)."""
    ap.add_argument("--mix", type=float, default=0.0,
                    help="share of windows packed with generated documents (mix.py)")
    ap.add_argument("--kinds", default="",
                    help="the generated documents' shares, KIND=W,... (default: synth.WEIGHTS)")
    ap.add_argument("--open", type=float, default=None,
                    help="with --mix: the share of training's word values, names, places and "
                         "keys drawn from outside the lists evaluation draws from (synth.OPEN, "
                         "0.5 by default); the held-out probes do not change")


def checked_args(ap, a):
    """The {kind: weight} of a's --kinds (None: synth.WEIGHTS), after refusing, through
    ap.error, an --open without --mix or out of [0, 1], and setting synth.OPEN to it."""
    if a.open is not None and not (a.mix > 0 and 0.0 <= a.open <= 1.0):
        ap.error("--open needs --mix and a share from 0 to 1")
    try:
        kinds = parse_kinds(a.kinds)
    except ValueError as e:
        ap.error(str(e))
    if a.open is not None:
        synth.OPEN = a.open
        print(f"# open vocabulary share {a.open}", flush=True)
    return kinds


def parse_kinds(spec):
    """{kind: weight} from "passkey=3,repeat=2" (kinds left out weigh 0), or None for the
    default shares (synth.WEIGHTS) when spec is empty."""
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        kind, _, w = item.partition("=")
        if kind not in synth.KINDS or not w:
            raise ValueError(f"--kinds: '{item}' is not KIND=WEIGHT with KIND one of "
                             f"{', '.join(synth.KINDS)}")
        out[kind] = float(w)
    if sum(out.values()) <= 0:
        raise ValueError("--kinds: the weights add up to nothing")
    return out


def heldout_probes(n_per_kind, filler_text, seq_len, seed=1, kinds=None):
    """Evaluation probes: held-out values, held-out filler, depths over the whole window."""
    rng = synth.eval_rng(seed)
    filler = synth.Filler([filler_text])
    out = []
    for kind in kinds or synth.KINDS:
        for i in range(n_per_kind):
            frac = (i + 0.5) / n_per_kind
            out.append(synth.make(kind, rng, filler,
                                  int(frac * (seq_len - 200) * CHARS_PER_TOKEN * 0.9), True))
    return out


@torch.no_grad()
def probe_accuracy(model, sp, probes, max_len, per_token=False):
    """{kind: share of probes whose every answer token is the argmax} (teacher forcing);
    per_token: {kind: (that share, share of answer tokens that are the argmax)}."""
    model.eval()
    hits = {}
    for p in probes:
        pre = [sp.bos_id()] + sp.EncodeAsIds(p.prompt)
        full = [sp.bos_id()] + sp.EncodeAsIds(p.prompt + p.answer)
        if full[:len(pre)] != pre or len(full) > max_len:
            continue
        x = torch.tensor(full[:-1])[None]
        pred = model(x)[0].argmax(-1)
        right = pred[len(pre) - 1:] == torch.tensor(full[len(pre):])
        hits.setdefault(p.kind, []).append((bool(right.all()), float(right.float().mean())))
    model.train()
    return {k: (round(sum(a for a, _ in v) / len(v), 3), round(sum(b for _, b in v) / len(v), 3))
            if per_token else round(sum(a for a, _ in v) / len(v), 3) for k, v in hits.items()}
