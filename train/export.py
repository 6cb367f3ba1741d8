"""Export a checkpoint (base, gist or gated) and its tokenizer as one llama GGUF file.

    /usr/bin/python3 train/export.py --ckpt train/runs/gates/ckpt.pt \
        --tok train/runs/tok4096.model --out models/gistd-6m.gguf --type f16

Tensor names and extra keys follow llama.cpp and ../shared/GGUF-EXTENSIONS.md. A torch
Linear(in -> out) weight [out, in] is written as GGUF dims [in, out]: the same bytes.
Weights are written as trained (adjacent-pair RoPE: no permutation of attn_q/attn_k).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import gguf_writer as G  # noqa: E402
import model as M  # noqa: E402

# SentencePiece piece kinds -> llama.cpp token types
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6


def vocab_entries(sp, n_vocab, n_gist):
    """(tokens, scores, types) for the SentencePiece pieces, then the gist tokens."""
    tokens, scores, types = [], [], []
    for i in range(sp.GetPieceSize()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        if sp.IsUnknown(i):
            types.append(TT_UNKNOWN)
        elif sp.IsControl(i):
            types.append(TT_CONTROL)
        elif sp.IsByte(i):
            types.append(TT_BYTE)
        elif sp.IsUnused(i):
            types.append(TT_UNUSED)
        else:
            types.append(TT_NORMAL)
    for g in range(n_gist):
        tokens.append(f"<gist_{g}>")
        scores.append(0.0)
        types.append(TT_CONTROL)
    if len(tokens) != n_vocab:
        raise SystemExit(f"model has {n_vocab} vocabulary rows, tokenizer + gists give "
                         f"{len(tokens)}")
    return tokens, scores, types


def export(model, sp, path, wtype="f32", gist=None, retention_budget=None, name="gistd",
           chat_template=None):
    """gist: None or dict(count, first_token_id, sinks); chat_template: the Jinja string
    the model was trained with (tokenizer.chat_template), or None. Returns the file size."""
    c = model.c
    w = G.GGUFWriter()
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", name)
    w.add_u32("general.file_type", 1 if wtype == "f16" else 0)
    w.add_u32("llama.context_length", c.n_ctx)
    w.add_u32("llama.embedding_length", c.n_embd)
    w.add_u32("llama.block_count", c.n_layer)
    w.add_u32("llama.feed_forward_length", c.n_ff)
    w.add_u32("llama.attention.head_count", c.n_head)
    w.add_u32("llama.attention.head_count_kv", c.n_head_kv)
    w.add_f32("llama.attention.layer_norm_rms_epsilon", c.eps)
    w.add_u32("llama.rope.dimension_count", c.head_dim)
    w.add_f32("llama.rope.freq_base", c.rope_base)
    w.add_u32("llama.vocab_size", c.n_vocab)

    n_gist = gist["count"] if gist else 0
    tokens, scores, types = vocab_entries(sp, c.n_vocab, n_gist)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", G.STRING, tokens)
    w.add_array("tokenizer.ggml.scores", G.FLOAT32, scores)
    w.add_array("tokenizer.ggml.token_type", G.INT32, types)
    w.add_u32("tokenizer.ggml.bos_token_id", sp.bos_id())
    w.add_u32("tokenizer.ggml.eos_token_id", sp.eos_id())
    w.add_u32("tokenizer.ggml.unknown_token_id", sp.unk_id())
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    w.add_bool("tokenizer.ggml.add_space_prefix", True)
    if chat_template:
        w.add_string("tokenizer.chat_template", chat_template)

    if gist:
        w.add_u32("gistd.gist.count", gist["count"])
        w.add_u32("gistd.gist.first_token_id", gist["first_token_id"])
        w.add_string("gistd.gist.mask", gist.get("mask", "sentence"))
        w.add_u32("gistd.gist.sinks", gist.get("sinks", 1))
    if model.has_gates():
        w.add_u32("gistd.retention.hidden", model.blocks[0].retention.inp.out_features)
        w.add_u32("gistd.retention.budget", retention_budget)

    big = G.GGML_F16 if wtype == "f16" else G.GGML_F32

    def t(n, p, typ=G.GGML_F32):
        w.add_tensor(n, p.detach().cpu().numpy(), typ)

    t("token_embd.weight", model.token_embd.weight, big)
    for i, b in enumerate(model.blocks):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", b.attn_norm.weight)
        for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                  "ffn_down"):
            t(p + n + ".weight", getattr(b, n).weight, big)
        t(p + "ffn_norm.weight", b.ffn_norm.weight)
        if b.retention is not None:
            t(p + "retention_in.weight", b.retention.inp.weight)
            t(p + "retention_in.bias", b.retention.inp.bias)
            t(p + "retention_out.weight", b.retention.out.weight)
            t(p + "retention_out.bias", b.retention.out.bias)
    t("output_norm.weight", model.output_norm.weight)
    t("output.weight", model.output.weight, big)
    return w.write(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--tok", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--type", choices=("f32", "f16"), default="f32",
                    help="type of the big matrices (norms and gates stay f32)")
    ap.add_argument("--name", default="gistd")
    ap.add_argument("--chat-template", choices=("none", "chatml"), default="none",
                    help="chatml: the model was trained on synth.py's ChatML conversations")
    ap.add_argument("--ctx", type=int, default=None,
                    help="the context the file declares (default: the checkpoint's), e.g. to "
                         "read a stage trained on shorter windows at the full context")
    a = ap.parse_args(argv)
    model, d = M.load_checkpoint(a.ckpt)
    sp = data.load_sp(a.tok)
    if a.ctx:
        model.set_context(a.ctx)
    gist = d.get("gist")
    extra = model.c.n_vocab - sp.GetPieceSize()
    if gist is None and extra > 0:
        # a base stage started from a file with gist tokens keeps their rows
        # (train_base.py --init-gguf/--init-ckpt): they stay gist tokens of the sentence mask
        gist = {"count": extra, "first_token_id": sp.GetPieceSize(), "sinks": 1}
        print(f"{a.ckpt}: the last {extra} vocabulary rows are exported as gist tokens")
    tmpl = None
    if a.chat_template == "chatml":
        import synth
        tmpl = synth.CHAT_TEMPLATE
    size = export(model, sp, a.out, a.type, gist, d.get("retention_budget"), a.name, tmpl)
    print(f"{a.out}: {size} bytes")


if __name__ == "__main__":
    main()


def load_gguf(path):
    """A Llama (with gist rows and gates if the file has them) rebuilt from a GGUF file
    written by export(): (model, kv dict). F16 tensors come back as f32."""
    import torch

    kv, tensors = G.read_gguf(path)
    c = M.Config(n_vocab=kv["llama.vocab_size"], n_embd=kv["llama.embedding_length"],
                 n_layer=kv["llama.block_count"], n_head=kv["llama.attention.head_count"],
                 n_head_kv=kv["llama.attention.head_count_kv"],
                 n_ff=kv["llama.feed_forward_length"], n_ctx=kv["llama.context_length"],
                 rope_base=kv["llama.rope.freq_base"],
                 eps=kv["llama.attention.layer_norm_rms_epsilon"])
    m = M.Llama(c)
    if "gistd.retention.hidden" in kv:
        m.add_gates(kv["gistd.retention.hidden"])
    sd = {}
    names = {"token_embd.weight": "token_embd.weight", "output_norm.weight":
             "output_norm.weight", "output.weight": "output.weight"}
    for i, b in enumerate(m.blocks):
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                  "ffn_gate", "ffn_up", "ffn_down"):
            names[f"blk.{i}.{n}.weight"] = f"blocks.{i}.{n}.weight"
        if b.retention is not None:
            for n, t in (("retention_in", "inp"), ("retention_out", "out")):
                for w in ("weight", "bias"):
                    names[f"blk.{i}.{n}.{w}"] = f"blocks.{i}.retention.{t}.{w}"
    for g, t in names.items():
        sd[t] = torch.from_numpy(tensors[g][2].copy())
    m.load_state_dict(sd)
    return m, kv


def load_start(path):
    """The model a training stage starts from: a checkpoint (.pt) or a model file (.gguf),
    its base weights and gist rows without its retention gates (the stages that want gates
    train their own)."""
    m = load_gguf(path)[0] if path.endswith(".gguf") else M.load_checkpoint(path)[0]
    for b in m.blocks:
        b.retention = None
    return m
