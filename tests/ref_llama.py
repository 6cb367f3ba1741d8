"""tests/ref_llama.py — an independent numpy reference of the llama, qwen2 and qwen3 forward
passes.

It reads a GGUF file with its own small parser (no project code), dequantizes
F32/F16/BF16/Q8_0/Q4_0 and the K-quants Q4_K/Q5_K/Q6_K with numpy (from ggml's block
layouts, written here), and runs the forward pass as llama.cpp reads LLM_ARCH_LLAMA,
QWEN2 and QWEN3, in float64: token embedding, per layer RMSNorm -> Q/K/V (+ biases for
qwen2; per-head RMSNorm of Q and K for qwen3) -> RoPE (adjacent pairs for llama, the two
halves of a head for qwen2/qwen3) -> grouped-query causal attention -> output projection ->
residual -> RMSNorm -> SwiGLU -> residual, final norm, output (or tied token_embd). The C
engine's results are compared with this.

Usage as a module: m = RefModel(path); logits = m.forward(token_ids)  # [n, n_vocab]
sentence_mask(tokens, first, count, sinks) gives the gist tokens' attention rule.
"""
import struct

import numpy as np

# ggml tensor types: (elements per block, bytes per block)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 8, 30
GGML_Q5_0, GGML_Q5_1, GGML_Q4_K, GGML_Q5_K, GGML_Q6_K = 6, 7, 12, 13, 14
_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q8_0: (32, 34),
          GGML_BF16: (1, 2), GGML_Q4_K: (256, 144), GGML_Q5_K: (256, 176),
          GGML_Q6_K: (256, 210), GGML_Q5_0: (32, 22), GGML_Q5_1: (32, 24)}
K_QUANTS = (GGML_Q4_K, GGML_Q5_K, GGML_Q6_K)

# GGUF metadata value types
_SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
           10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class Reader:
    """A bounds-checked little-endian cursor over the file bytes."""

    def __init__(self, buf):
        self.buf = buf
        self.off = 0

    def take(self, n):
        if self.off + n > len(self.buf):
            raise ValueError(f"GGUF truncated at byte {self.off}")
        b = self.buf[self.off:self.off + n]
        self.off += n
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        return self.take(self.u64()).decode("utf-8", errors="replace")

    def value(self, vt):
        if vt in _SCALAR:
            dt = np.dtype(_SCALAR[vt])
            v = np.frombuffer(self.take(dt.itemsize), dt)[0]
            return bool(v) if vt == 7 else v.item()
        if vt == _STRING:
            return self.string()
        if vt == _ARRAY:
            et = self.u32()
            n = self.u64()
            if et in _SCALAR:
                dt = np.dtype(_SCALAR[et])
                return np.frombuffer(self.take(dt.itemsize * n), dt).copy()
            return [self.value(et) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {vt}")


def read_gguf(path):
    """Returns (metadata dict, {name: (type, ne tuple, raw bytes)})."""
    with open(path, "rb") as f:
        buf = f.read()
    r = Reader(buf)
    if r.take(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    version = r.u32()
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}")
    n_tensors, n_kv = r.u64(), r.u64()
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.u32())
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        ne = tuple(r.u64() for _ in range(n_dims))
        ttype = r.u32()
        offset = r.u64()
        infos.append((name, ne, ttype, offset))
    align = int(meta.get("general.alignment", 32))
    data_off = (r.off + align - 1) // align * align
    tensors = {}
    for name, ne, ttype, offset in infos:
        per, nbytes = _BLOCK[ttype]
        n = int(np.prod(ne))
        size = n // per * nbytes
        start = data_off + offset
        if start + size > len(buf):
            raise ValueError(f"tensor {name} runs past end of file")
        tensors[name] = (ttype, ne, buf[start:start + size])
    return meta, tensors


