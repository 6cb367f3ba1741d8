/* model/attn_ops.c — the portable (reference) attention loops and the choice of a table. */
#include "model/attn_ops.h"

#include <math.h>
#include <string.h>

#include "common/dtype.h"
#include "model/gguf.h"

static float vmax_portable(const float *p, size_t n)
{
    float m = p[0];
    for (size_t i = 1; i < n; i++)
        m = p[i] > m ? p[i] : m;
    return m;
}

static float exp_sum_portable(float *p, size_t n, float max)
{
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        p[i] = expf(p[i] - max);
        sum += p[i];
    }
    return sum;
}

static void prob_acc_portable(const float *sc, size_t sc_stride, int g, size_t n, const float *lse,
                              float *acc)
{
    for (size_t r = 0; r < n; r++) {
        float tot = 0.0f;
        for (int h = 0; h < g; h++)
            tot += expf(sc[(size_t)h * sc_stride + r] - lse[2 * h]) * lse[2 * h + 1];
        acc[r] += tot;
    }
}

static void to_f32_portable(uint32_t type, const void *src, float *dst, size_t n)
{
    dt_to_f32(type, src, dst, n);
}

/* Stored rows are read 32 elements at a time (a q8_0 block), converted with dt_to_f32. */
enum { ROW_CHUNK = 32 };

/* Elements d .. d+m of a stored row, as f32 into x; d a multiple of ROW_CHUNK. */
static void row_chunk(uint32_t type, const void *row, int d, int m, float *x)
{
    dt_to_f32(type, (const uint8_t *)row + ggml_row_bytes(type, (uint64_t)d), x, (size_t)m);
}

static void scores_portable(uint32_t type, const float *q, int g, int hd, const void *K,
                            size_t k_stride, int n, float scale, const float *bias, float *sc,
                            size_t sc_stride)
{
    float x[ROW_CHUNK];
    for (int r = 0; r < n; r++) {
        const uint8_t *k = (const uint8_t *)K + (size_t)r * k_stride;
        for (int h = 0; h < g; h++)
            sc[(size_t)h * sc_stride + r] = 0.0f;
        for (int d = 0; d < hd; d += ROW_CHUNK) {
            const int m = hd - d < ROW_CHUNK ? hd - d : ROW_CHUNK;
            row_chunk(type, k, d, m, x);
            for (int h = 0; h < g; h++) {
                const float *qh = q + (size_t)h * hd + d;
                float s = 0.0f;
                for (int i = 0; i < m; i++)
                    s += qh[i] * x[i];
                sc[(size_t)h * sc_stride + r] += s;
            }
        }
        for (int h = 0; h < g; h++)
            sc[(size_t)h * sc_stride + r] =
                sc[(size_t)h * sc_stride + r] * scale + (bias ? bias[r] : 0.0f);
    }
}

static void accum_portable(uint32_t type, float *out, int g, int hd, const void *V, size_t v_stride,
                           int n, const float *p, size_t p_stride)
{
    float x[ROW_CHUNK];
    for (int r = 0; r < n; r++) {
        const uint8_t *v = (const uint8_t *)V + (size_t)r * v_stride;
        for (int d = 0; d < hd; d += ROW_CHUNK) {
            const int m = hd - d < ROW_CHUNK ? hd - d : ROW_CHUNK;
            row_chunk(type, v, d, m, x);
            for (int h = 0; h < g; h++) {
                const float w = p[(size_t)h * p_stride + r];
                float *o = out + (size_t)h * hd + d;
                for (int i = 0; i < m; i++)
                    o[i] += w * x[i];
            }
        }
    }
}

const mdl_attn_ops_t mdl_attn_ops_portable = {
    .name = "portable",
    .dim_multiple = 1,
    .vmax = vmax_portable,
    .exp_sum = exp_sum_portable,
    .prob_acc = prob_acc_portable,
    .to_f32 = to_f32_portable,
    .scores = scores_portable,
    .accum = accum_portable,
};

static int runs(const char *name)
{
    if (!strcmp(name, "portable"))
        return 1;
    __builtin_cpu_init();
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (!strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    return 0;
}

const mdl_attn_ops_t *mdl_attn_ops_named(const char *name)
{
    if (!runs(name))
        return NULL;
    if (!strcmp(name, "avx512"))
        return &mdl_attn_ops_avx512;
    if (!strcmp(name, "avx2"))
        return &mdl_attn_ops_avx2;
    return &mdl_attn_ops_portable;
}

const mdl_attn_ops_t *mdl_attn_ops(int head_dim)
{
    static const char *const order[] = {"avx512", "avx2"};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        const mdl_attn_ops_t *o = mdl_attn_ops_named(order[i]);
        if (o && head_dim % o->dim_multiple == 0)
            return o;
    }
    return &mdl_attn_ops_portable;
}
