"""Validation figures for the model card, all on the same held-out tokens (persuasion.txt).

Windows are built as in the gist stage (sentence-aligned, [BOS] + sentences, ~seq tokens);
every figure scores exactly the same regular tokens:
  base      the base checkpoint, causal attention, no gists;
  plain     the final model, causal attention, no gists;
  gist      the final model with gists after each sentence, under the sentence mask;
  gated     the final model, causal attention with the gates' soft decay (TRIM-KV training
            form: key i weighs beta_i^(t-i) at query t).

    /usr/bin/python3 train/evaluate.py --tok train/runs/tok4096.model \
        --base train/runs/base/ckpt.pt --final train/runs/gates/ckpt.pt --windows 32
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
import model as M  # noqa: E402
import train_gist  # noqa: E402


@torch.no_grad()
def eval_gated(model, plain):
    model.eval()
    tot, n = 0.0, 0
    for pw in plain:
        logits = model(torch.from_numpy(pw[None, :-1]), aux={"apply_gates": True})
        tot += float(F.cross_entropy(logits[0], torch.from_numpy(pw[1:]), reduction="sum"))
        n += len(pw) - 1
    return tot / n, n


@torch.no_grad()
def engine_style_nll(model, ids, n_ctx):
    """Mean NLL scored as `gist-model perplexity` scores a file: ids (BOS first) in windows
    of n_ctx tokens, each starting at the previous window's last token, every token after
    the first scored once from its window's earlier tokens."""
    model.eval()
    tot, n, s = 0.0, 0, 0
    while s + 1 < len(ids):
        w = torch.tensor([ids[s : s + n_ctx]])
        logits = model(w[:, :-1])
        tot += float(F.cross_entropy(logits[0], w[0, 1:], reduction="sum"))
        n += w.shape[1] - 1
        s += n_ctx - 1
    return tot / n, n


def engine_check(gguf, sp, text, n_ctx, tool):
    """(PyTorch ppl, engine ppl, tokens) of the GGUF model on text, both scored alike."""
    import export

    model, _kv = export.load_gguf(gguf)
    nll, n = engine_style_nll(model, [sp.bos_id()] + sp.EncodeAsIds(text), n_ctx)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run([tool, "perplexity", gguf, "--file", f.name, "--ctx", str(n_ctx)],
                           capture_output=True, text=True, timeout=600)
    finally:
        os.unlink(f.name)
    m = re.search(r"ppl: ([\d.]+)", r.stdout)
    if r.returncode != 0 or not m:
        raise SystemExit(f"gist-model perplexity failed: {r.stderr.strip()[-300:]}")
    return math.exp(nll), float(m.group(1)), n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=data.DEFAULT_CORPUS)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--final", required=True, help="checkpoint with gists and gates")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--gguf", default=None, help="the exported file: cross-check it with "
                    "`gist-model perplexity` on the first --engine-bytes of the book")
    ap.add_argument("--engine-bytes", type=int, default=40000)
    ap.add_argument("--tool", default=os.path.join(data.REPO, "build", "bin", "gist-model"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sp = data.load_sp(a.tok)
    _books, valid = data.split_books(a.corpus)
    text = data.read_text(valid)
    vt = data.book_tokens(a.tok, valid)
    sents = data.split_sentences(vt, data.piece_texts(sp))
    final, d = M.load_checkpoint(a.final)
    g = d["gist"]
    gisted, plain = train_gist.valid_windows(sents, a.seq, sp.bos_id(), g["first_token_id"],
                                             g["count"], a.windows)
    base, _ = M.load_checkpoint(a.base)
    fig = {"valid_book": os.path.basename(valid),
           "tokens_per_byte": round(len(vt) / len(text.encode("utf-8")), 4),
           "windows": len(gisted)}
    res = {"base": train_gist.eval_plain(base, plain),
           "plain": train_gist.eval_plain(final, plain),
           "gist": train_gist.eval_gisted(final, gisted, g["first_token_id"], g["count"])}
    if final.has_gates():
        res["gated"] = eval_gated(final, plain)
    for k, (nll, n) in res.items():
        fig[k] = {"nll": round(nll, 4), "ppl": round(math.exp(nll), 3), "tokens": n,
                  "bits_per_byte": round(nll / math.log(2) * fig["tokens_per_byte"], 4)}
    if a.gguf:
        tp, ep, n = engine_check(a.gguf, sp, text[: a.engine_bytes], a.seq, a.tool)
        fig["engine_check"] = {"bytes": a.engine_bytes, "tokens": n, "ctx": a.seq,
                               "torch_ppl": round(tp, 3), "engine_ppl": round(ep, 3)}
    print(json.dumps(fig, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(fig, f, indent=1)


if __name__ == "__main__":
    main()
