/*
 * model/attention.c — grouped-query attention of a batch over the caller's KV views.
 *
 * One unit of work is (batch item, kv-head): the group of query heads that share
 * the kv-head reads each key and value row once. Stored rows come from the view's
 * chunks (F32, F16 or Q8_0 payload, plus an optional per-row bias); new rows come
 * from the batch's own K/V scratch (f32, after RoPE), causal within a sequence.
 * Scores are scaled by 1/sqrt(head_dim), biased, and softmaxed in f32 with the
 * maximum subtracted. Units run in parallel with OpenMP; when a view asks for
 * attention accumulation the unit becomes (sequence, kv-head), so that one thread
 * owns each accumulator and no atomics are needed.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "common/dtype.h"
#include "model/llama_impl.h"

static inline float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static inline void axpy(float *y, float a, const float *x, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* f16 -> f32, exact for every value (subnormals, inf, nan), branch-free so that the
 * row loop vectorises (M. Dukhan's FP16 library method, as ggml uses). */
static inline float f16_f32(uint16_t h)
{
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normal = f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormal = f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits = two_w < (1u << 27) ? f32_bits(denormal) : f32_bits(normal);
    return f32_from_bits(sign | bits);
}

/* Row r of a chunk payload as f32: a pointer into the payload itself for F32,
 * else buf[hd] filled with the converted row. */
static inline const float *chunk_row(uint32_t type, const void *base, size_t r, int hd,
                                     float *buf)
{
    if (type == DT_F32)
        return (const float *)base + r * (size_t)hd;
    if (type == DT_F16) {
        const uint16_t *h = (const uint16_t *)base + r * (size_t)hd;
        for (int i = 0; i < hd; i++)
            buf[i] = f16_f32(h[i]);
        return buf;
    }
    /* DT_Q8_0; the forward checked the type and that hd is a multiple of 32 */
    const block_q8_0 *b = (const block_q8_0 *)base + r * (size_t)(hd / QK8_0);
    for (int blk = 0; blk < hd / QK8_0; blk++) {
        const float d = f16_f32(b[blk].d);
        for (int i = 0; i < QK8_0; i++)
            buf[blk * QK8_0 + i] = d * (float)b[blk].qs[i];
    }
    return buf;
}

size_t mdl_attention_scratch(const mdl_t *m, size_t n_rows)
{
    size_t g = m->hp.n_head / m->hp.n_head_kv;
    /* a row buffer, then [g][n_rows] scores; padded to keep threads' areas apart */
    return ((size_t)m->hp.head_dim + g * n_rows + 31) & ~(size_t)15;
}

