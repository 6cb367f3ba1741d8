"""Train the SentencePiece BPE tokenizer on the training books (never the held-out one).

BPE, byte fallback, no normalisation and no whitespace collapsing: the C tokenizer
(llama.cpp's SPM algorithm: merges by piece score, bytes for the rest) then produces
exactly the ids SentencePiece produces. Sentences reach the trainer one line at a time,
so newlines are never pieces: they are encoded as the byte piece <0x0A>.

    /usr/bin/python3 train/tokenizer.py --out train/runs/tok4096 --vocab 4096
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402


def train_tokenizer(corpus, out_prefix, vocab_size, max_bytes=None, threads=2):
    import sentencepiece as spm

    books, _valid = data.split_books(corpus)
    lines = []
    for p in books:
        for line in data.read_text(p, max_bytes).split("\n"):
            if line.strip():
                lines.append(line)
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines),
        model_prefix=out_prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=0.9995,
        max_sentence_length=16384,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=threads,
        minloglevel=2,
    )
    return out_prefix + ".model"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--out", default=os.path.join(data.RUNS, "tok4096"),
                    help="output prefix: writes PREFIX.model and PREFIX.vocab")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-bytes", type=int, default=None,
                    help="read only this many characters of each book (tests)")
    a = ap.parse_args(argv)
    path = train_tokenizer(a.corpus, a.out, a.vocab, a.max_bytes)
    sp = data.load_sp(path)
    _books, valid = data.split_books(a.corpus)
    text = data.read_text(valid)
    n = len(data.encode_text(sp, text))
    print(f"{path}: {sp.GetPieceSize()} pieces; {os.path.basename(valid)}: "
          f"{n} tokens, {n / len(text.encode('utf-8')):.4f} tokens/byte")


if __name__ == "__main__":
    main()