def _scale_min_k4(s):
    """6-bit scales and mins [nb, 8] of q4_K/q5_K blocks from their 12 packed bytes: sub-blocks
    0..3 in the low 6 bits of bytes j and j + 4; 4..7 low nibbles in byte j + 4 (scale low,
    min high) and the top 2 bits of bytes j - 4 (scale) and j (min)."""
    s = s.astype(np.int64)
    sc = np.empty((s.shape[0], 8), np.int64)
    m = np.empty_like(sc)
    sc[:, :4], m[:, :4] = s[:, 0:4] & 63, s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def _dequant_k(ttype, raw):
    """K-quant super-blocks of 256 to float64, flat."""
    if ttype == GGML_Q6_K:
        b = np.frombuffer(raw, np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("sc", "i1", 16),
                                         ("d", "<f2")]))
        ql, qh = b["ql"].astype(np.int64), b["qh"].astype(np.int64)
        halves = []
        for c in range(2):  # 128 elements each: ql[l] low/high, ql[32+l] low/high, qh 2 bits
            lo, hi, h = ql[:, 64 * c:64 * c + 32], ql[:, 64 * c + 32:64 * c + 64], \
                qh[:, 32 * c:32 * c + 32]
            halves += [(lo & 15) | ((h & 3) << 4), (hi & 15) | (((h >> 2) & 3) << 4),
                       (lo >> 4) | (((h >> 4) & 3) << 4), (hi >> 4) | (((h >> 6) & 3) << 4)]
        q = np.concatenate(halves, axis=1) - 32  # [nb, 256] in element order
        sc = np.repeat(b["sc"].astype(np.float64), 16, axis=1)
        return (b["d"].astype(np.float64)[:, None] * sc * q).reshape(-1)
    fields = [("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12)]
    if ttype == GGML_Q5_K:
        fields.append(("qh", "u1", 32))
    b = np.frombuffer(raw, np.dtype(fields + [("qs", "u1", 128)]))
    qs = b["qs"].astype(np.int64).reshape(-1, 4, 32)
    # sub-block 2i: low nibbles of qs[32i..32i+32), sub-block 2i+1: high nibbles
    q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 8, 32)
    if ttype == GGML_Q5_K:  # bit j of qh[l] is the fifth bit of element l of sub-block j
        q = q + 16 * ((b["qh"].astype(np.int64)[:, None, :] >> np.arange(8)[None, :, None]) & 1)
    sc, m = _scale_min_k4(b["scales"])
    d, dmin = b["d"].astype(np.float64)[:, None, None], b["dmin"].astype(np.float64)[:, None, None]
    return (d * sc[:, :, None] * q - dmin * m[:, :, None]).reshape(-1)


def dequantize(ttype, ne, raw):
    """Tensor as float64 numpy array with numpy shape reversed from GGUF ne (rows last-dim)."""
    shape = tuple(reversed(ne))
    if ttype == GGML_F32:
        x = np.frombuffer(raw, "<f4").astype(np.float64)
    elif ttype == GGML_F16:
        x = np.frombuffer(raw, "<f2").astype(np.float64)
    elif ttype == GGML_BF16:
        x = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    elif ttype == GGML_Q8_0:
        blk = np.frombuffer(raw, np.dtype([("d", "<f2"), ("qs", "i1", 32)]))
        x = (blk["d"].astype(np.float64)[:, None] * blk["qs"].astype(np.float64)).reshape(-1)
    elif ttype == GGML_Q4_0:
        blk = np.frombuffer(raw, np.dtype([("d", "<f2"), ("qs", "u1", 16)]))
        lo = (blk["qs"] & 0x0F).astype(np.float64) - 8.0  # elements 0..15
        hi = (blk["qs"] >> 4).astype(np.float64) - 8.0  # elements 16..31
        x = (blk["d"].astype(np.float64)[:, None] * np.concatenate([lo, hi], axis=1)).reshape(-1)
    elif ttype in K_QUANTS:
        x = _dequant_k(ttype, raw)
    elif ttype in (GGML_Q5_0, GGML_Q5_1):  # fifth bit of element j: bit j of qh (uint32)
        fields = [("d", "<f2")] + ([("m", "<f2")] if ttype == GGML_Q5_1 else [])
        blk = np.frombuffer(raw, np.dtype(fields + [("qh", "<u4"), ("qs", "u1", 16)]))
        qs = blk["qs"].astype(np.int64)
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        q = q | (((blk["qh"].astype(np.int64)[:, None] >> np.arange(32)[None, :]) & 1) << 4)
        d = blk["d"].astype(np.float64)[:, None]
        x = (d * (q - 16) if ttype == GGML_Q5_0
             else d * q + blk["m"].astype(np.float64)[:, None]).reshape(-1)
    else:
        raise ValueError(f"tensor type {ttype} not supported by the reference")
    return x.reshape(shape)


def sentence_mask(tokens, gist_first, n_gist, n_sinks=1):
    """bool [n, n]: query i may see key j <= i iff j is a sink (j < n_sinks), or j is a gist
    token, or i and j are in the same sentence. A run of gist ids closes the sentence before
    it and belongs to it; a new sentence starts at a regular token after a gist token."""
    t = np.asarray(tokens)
    is_gist = (t >= gist_first) & (t < gist_first + n_gist)
    sid = np.cumsum(np.r_[False, ~is_gist[1:] & is_gist[:-1]])
    j = np.arange(len(t))
    return (j[None, :] < n_sinks) | is_gist[None, :] | (sid[:, None] == sid[None, :])


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def log_sigmoid(z):
    return np.minimum(z, 0.0) - np.log1p(np.exp(-np.abs(z)))


class RefModel:
    def __init__(self, path, act_quant=False):
        """act_quant: quantize the input of every product with a q8_0/q4_0 weight to int8
        blocks of 32 (d = max|x|/127, q = round(x/d)), and with a K-quant weight to blocks of
        256 the same way, as llama.cpp's decode kernels do."""
        meta, tensors = read_gguf(path)
        self.act_quant = act_quant
        self.wtype = {name: t[0] for name, t in tensors.items()}
        self.meta = meta
        self.arch = meta["general.architecture"]
        assert self.arch in ("llama", "qwen2", "qwen3"), self.arch
        g = lambda k, d=None: meta.get(self.arch + "." + k, d)
        self.halves = self.arch != "llama"  # NEOX rotation: pairs (i, i + n_rot/2)
        self.n_embd = int(g("embedding_length"))
        self.n_layer = int(g("block_count"))
        self.n_head = int(g("attention.head_count"))
        self.n_head_kv = int(g("attention.head_count_kv", self.n_head))
        self.head_dim = int(g("attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(g("rope.dimension_count", self.head_dim))
        self.eps = float(g("attention.layer_norm_rms_epsilon", 1e-5))
        self.base = float(g("rope.freq_base", 10000.0))
        scaling = g("rope.scaling.type", "none")
        self.pos_scale = 1.0
        if scaling == "linear":
            self.pos_scale = 1.0 / float(g("rope.scaling.factor", 1.0))
        elif scaling not in ("none", "llama3"):
            raise ValueError(f"rope scaling {scaling} not in the reference")
        self.w = {name: dequantize(*t) for name, t in tensors.items()}
        self.n_vocab = self.w["token_embd.weight"].shape[0]
        self.freq_div = self.w.get("rope_freqs.weight", np.ones(self.n_rot // 2))

    def mm(self, x, name):
        """x @ W[name].T, with the input quantized first when act_quant asks for it."""
        if self.act_quant and self.wtype[name] in (GGML_Q8_0, GGML_Q4_0) + K_QUANTS:
            b = x.reshape(x.shape[0], -1, 256 if self.wtype[name] in K_QUANTS else 32)
            d = np.abs(b).max(axis=2, keepdims=True) / 127.0
            q = np.round(np.divide(b, d, out=np.zeros_like(b), where=d > 0))
            x = (q * d).reshape(x.shape)
        return x @ self.w[name].T

    def rope(self, x, pos):
        """x: [n, heads, head_dim]; rotates pairs of the first n_rot dims: adjacent (llama) or
        the two halves (qwen2, qwen3)."""
        i = np.arange(self.n_rot // 2, dtype=np.float64)
        inv = self.base ** (-2.0 * i / self.n_rot) / self.freq_div
        theta = (np.asarray(pos, np.float64) * self.pos_scale)[:, None] * inv[None, :]
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        out = x.copy()
        h = self.n_rot // 2
        if self.halves:
            a, b = slice(0, h), slice(h, self.n_rot)
        else:
            a, b = slice(0, self.n_rot, 2), slice(1, self.n_rot, 2)
        x0, x1 = x[..., a], x[..., b]
        out[..., a] = x0 * c - x1 * s
        out[..., b] = x0 * s + x1 * c
        return out

    def forward(self, tokens, pos=None, want_logbeta=False, allow=None):
        """Causal prefill of one sequence. Returns logits [n, n_vocab] (float64), and with
        want_logbeta also the retention log-beta [n, n_layer, n_head_kv] (zeros without gates).
        allow: optional bool [n, n], True where query i may see key j (on top of causality)."""
        tokens = np.asarray(tokens, np.int64)
        n = len(tokens)
        pos = np.arange(n) if pos is None else np.asarray(pos)
        W = self.w
        hd, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        x = W["token_embd.weight"][tokens]
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        if allow is not None:
            mask[~np.asarray(allow, bool)] = -np.inf
        logbeta = np.zeros((n, self.n_layer, nkv))
        for l in range(self.n_layer):
            p = f"blk.{l}."
            xn = rms_norm(x, W[p + "attn_norm.weight"], self.eps)
            if p + "retention_in.weight" in W:
                h = silu(self.mm(xn, p + "retention_in.weight") + W[p + "retention_in.bias"])
                z = self.mm(h, p + "retention_out.weight") + W[p + "retention_out.bias"]
                logbeta[:, l, :] = log_sigmoid(z)
            q, k, v = (self.mm(xn, p + f"attn_{t}.weight") + W.get(p + f"attn_{t}.bias", 0.0)
                       for t in "qkv")
            q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
            if p + "attn_q_norm.weight" in W:
                q = rms_norm(q, W[p + "attn_q_norm.weight"], self.eps)
                k = rms_norm(k, W[p + "attn_k_norm.weight"], self.eps)
            q, k = self.rope(q, pos), self.rope(k, pos)
            grp = nh // nkv
            att = np.empty((n, nh, hd))
            for h in range(nh):
                kh = h // grp
                s = q[:, h, :] @ k[:, kh, :].T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                att[:, h, :] = s @ v[:, kh, :]
            x = x + self.mm(att.reshape(n, nh * hd), p + "attn_output.weight")
            xn = rms_norm(x, W[p + "ffn_norm.weight"], self.eps)
            gate = self.mm(xn, p + "ffn_gate.weight")
            up = self.mm(xn, p + "ffn_up.weight")
            x = x + self.mm(silu(gate) * up, p + "ffn_down.weight")
        x = rms_norm(x, W["output_norm.weight"], self.eps)
        logits = self.mm(x, "output.weight" if "output.weight" in W else "token_embd.weight")
        return (logits, logbeta) if want_logbeta else logits