/* Attention of batch item i for the query heads of kv-head kvh. */
static void attend(mdl_t *m, uint32_t i, int kvh, float *buf, bool acc)
{
    const mdl_scratch_t *s = &m->s;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    const size_t q_dim = (size_t)m->hp.n_head * hd, kv_dim = (size_t)n_kv * hd;
    const int slot = s->item_slot[i], j = s->item_j[i];
    const mdl_kv_view_t *view = &s->views[(size_t)slot * n_kv + kvh];
    const int32_t *news = s->slot_items + s->slot_first[slot];
    const float scale = m->attn_scale;

    size_t n_rows = (size_t)j + 1;
    for (uint32_t c = 0; c < view->n_chunks; c++)
        n_rows += view->chunks[c].n;
    float *rowbuf = buf;
    float *sc = buf + hd; /* [g][n_rows] */
    const float *q = s->q + i * q_dim + (size_t)kvh * g * hd;
    float *out = s->att + i * q_dim + (size_t)kvh * g * hd;

    /* scores */
    size_t r = 0;
    for (uint32_t c = 0; c < view->n_chunks; c++) {
        const mdl_kv_chunk_t *ch = &view->chunks[c];
        for (uint32_t rr = 0; rr < ch->n; rr++, r++) {
            const float *kr = chunk_row(ch->type, ch->k, rr, hd, rowbuf);
            const float bias = ch->bias ? ch->bias[rr] : 0.0f;
            for (int h = 0; h < g; h++)
                sc[h * n_rows + r] = dot(q + h * hd, kr, hd) * scale + bias;
        }
    }
    for (int jj = 0; jj <= j; jj++, r++) {
        const float *kr = s->k + (size_t)news[jj] * kv_dim + (size_t)kvh * hd;
        for (int h = 0; h < g; h++)
            sc[h * n_rows + r] = dot(q + h * hd, kr, hd) * scale;
    }

    /* softmax per query head */
    for (int h = 0; h < g; h++) {
        float *p = sc + h * n_rows;
        float max = -INFINITY;
        for (size_t t = 0; t < n_rows; t++)
            max = p[t] > max ? p[t] : max;
        float sum = 0.0f;
        for (size_t t = 0; t < n_rows; t++) {
            p[t] = expf(p[t] - max);
            sum += p[t];
        }
        const float inv = 1.0f / sum;
        for (size_t t = 0; t < n_rows; t++)
            p[t] *= inv;
    }

    /* weighted values, and the accumulators when asked */
    memset(out, 0, sizeof(float) * (size_t)g * hd);
    r = 0;
    for (uint32_t c = 0; c < view->n_chunks; c++) {
        const mdl_kv_chunk_t *ch = &view->chunks[c];
        for (uint32_t rr = 0; rr < ch->n; rr++, r++) {
            const float *vr = chunk_row(ch->type, ch->v, rr, hd, rowbuf);
            float tot = 0.0f;
            for (int h = 0; h < g; h++) {
                const float p = sc[h * n_rows + r];
                axpy(out + h * hd, p, vr, hd);
                tot += p;
            }
            if (acc && ch->attn_acc)
                ch->attn_acc[rr] += tot;
        }
    }
    for (int jj = 0; jj <= j; jj++, r++) {
        const float *vr = s->v + (size_t)news[jj] * kv_dim + (size_t)kvh * hd;
        float tot = 0.0f;
        for (int h = 0; h < g; h++) {
            const float p = sc[h * n_rows + r];
            axpy(out + h * hd, p, vr, hd);
            tot += p;
        }
        if (acc && view->new_attn_acc)
            view->new_attn_acc[jj] += tot;
    }
}

void mdl_attention(mdl_t *m, uint32_t n)
{
    mdl_scratch_t *s = &m->s;
    const int n_kv = (int)m->hp.n_head_kv;
    const size_t n_views = (size_t)s->n_slots * n_kv;

    bool acc = false;
    double work = 0.0; /* multiply-adds, to skip threading for tiny batches */
    for (size_t u = 0; u < n_views && !acc; u++) {
        const mdl_kv_view_t *v = &s->views[u];
        acc = v->new_attn_acc != NULL;
        for (uint32_t c = 0; c < v->n_chunks && !acc; c++)
            acc = v->chunks[c].attn_acc != NULL;
    }
    for (size_t u = 0; u < n_views; u++) {
        size_t stored = 0, n_new = s->slot_n[u / n_kv];
        for (uint32_t c = 0; c < s->views[u].n_chunks; c++)
            stored += s->views[u].chunks[c].n;
        work += (double)n_new * (double)(stored + n_new);
    }
    work *= 2.0 * m->hp.head_dim * (m->hp.n_head / m->hp.n_head_kv);
    const bool par = m->n_threads > 1 && work > 65536.0;

    if (acc) {
        const int units = (int)n_views;
#pragma omp parallel for schedule(dynamic, 1) num_threads(m->n_threads) if (par)
        for (int u = 0; u < units; u++) {
            float *buf = s->thr + (size_t)omp_get_thread_num() * s->thr_floats;
            const int slot = u / n_kv;
            for (uint32_t jj = 0; jj < s->slot_n[slot]; jj++)
                attend(m, (uint32_t)s->slot_items[s->slot_first[slot] + jj], u % n_kv, buf,
                       true);
        }
    } else {
        const int units = (int)n * n_kv;
#pragma omp parallel for schedule(dynamic, 1) num_threads(m->n_threads) if (par)
        for (int u = 0; u < units; u++) {
            float *buf = s->thr + (size_t)omp_get_thread_num() * s->thr_floats;
            attend(m, (uint32_t)(u / n_kv), u % n_kv, buf, false);
        }
    }
}
