/*
 * model/attn_ops.h — the inner loops of attention (model/attn_fused.c): scores of a group
 * of query heads against stored rows of keys, the probability-weighted sum of value rows,
 * exp-and-sum for the softmax, the rows' probabilities added to accumulators, and f16/q8_0
 * row conversion.
 *
 * Each has a portable version (the reference, plain C) and AVX2 / AVX-512 versions
 * (model/attn_ops_avx2.c, model/attn_ops_avx512.c). mdl_attn_ops() picks the best
 * table for the CPU and a head_dim; the tables are constant, so the choice needs no
 * mutable state. Pure functions on caller memory: any thread.
 */
#ifndef GISTD_MODEL_ATTN_OPS_H
#define GISTD_MODEL_ATTN_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct mdl_attn_ops {
    const char *name;
    /* Rows must have a multiple of this many elements (head_dim). */
    int dim_multiple;
    /* sc[h*sc_stride + r] = dot(q[h*hd ..], row r of K) * scale + (bias ? bias[r] : 0) for
     * h < g, r < n. K holds stored rows of a payload type (DT_F32, DT_F16, DT_Q8_0; q8_0
     * needs hd % 32 == 0), row r at (const uint8_t *)K + r * k_stride (bytes); each row is
     * converted once, in registers, for all g heads, and no f32 copy of it is written. */
    void (*scores)(uint32_t type, const float *q, int g, int hd, const void *K, size_t k_stride,
                   int n, float scale, const float *bias, float *sc, size_t sc_stride);
    /* out[h*hd + d] += sum_r p[h*p_stride + r] * (row r of V)[d] for h < g, d < hd; V as K
     * above. */
    void (*accum)(uint32_t type, float *out, int g, int hd, const void *V, size_t v_stride, int n,
                  const float *p, size_t p_stride);
    /* The largest of p[0..n), n >= 1 (NaN-free input). */
    float (*vmax)(const float *p, size_t n);
    /* p[i] = exp(p[i] - max) for i < n; returns the sum. Accurate to a few ulp. */
    float (*exp_sum)(float *p, size_t n, float max);
    /* acc[r] += sum over h < g of exp(sc[h*sc_stride + r] - lse[2h]) * lse[2h + 1] for r < n:
     * each row's probability, summed over the heads, given each head's softmax max and
     * 1 / sum (mdl_attn_merge's lse); a masked row's -inf score adds 0. */
    void (*prob_acc)(const float *sc, size_t sc_stride, int g, size_t n, const float *lse,
                     float *acc);
    /* n elements (a multiple of 32 for q8_0) of a payload type (DT_F16, DT_Q8_0) to f32. */
    void (*to_f32)(uint32_t type, const void *src, float *dst, size_t n);
} mdl_attn_ops_t;

/*
 * The AVX2 and AVX-512 loops ask for the lines of the rows this many bytes on in the payload
 * as they read them, a few rows' lines at a time: a steady stream like the weights'
 * (KERN_WEIGHT_AHEAD). A run of a lane's blocks is one stream (keys, values, next block's
 * keys ...), and the hardware's prefetch stops at every 4 KB page. With these asks the
 * AVX-512 loops alone read a row of runs of 8,192 rows a lane in 7.98 ns against 9.57 (f16)
 * and 6.60 against 10.28 (q8_0); 6 KB did as well, 2, 8 and 12 KB less (bench/depth.md,
 * "Rows asked for 4 KB ahead").
 */
#define MDL_ATTN_ROW_AHEAD 4096

/* Asks for every line of the bytes [rows, rows + bytes) MDL_ATTN_ROW_AHEAD bytes on. */
static inline void mdl_attn_row_ahead(const void *rows, size_t bytes)
{
    const uintptr_t a = (uintptr_t)rows + MDL_ATTN_ROW_AHEAD;
    for (uintptr_t l = a & ~(uintptr_t)63; l < a + bytes; l += 64)
        __builtin_prefetch((const void *)l, 0, 3);
}

extern const mdl_attn_ops_t mdl_attn_ops_portable;
extern const mdl_attn_ops_t mdl_attn_ops_avx2;
extern const mdl_attn_ops_t mdl_attn_ops_avx512;

/* The fastest table this CPU runs for rows of head_dim elements. */
const mdl_attn_ops_t *mdl_attn_ops(int head_dim);

/* A table by name ("portable", "avx2", "avx512"), or NULL when this CPU cannot run it. */
const mdl_attn_ops_t *mdl_attn_ops_named(const char *name);

#endif
