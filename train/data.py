"""Corpus, tokenizer and batches shared by every training stage.

The corpus is the folder of public-domain books described in ../shared/corpus/README.md.
persuasion.txt is the held-out validation book: it never reaches the tokenizer trainer
nor any training batch. Token ids are cached per book under train/runs/tokens/ so that
each stage (and a resumed run) starts at once.
"""
import hashlib
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CORPUS = os.path.join(REPO, "..", "shared", "corpus")
RUNS = os.environ.get("GISTD_TRAIN_RUNS", os.path.join(HERE, "runs"))
VALID_BOOK = "persuasion.txt"


def book_paths(corpus_dir):
    """The .txt books of the corpus, sorted by name (README.md excluded)."""
    names = sorted(n for n in os.listdir(corpus_dir) if n.endswith(".txt"))
    if not names:
        raise SystemExit(f"no .txt books in {corpus_dir}")
    return [os.path.join(corpus_dir, n) for n in names]


def split_books(corpus_dir):
    """(training books, validation book) paths: persuasion.txt is held out."""
    paths = book_paths(corpus_dir)
    train = [p for p in paths if os.path.basename(p) != VALID_BOOK]
    valid = [p for p in paths if os.path.basename(p) == VALID_BOOK]
    if not valid:
        raise SystemExit(f"{VALID_BOOK} (the validation book) is missing from {corpus_dir}")
    return train, valid[0]


def read_text(path, max_bytes=None):
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    if max_bytes is not None:
        text = text[:max_bytes]
    return text


def load_sp(model_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    if not sp.Load(model_path):
        raise SystemExit(f"cannot load tokenizer {model_path}")
    return sp


def encode_text(sp, text):
    """Token ids of a whole text, as the C tokenizer encodes one string: one dummy space
    prefix at the start, whitespace and newlines kept as they are (no BOS)."""
    return sp.EncodeAsIds(text)


def _file_digest(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:12]


def book_tokens(sp_model, path, max_bytes=None, cache=True):
    """np.uint16 token ids of a book, cached under train/runs/tokens/ keyed by the
    tokenizer file and the book contents."""
    sp = load_sp(sp_model)
    if sp.GetPieceSize() > 65535:
        raise SystemExit("vocabulary too large for uint16 token caches")
    key = f"{_file_digest(sp_model)}-{_file_digest(path)}-{max_bytes or 0}"
    cpath = os.path.join(RUNS, "tokens", f"{os.path.basename(path)}.{key}.npy")
    if cache and os.path.exists(cpath):
        return np.load(cpath)
    ids = np.asarray(encode_text(sp, read_text(path, max_bytes)), dtype=np.uint16)
    if cache:
        os.makedirs(os.path.dirname(cpath), exist_ok=True)
        tmp = cpath + ".tmp.npy"
        np.save(tmp, ids)
        os.replace(tmp, cpath)
    return ids


class TokenSampler:
    """Random training windows: [BOS] + (seq_len - 1) consecutive tokens of one book, the
    book chosen in proportion to its length."""

    def __init__(self, books, seq_len, bos_id, seed):
        self.books = [b for b in books if len(b) > seq_len]
        if not self.books:
            raise SystemExit("no book is longer than one training window")
        sizes = np.array([len(b) - seq_len for b in self.books], dtype=np.float64)
        self.p = sizes / sizes.sum()
        self.seq_len = seq_len
        self.bos = bos_id
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size):
        """(inputs, targets) int64 arrays [batch, seq_len]; targets are inputs shifted."""
        x = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        for r in range(batch_size):
            b = self.books[self.rng.choice(len(self.books), p=self.p)]
            o = int(self.rng.integers(0, len(b) - self.seq_len))
            x[r, 0] = self.bos
            x[r, 1:] = b[o : o + self.seq_len]
        return x[:, :-1], x[:, 1:]


def eval_windows(tokens, seq_len, bos_id, max_windows=None):
    """Non-overlapping evaluation windows over a token stream: each is [BOS] + seq_len - 1
    tokens; returns (inputs, targets) arrays, targets = the next token of each input."""
    n = seq_len - 1
    count = (len(tokens) - 1) // n
    if max_windows is not None:
        count = min(count, max_windows)
    xs, ys = [], []
    for w in range(count):
        chunk = tokens[w * n : w * n + n + 1].astype(np.int64)
        xs.append(np.concatenate([[bos_id], chunk[:-1]]))
        ys.append(chunk)
    return np.stack(xs), np.stack(ys)


# ---- sentences ---------------------------------------------------------------------

def piece_texts(sp):
    """Surface text of every piece (▁ as a space, byte pieces as their character)."""
    out = []
    for i in range(sp.GetPieceSize()):
        p = sp.IdToPiece(i)
        if sp.IsByte(i):
            out.append(chr(int(p[3:5], 16)) if int(p[3:5], 16) < 128 else "\x80")
        elif sp.IsControl(i) or sp.IsUnknown(i):
            out.append("")
        else:
            out.append(p.replace("\u2581", " "))
    return out


def sentence_ends(tokens, texts):
    """Indices k after which a sentence closes: token k ends with . ? or ! and token k+1
    starts with whitespace, or token k ends a run of two or more newlines that follows
    some non-newline text of the current sentence. The last token never closes one (the
    text that trails is an unclosed sentence)."""
    ends = []
    n = len(tokens)
    has_text = False
    for k in range(n - 1):
        t = texts[tokens[k]]
        nxt = texts[tokens[k + 1]]
        if t and not t.isspace():
            has_text = True
        if not has_text:
            continue
        if t and t[-1] in ".?!" and nxt[:1].isspace():
            ends.append(k)
            has_text = False
        elif t == "\n" and k > 0 and texts[tokens[k - 1]] == "\n" and nxt != "\n":
            ends.append(k)
            has_text = False
    return ends


def thought_ends(tokens, texts):
    """Indices k after which a thought closes (gistd's thought boundary, policy/segment.c's
    text rule): tokens up to k end with a run of whitespace-only tokens holding two or more
    newlines, some text came since the last thought closed, and token k+1 is not newlines
    only. A paragraph break right after a sentence's end closes a thought too."""
    ends = []
    has_text, nl_run = False, 0
    for k in range(len(tokens) - 1):
        t = texts[tokens[k]]
        ws = t != "" and all(c in " \t\n\v\f\r" for c in t)
        has_text = has_text or (t != "" and not ws)
        nl_run = nl_run + t.count("\n") if ws else 0
        nxt = texts[tokens[k + 1]]
        if has_text and nl_run >= 2 and not (nxt and all(c in "\n\r" for c in nxt)):
            ends.append(k)
            has_text, nl_run = False, 0
    return ends


def split_thoughts(tokens, texts):
    """List of np arrays, one per thought (the last may be unclosed)."""
    return _split(tokens, thought_ends(tokens, texts))


def split_sentences(tokens, texts):
    """List of np arrays, one per sentence (the last may be unclosed)."""
    return _split(tokens, sentence_ends(tokens, texts))


def _split(tokens, ends):
    out, start = [], 0
    for k in ends:
        out.append(tokens[start : k + 1])
        start = k + 1
    if start < len(tokens):
        out.append(tokens[start:])
    return out
