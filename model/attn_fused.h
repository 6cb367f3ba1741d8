/*
 * model/attn_fused.h — attention of one group of query heads in one pass over its rows
 * (flash-decoding): an online softmax over a range of rows gives a partial result, and
 * partials of disjoint ranges merge into the attention over their union. So a long lane
 * can be cut into ranges that different threads take, and one merge finishes it.
 *
 * Rows come as segments, each of one payload type (f32, f16, q8_0) read where it lies
 * (a store block, the batch's own K/V scratch), with an optional additive bias per row
 * (log of the row's mass). Scores are dot(q, k) * scale + bias, softmaxed in f32.
 *
 * The query heads may be several queries' (a tile of a prefill chunk: the g heads of a
 * kv-head for each of several tokens, one after another), so that every key and value row
 * read serves them all; a segment of the chunk's own rows then carries the causal mask
 * (mdl_attn_seg_t.mask_g): a row is seen by the queries at or after it.
 *
 * mdl_attn_part runs the row loops of a model/attn_ops.h table a tile of rows at a time,
 * reading each row where it lies (with many query heads, a tile is converted to f32 and its
 * two products go through sgemm); mdl_attn_part_ref is its plain-C twin, a row at a time. Pure functions on caller
 * memory: any thread. Nothing fails; arguments are the caller's to get right (asserts).
 */
#ifndef GISTD_MODEL_ATTN_FUSED_H
#define GISTD_MODEL_ATTN_FUSED_H

#include <stddef.h>
#include <stdint.h>

struct mdl_attn_ops;

/* A run of rows of one payload type. */
typedef struct mdl_attn_seg {
    uint32_t n;        /* rows */
    uint32_t type;     /* DT_F32, DT_F16 or DT_Q8_0 */
    const void *k;     /* row r's key at (const uint8_t *)k + r * stride, head_dim elements */
    const void *v;     /* row r's value, likewise */
    size_t stride;     /* bytes from one row to the next: ggml_row_bytes(type, head_dim) for
                          f16 and q8_0, any multiple of 4 for f32 */
    const float *bias; /* [n] added to each row's score, or NULL for 0 */
    uint32_t mask_g;   /* 0: every query head sees every row. Else heads come in queries of
                          mask_g (head h is query h / mask_g) and row r is seen by query k
                          only when r <= k + mask_off: a causal mask */
    int32_t mask_off;
} mdl_attn_seg_t;

/* Rows per tile of mdl_attn_part: scores of a tile sit in a [g][tile] buffer. */
#define MDL_ATTN_TILE 64

/* From this many query heads on (a tile of a prefill chunk's queries), mdl_attn_part makes
 * a tile's scores and sums its values as matrix products (sgemm) rather than with the
 * row loops of its table. */
#define MDL_ATTN_GEMM_HEADS 12

/* Floats of one partial: for each of g heads, hd sums of exp(score - max) * value, the
 * max, and the sum of exp(score - max). */
static inline size_t mdl_attn_part_floats(int g, int hd)
{
    return (size_t)g * ((size_t)hd + 2);
}

/* Floats of work buffer mdl_attn_part needs (an f32 tile of rows and a tile of scores). */
static inline size_t mdl_attn_work_floats(int g, int hd)
{
    return (size_t)MDL_ATTN_TILE * ((size_t)hd + (size_t)g);
}

/*
 * The partial over rows [r0, r1) of the segments, counted across them in order, for the g
 * query heads q[h * hd ..]; r0 < r1 <= the rows of all segments. scores, when not NULL,
 * receives each row's score: scores[h * sc_stride + (r - r0)] (H2O/TOVA accumulators need
 * the probabilities once the whole softmax is known: see mdl_attn_merge; a masked row's score
 * is -inf). A head that sees no row of the range gets a partial of max -inf and sum 0,
 * which the merge weighs 0 (every head must see some row of the merged ranges). work is
 * mdl_attn_work_floats(g, hd) floats, 64-byte aligned for speed. hd is a multiple of
 * ops->dim_multiple (and of 32 when a segment holds q8_0).
 */
void mdl_attn_part(const struct mdl_attn_ops *ops, const float *q, int g, int hd, float scale,
                   const mdl_attn_seg_t *segs, uint32_t n_segs, size_t r0, size_t r1, float *part,
                   float *work, float *scores, size_t sc_stride);

/* The same, a row at a time in plain C (the reference; needs no work buffer). */
void mdl_attn_part_ref(const float *q, int g, int hd, float scale, const mdl_attn_seg_t *segs,
                       uint32_t n_segs, size_t r0, size_t r1, float *part, float *scores,
                       size_t sc_stride);

/*
 * out[h * hd + d] = the attention of head h: the n_parts partials (parts[p *
 * mdl_attn_part_floats(g, hd) ..], over disjoint ranges) merged and normalised. lse, when
 * not NULL, receives per head the softmax's max and 1 / sum (lse[2h], lse[2h + 1]), so that a
 * row's probability is exp(score - lse[2h]) * lse[2h + 1].
 */
void mdl_attn_merge(const float *parts, int n_parts, int g, int hd, float *out, float *lse);

#endif
