"""The llama forward pass the C engine computes, in PyTorch, plus the two learned extras.

Shapes use the GGUF words: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_vocab.
- RMSNorm: x / sqrt(mean(x^2) + eps) * w.
- RoPE on ADJACENT pairs (x[2i], x[2i+1]) rotated by pos * base^(-2i/head_dim): llama.cpp's
  LLM_ARCH_LLAMA rope, so the weights are exported without any permutation.
- GQA: query head h reads kv head h // (n_head / n_head_kv).
- SwiGLU feed-forward: ffn_down(silu(ffn_gate(x)) * ffn_up(x)); untied output matrix.
- Gist tokens are ordinary vocabulary rows; the sentence mask is built by sentence_mask().
- Retention gates (TRIM-KV): per layer, log beta = logsigmoid(W_out silu(W_in x + b_in)
  + b_out) per kv head from the normalised attention input x; while training they add
  (t - i) * log beta_i to the attention logits of key i at query t.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    n_vocab: int = 4096
    n_embd: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_head_kv: int = 4
    n_ff: int = 688
    n_ctx: int = 1024
    rope_base: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(n_pos, head_dim, base):
    """cos, sin [n_pos, head_dim/2]: angle pos * base^(-2i/head_dim) for pair i."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def rope(x, cos, sin):
    """x [B, T, H, head_dim]; rotates each adjacent pair (x[2i], x[2i+1])."""
    B, T, H, D = x.shape
    xp = x.reshape(B, T, H, D // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    c = cos[:T, None, :]
    s = sin[:T, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).reshape(B, T, H, D)


class RetentionGate(nn.Module):
    """log beta [B, T, n_head_kv] from the normalised attention input x [B, T, n_embd]."""

    def __init__(self, n_embd, n_hidden, n_head_kv, init_bias=6.0):
        super().__init__()
        self.inp = nn.Linear(n_embd, n_hidden)
        self.out = nn.Linear(n_hidden, n_head_kv)
        nn.init.normal_(self.inp.weight, std=1.0 / math.sqrt(n_embd))
        nn.init.zeros_(self.inp.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, init_bias)  # beta ~ 1: keep everything at first

    def forward(self, x):
        return F.logsigmoid(self.out(F.silu(self.inp(x))))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.attn_norm = RMSNorm(c.n_embd, c.eps)
        self.attn_q = nn.Linear(c.n_embd, c.n_head * hd, bias=False)
        self.attn_k = nn.Linear(c.n_embd, c.n_head_kv * hd, bias=False)
        self.attn_v = nn.Linear(c.n_embd, c.n_head_kv * hd, bias=False)
        self.attn_output = nn.Linear(c.n_head * hd, c.n_embd, bias=False)
        self.ffn_norm = RMSNorm(c.n_embd, c.eps)
        self.ffn_gate = nn.Linear(c.n_embd, c.n_ff, bias=False)
        self.ffn_up = nn.Linear(c.n_embd, c.n_ff, bias=False)
        self.ffn_down = nn.Linear(c.n_ff, c.n_embd, bias=False)
        self.retention = None  # a RetentionGate once gates are added

    def forward(self, x, cos, sin, mask_bias, dist, aux):
        c = self.c
        B, T, _ = x.shape
        hd = c.head_dim
        h = self.attn_norm(x)
        q = rope(self.attn_q(h).view(B, T, c.n_head, hd), cos, sin)
        k = rope(self.attn_k(h).view(B, T, c.n_head_kv, hd), cos, sin)
        v = self.attn_v(h).view(B, T, c.n_head_kv, hd)
        if aux is not None and aux.get("ov_self") and aux["ov_self"][aux["layer"]]:
            supervise_self_copy(v, self.attn_output.weight, c.n_head // c.n_head_kv, aux)
        decay = None
        if self.retention is not None and aux is not None:
            logb = self.retention(h)                              # [B, T, KV]
            aux["logbeta"].append(logb)
            if aux.get("apply_gates"):
                lb = logb.transpose(1, 2)                         # [B, KV, T]
                # (t - i) * log beta_i for key i at query t; 0 above the diagonal
                decay = dist[None, None] * lb[:, :, None, :]      # [B, KV, T, T]
                aux["decay"].append(decay)
        watch = None
        if aux is not None and aux.get("attn_target") is not None:
            watch = aux["attn_target"][aux["layer"]]
        o, nll = attention(q.transpose(1, 2) * (1.0 / math.sqrt(hd)), k.transpose(1, 2),
                           v.transpose(1, 2), mask_bias, decay, watch)
        for term in nll:
            aux["attn_loss"] = aux.get("attn_loss", 0.0) + term
        if aux is not None and aux.get("ov_heads") is not None:
            supervise_copy(o, self.attn_output.weight, aux)
        x = x + self.attn_output(o)
        h = self.ffn_norm(x)
        return x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.token_embd = nn.Embedding(c.n_vocab, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.output_norm = RMSNorm(c.n_embd, c.eps)
        self.output = nn.Linear(c.n_embd, c.n_vocab, bias=False)
        cos, sin = rope_tables(c.n_ctx, c.head_dim, c.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for b in self.blocks:  # GPT-2 style scaled init of the residual projections
            nn.init.normal_(b.attn_output.weight, std=0.02 / math.sqrt(2 * c.n_layer))
            nn.init.normal_(b.ffn_down.weight, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)) and not isinstance(m, RetentionGate):
            nn.init.normal_(m.weight, std=0.02)

    def set_context(self, n_ctx):
        """Declares a context of n_ctx tokens, with RoPE tables that long: a model trained on
        shorter windows read or trained at longer ones."""
        self.c.n_ctx = n_ctx
        self.cos, self.sin = rope_tables(n_ctx, self.c.head_dim, self.c.rope_base)

    def add_gates(self, n_hidden, init_bias=6.0):
        for b in self.blocks:
            b.retention = RetentionGate(self.c.n_embd, n_hidden, self.c.n_head_kv, init_bias)

    def has_gates(self):
        return self.blocks[0].retention is not None

    def resize_vocab(self, n_vocab):
        """Appends rows to token_embd and output (new embeddings: mean of the old rows plus
        noise; new output rows: zero), e.g. for gist tokens."""
        old = self.c.n_vocab
        if n_vocab <= old:
            return
        e = self.token_embd.weight.data
        extra = e.mean(0, keepdim=True) + 0.02 * torch.randn(n_vocab - old, e.shape[1])
        self.token_embd = nn.Embedding(n_vocab, e.shape[1])
        self.token_embd.weight.data = torch.cat([e, extra])
        o = self.output.weight.data
        self.output = nn.Linear(o.shape[1], n_vocab, bias=False)
        self.output.weight.data = torch.cat([o, torch.zeros(n_vocab - old, o.shape[1])])
        self.c.n_vocab = n_vocab

    def forward(self, tokens, mask=None, aux=None):
        """tokens [B, T] -> logits [B, T, n_vocab].
        mask: None for causal attention, else bool [B, T, T] (True = query may see key).
        aux: optional dict; with gates present, aux["logbeta"] collects each layer's
        log beta [B, T, n_head_kv], and aux["apply_gates"] = True applies the decay
        (aux["decay"] then collects each layer's [B, KV, T, T] log-decay)."""
        B, T = tokens.shape
        if T > self.c.n_ctx:
            raise ValueError(f"{T} tokens exceed n_ctx {self.c.n_ctx}")
        dev = tokens.device
        if mask is None:
            causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            bias = torch.zeros(1, T, T, device=dev).masked_fill(~causal, float("-inf"))
        else:
            bias = torch.zeros(B, T, T, device=dev).masked_fill(~mask, float("-inf"))
        dist = None
        if aux is not None:
            aux.setdefault("logbeta", [])
            aux.setdefault("decay", [])
            ar = torch.arange(T, device=dev, dtype=torch.float32)
            dist = (ar[:, None] - ar[None, :]).clamp(min=0)
        x = self.token_embd(tokens)
        for i, b in enumerate(self.blocks):
            if aux is not None:
                aux["layer"] = i
            x = b(x, self.cos, self.sin, bias, dist, aux)
        return self.output(self.output_norm(x))


# Queries attended to at a time: a chunk reads the keys up to its own end only, so causal
# attention over T tokens computes about (1 + QUERY_CHUNK / T) / 2 of the T x T scores.
QUERY_CHUNK = 256


def attention(q, k, v, bias, decay=None, watch=None):
    """softmax(q k^T + bias [+ decay]) v with grouped kv heads, and the supervision of chosen
    heads' attention.

    q [B, H, T, hd], already scaled by 1/sqrt(hd); k, v [B, KV, T, hd] (query head h reads kv
    head h // (H / KV)); bias [B or 1, T, T]: 0 where a query may see a key, -inf elsewhere,
    never a key after its query; decay: None or [B, KV, T, T] added to the scores (the
    retention gates). watch: None or [(head, target [B, T] long, -1 where a query is not
    supervised)]. Returns o [B, T, H * hd] and, for each watched head with a target, the mean
    of -log its attention on the target (the cross-entropy against the target position).

    Each head is a matrix product of its own, a chunk of QUERY_CHUNK queries at a time against
    the keys up to the chunk's end, with the bias added by the product itself: no [B, H, T, T]
    tensor is built, scaled, masked or sliced (the backward of a slice writes zeros over the
    whole of it), and the keys after a chunk are never scored."""
    B, H, T, hd = q.shape
    rep = H // k.shape[1]
    watch = {head: tgt for head, tgt in (watch or ())}
    nll = {head: [] for head in watch}
    # unbind and split, not indexing: their backward is one stack or cat, where each index
    # or slice would write zeros over the whole of the tensor it came from
    qs = [qh.split(QUERY_CHUNK, 1) for qh in q.unbind(1)]
    ks, vs = k.unbind(1), v.unbind(1)
    chunks = []
    for c, q0 in enumerate(range(0, T, QUERY_CHUNK)):
        q1 = min(T, q0 + QUERY_CHUNK)
        kc = [kg[:, :q1].transpose(1, 2) for kg in ks]  # the keys up to the chunk's end
        vc = [vg[:, :q1] for vg in vs]
        add = bias[:, q0:q1, :q1]  # what the product adds, for each kv head
        add = [add if decay is None else add + decay[:, g, q0:q1, :q1] for g in range(len(ks))]
        heads = []
        for head in range(H):
            g = head // rep
            # (float: under --bf16 the product is bfloat16, its softmax not)
            p = torch.softmax(torch.baddbmm(add[g], qs[head][c], kc[g]).float(), dim=-1)
            heads.append(torch.bmm(p, vc[g]))
            if head in watch:
                tgt = watch[head][:, q0:q1]
                got = p.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)
                ok = tgt >= 0
                nll[head].append((-(torch.log(got + 1e-9) * ok).sum(), ok.sum()))
        chunks.append(torch.cat(heads, -1))
    terms = []
    for parts in nll.values():
        n = sum(int(c) for _, c in parts)
        if n:
            terms.append(sum(t for t, _ in parts) / n)
    return torch.cat(chunks, 1), terms


def supervise_copy(o, w_out, aux):
    """Adds to aux["ov_loss"] the cross-entropy of the direct logits of groups of a layer's
    heads (their outputs through their slices of the output projection, summed, then the
    unembedding aux["unembed"], which this loss does not train) against each group's target
    [B, T] (-1: not supervised): copying heads' values must carry the token they read to the
    logits. aux["ov_heads"][layer] lists (heads, target) groups."""
    hd = aux["head_dim"]
    for heads, tgt in aux["ov_heads"][aux["layer"]]:
        ok = tgt >= 0
        if not bool(ok.any()):  # nothing to copy in these windows (NaN otherwise)
            continue
        c = sum(o[..., h * hd:(h + 1) * hd][ok] @ w_out[:, h * hd:(h + 1) * hd].T for h in heads)
        loss = F.cross_entropy(c @ aux["unembed"].T, tgt[ok])
        aux["ov_loss"] = aux.get("ov_loss", 0.0) + loss


def supervise_self_copy(v, w_out, rep, aux):
    """Adds to aux["ov_self_loss"] the cross-entropy of each head of aux["ov_self"][layer]
    reading one value row alone: its value at the positions aux["ov_self_at"] (flat indices
    into [B * T]) through the head's slice of the output projection, then the unembedding
    aux["ov_self_unembed"] (which this loss trains too), against the token at that position,
    aux["ov_self_tok"]. A recall head whose attention falls on one row passes on that row's
    value, so this is its copy, asked for every token a batch holds instead of the few a
    needle's answer does (supervise_copy). v [B, T, n_head_kv, hd]; rep: query heads a kv
    head."""
    hd = v.shape[-1]
    rows = v.reshape(-1, v.shape[2], hd)[aux["ov_self_at"]]  # [N, KV, hd]
    for h in aux["ov_self"][aux["layer"]]:
        c = rows[:, h // rep] @ w_out[:, h * hd:(h + 1) * hd].T
        loss = F.cross_entropy(c @ aux["ov_self_unembed"].T, aux["ov_self_tok"])
        aux["ov_self_loss"] = aux.get("ov_self_loss", 0.0) + loss


def sentence_mask(tokens, gist_first, n_gist, n_sinks=1):
    """The sentence mask, bool [B, T, T], derived from where the gist ids stand (the thought
    mask too: with gists after each thought, the segments below are thoughts).

    A maximal run of gist ids closes the sentence before it and belongs to it. Query i may
    see key j <= i iff j is one of the first n_sinks positions, or j is a gist token, or
    i and j belong to the same sentence (its regular tokens and its own gist group).
    """
    B, T = tokens.shape
    is_gist = (tokens >= gist_first) & (tokens < gist_first + n_gist)
    # a new sentence starts at each regular token that follows a gist token
    starts = torch.zeros_like(is_gist)
    starts[:, 1:] = (~is_gist[:, 1:]) & is_gist[:, :-1]
    sid = torch.cumsum(starts.long(), dim=1)                       # [B, T]
    pos = torch.arange(T, device=tokens.device)
    causal = pos[None, :, None] >= pos[None, None, :]               # [1, T(i), T(j)]
    sink = (pos < n_sinks)[None, None, :]
    same = sid[:, :, None] == sid[:, None, :]
    return causal & (sink | is_gist[:, None, :] | same)


def packed_gist_mask(tokens, doc, pinned, gist_first, n_gist):
    """The sentence (thought) mask over rows packed with several documents, bool [B, T, T].

    doc [B, T]: each token's document (a document starts with its own BOS); pinned [B, T]:
    keys every later regular token of the document sees (its BOS and a pinned prefix: the
    question a client pins with sinks). Query i sees key j <= i of its own document iff j is
    a gist token, or i and j belong to the same segment, or j is pinned and i a regular
    token; gist tokens see only the document's first token of the pinned ones (as
    policy/learned.c runs them: the model's gist sinks, their segment, earlier gists). With
    one document and only its BOS pinned this is sentence_mask.
    """
    B, T = tokens.shape
    is_gist = (tokens >= gist_first) & (tokens < gist_first + n_gist)
    first = torch.ones_like(is_gist)
    first[:, 1:] = doc[:, 1:] != doc[:, :-1]
    starts = first.clone()
    starts[:, 1:] |= (~is_gist[:, 1:]) & is_gist[:, :-1]
    sid = torch.cumsum(starts.long(), dim=1)
    pos = torch.arange(T, device=tokens.device)
    causal = pos[None, :, None] >= pos[None, None, :]
    same_doc = doc[:, :, None] == doc[:, None, :]
    sink = torch.where(is_gist[:, :, None], first[:, None, :], pinned[:, None, :])
    same = sid[:, :, None] == sid[:, None, :]
    return causal & same_doc & (sink | is_gist[:, None, :] | same)


def save_checkpoint(path, model, opt=None, **state):
    import os

    d = {"config": model.c.to_dict(), "model": model.state_dict(),
         "gates": model.has_gates(), **state}
    if model.has_gates():
        d["gate_hidden"] = model.blocks[0].retention.inp.out_features
    if opt is not None:
        d["opt"] = opt.state_dict()
    tmp = path + ".tmp"
    torch.save(d, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    """(model, checkpoint dict)."""
    d = torch.load(path, map_location="cpu")
    m = Llama(Config(**d["config"]))
    if d.get("gates"):
        m.add_gates(d["gate_hidden"])
    m.load_state_dict(d["model"])
    return m, d
