/*
 * model/kernels.c — matrix products of stored weights with f32 activations:
 * the naive references, the portable path, the run-time choice of SIMD path,
 * the OpenMP row split for decode and the OpenBLAS path for prefill.
 *
 * The chosen path lives in one static pointer set once (pthread_once) from
 * __builtin_cpu_supports; kern_force_simd replaces it for tests and benchmarks.
 * That pointer is the only mutable state in the file.
 */
#include "model/kernels.h"

#include "common/dtype.h"
#include "common/err.h"
#include "model/kernels_impl.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Below this much work (weight bytes times vectors) kern_matmul_multi runs on the
 * calling thread: waking the pool costs more than it saves. */
#define PAR_MIN_BYTES (64 * 1024)
/* Rows handed out are whole units of this many, so no two threads write the same cache
 * line of y. */
#define ROW_ALIGN KERN_ROW_UNIT
/* A fused product is cut into at most this many chunks per thread (taken in turn, so a
 * thread that was held up leaves its share to the others), of at least CHUNK_MIN_BYTES of
 * weights when the product is small. */
#define CHUNKS_PER_THREAD 8
#define CHUNK_MIN_BYTES   (32 * 1024)
/* Rows of W the row kernels take through all vectors of a batch before moving on. */
#define ROW_BLOCK_BYTES (64 * 1024)
/* Vectors that pass over one block of rows together (a multiple of KERN_MAX_NX). */
#define VEC_BLOCK 64
/* Batches of this many vectors or more of a float type go through sgemm: below it the row
 * kernels, which read W from memory once, are faster (bench_kernels batch, one thread). */
#define GEMM_MIN_B 32
/* Target size of one dequantised f32 tile of W for sgemm. */
#define GEMM_TILE_BYTES (2u << 20)

static int type_slot(uint32_t type)
{
    switch (type) {
    case DT_F32:
        return KT_F32;
    case DT_F16:
        return KT_F16;
    case DT_BF16:
        return KT_BF16;
    case DT_Q8_0:
        return KT_Q8_0;
    case DT_Q4_0:
        return KT_Q4_0;
    case DT_Q5_0:
        return KT_Q5_0;
    case DT_Q5_1:
        return KT_Q5_1;
    case DT_Q4_K:
        return KT_Q4_K;
    case DT_Q5_K:
        return KT_Q5_K;
    case DT_Q6_K:
        return KT_Q6_K;
    case KERN_TYPE_Q8_0_R16:
        return KT_Q8_0_R16;
    default:
        return -1;
    }
}

/* Bytes of one stored row of n elements (n a multiple of 32 for q8_0/q4_0, of 256 for the
 * K-quants). */
static size_t row_bytes(int kt, int n)
{
    switch (kt) {
    case KT_F32:
        return (size_t)n * 4;
    case KT_F16:
    case KT_BF16:
        return (size_t)n * 2;
    case KT_Q8_0:
    case KT_Q8_0_R16:
        return (size_t)(n / QK8_0) * sizeof(block_q8_0);
    case KT_Q4_0:
        return (size_t)(n / QK4_0) * sizeof(block_q4_0);
    case KT_Q5_0:
        return (size_t)(n / QK5_0) * sizeof(block_q5_0);
    case KT_Q5_1:
        return (size_t)(n / QK5_0) * sizeof(block_q5_1);
    case KT_Q4_K:
        return (size_t)(n / QK_K) * sizeof(block_q4_K);
    case KT_Q5_K:
        return (size_t)(n / QK_K) * sizeof(block_q5_K);
    case KT_Q6_K:
        return (size_t)(n / QK_K) * sizeof(block_q6_K);
    default:
        return 0;
    }
}

bool kern_type_supported(uint32_t type)
{
    return type_slot(type) >= 0;
}

size_t kern_row_bytes(uint32_t type, int n_cols)
{
    int kt = type_slot(type);
    return kt >= 0 ? row_bytes(kt, n_cols) : 0;
}

/* ---- choice of path ---------------------------------------------------------------------- */

static const kern_path_t *chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static bool cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}

static bool cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

/* The path of a name, or NULL with *rc set (ERR_UNSUPPORTED, ERR_INVAL). */
static const kern_path_t *path_named(const char *name, int *rc)
{
    static const struct {
        const char *name;
        const kern_path_t *path;
        bool (*cpu_has)(void);
    } paths[] = {
        {"avx512", &kern_path_avx512, cpu_has_avx512},
        {"avx512-fma", &kern_path_avx512_fma, cpu_has_avx512},
        {"avx2", &kern_path_avx2, cpu_has_avx2},
        {"portable", &kern_path_portable, NULL},
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (strcmp(name, paths[i].name) != 0)
            continue;
        if (paths[i].cpu_has && !paths[i].cpu_has()) {
            *rc = ERR_UNSUPPORTED;
            return NULL;
        }
        return paths[i].path;
    }
    *rc = ERR_INVAL;
    return NULL;
}

static void choose_path(void)
{
    const char *env = getenv("GISTD_SIMD");
    int rc;
    if (env && *env && (chosen = path_named(env, &rc)) != NULL)
        return;
    if (cpu_has_avx512())
        chosen = &kern_path_avx512;
    else if (cpu_has_avx2())
        chosen = &kern_path_avx2;
    else
        chosen = &kern_path_portable;
}

static const kern_path_t *path(void)
{
    pthread_once(&chosen_once, choose_path);
    return chosen;
}

const char *kern_simd_name(void)
{
    return path()->name;
}

int kern_force_simd(const char *name)
{
    int rc = 0;
    const kern_path_t *p = path_named(name, &rc);
    if (!p)
        return rc;
    path(); /* the first choice is made before, so that it cannot undo this one */
    chosen = p;
    return 0;
}

/* ---- references ---------------------------------------------------------------------------- */

void kern_get_row(uint32_t type, const void *W, int n_cols, int r, float *out)
{
    int kt = type_slot(type);
    assert(kt >= 0);
    if (kt == KT_Q8_0_R16) {
        int8_t q[32];
        for (int b = 0; b < n_cols / 32; b++) {
            float d = kern_r16_block(W, row_bytes(kt, n_cols), n_cols / 32, r, b, q);
            for (int j = 0; j < 32; j++)
                out[32 * b + j] = d * q[j];
        }
        return;
    }
    const uint8_t *row = (const uint8_t *)W + (size_t)r * row_bytes(kt, n_cols);
    int rc = dt_to_f32(type, row, out, (size_t)n_cols);
    assert(rc == 0);
    (void)rc;
}

void kern_matmul_ref(uint32_t type, const void *W, const float *X, float *Y, int n_rows, int n_cols,
                     int n_b)
{
    assert(kern_type_supported(type));
    float *w = malloc((size_t)n_cols * sizeof *w);
    assert(w);
    for (int r = 0; r < n_rows; r++) {
        kern_get_row(type, W, n_cols, r, w);
        for (int b = 0; b < n_b; b++) {
            const float *x = X + (size_t)b * n_cols;
            double s = 0;
            for (int c = 0; c < n_cols; c++)
                s += (double)w[c] * x[c];
            Y[(size_t)b * n_rows + r] = (float)s;
        }
    }
    free(w);
}

void kern_matvec_ref(uint32_t type, const void *W, const float *x, float *y, int n_rows, int n_cols)
{
    kern_matmul_ref(type, W, x, y, n_rows, n_cols, 1);
}

/* ---- shared activation quantisation -------------------------------------------------------- */

float kern_quant_block(const float *x, int8_t *q)
{
    float amax = 0;
    for (int i = 0; i < 32; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax; /* (fmaxf is a libm call here) */
    float d = amax / 127.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    /* round to nearest even (the default mode), as the SIMD conversions do */
    for (int i = 0; i < 32; i++)
        q[i] = (int8_t)nearbyintf(x[i] * id);
    return d;
}

static size_t round64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

size_t kern_qx_simple_bytes(int n_cols)
{
    return round64((size_t)n_cols + (size_t)(n_cols / 32) * 8);
}

void kern_qx_simple_make(const float *x, int n_cols, uint8_t *out)
{
    int nb = n_cols / 32;
    int8_t *qs = (int8_t *)out;
    float *d = (float *)(out + n_cols);
    int32_t *sum = (int32_t *)(d + nb);
    for (int k = 0; k < nb; k++) {
        d[k] = kern_quant_block(x + 32 * k, qs + 32 * k);
        int32_t s = 0;
        for (int i = 0; i < 32; i++)
            s += qs[32 * k + i];
        sum[k] = s;
    }
}

/* ---- portable path --------------------------------------------------------------------------- */

/* Plain loops; four partial sums per dot so the compiler may vectorise them. */

static float dot_f32(const float *w, const float *x, int n)
{
    float s[4] = {0, 0, 0, 0};
    int c = 0;
    for (; c + 4 <= n; c += 4)
        for (int i = 0; i < 4; i++)
            s[i] += w[c + i] * x[c + i];
    for (; c < n; c++)
        s[0] += w[c] * x[c];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static void rows_f32_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                              int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    for (int r = r0; r < r1; r++)
        for (int i = 0; i < nx; i++)
            y[i * y_stride + r] = dot_f32((const float *)(W + r * w_stride),
                                          (const float *)(x + i * x_stride), n_cols);
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bf16_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

/* f16 -> f32 without branches or calls (so the loops vectorise): normal numbers by
 * rebiasing the exponent with one multiply, subnormals through a magic-number subtract;
 * exact for every input, infinities and NaNs included. */
static inline float f16_f32(uint16_t h)
{
    const uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    const float normalized = bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
    const float denormalized = bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t sub = 0u - (uint32_t)(two_w < (1u << 27)); /* all ones for subnormals */
    return bits_f32(sign | (f32_bits(denormalized) & sub) | (f32_bits(normalized) & ~sub));
}

/* The row is converted to f32 in pieces of this many elements, then dotted. */
#define PIECE 256

static inline __attribute__((always_inline)) void
rows_half_portable(const int kt, const uint8_t *W, size_t w_stride, const uint8_t *x,
                   size_t x_stride, int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    float buf[PIECE];
    for (int r = r0; r < r1; r++) {
        const uint16_t *w = (const uint16_t *)(W + r * w_stride);
        float acc[KERN_MAX_NX] = {0};
        for (int c0 = 0; c0 < n_cols; c0 += PIECE) {
            int n = n_cols - c0 < PIECE ? n_cols - c0 : PIECE;
            /* a constant trip count lets -O2 vectorise the whole pieces */
            if (kt == KT_F16 && n == PIECE)
                for (int c = 0; c < PIECE; c++)
                    buf[c] = f16_f32(w[c0 + c]);
            else if (kt == KT_F16)
                for (int c = 0; c < n; c++)
                    buf[c] = f16_f32(w[c0 + c]);
            else if (n == PIECE)
                for (int c = 0; c < PIECE; c++)
                    buf[c] = bf16_f32(w[c0 + c]);
            else
                for (int c = 0; c < n; c++)
                    buf[c] = bf16_f32(w[c0 + c]);
            for (int i = 0; i < nx; i++)
                acc[i] += dot_f32(buf, (const float *)(x + i * x_stride) + c0, n);
        }
        for (int i = 0; i < nx; i++)
            y[i * y_stride + r] = acc[i];
    }
}

static void rows_f16_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                              int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_half_portable(KT_F16, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

static void rows_bf16_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                               int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_half_portable(KT_BF16, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

static void rows_q_portable(int kt, const uint8_t *W, size_t w_stride, const uint8_t *x,
                            size_t x_stride, int nx, int n_cols, float *y, size_t y_stride, int r0,
                            int r1)
{
    int nb = n_cols / 32;
    size_t bsz = kt == KT_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        for (int i = 0; i < nx; i++) {
            const uint8_t *qx = x + i * x_stride;
            const int8_t *xq = (const int8_t *)qx;
            const float *xd = (const float *)(qx + n_cols);
            float acc = 0;
            for (int k = 0; k < nb; k++) {
                const uint8_t *blk = row + k * bsz;
                uint16_t dh;
                memcpy(&dh, blk, 2);
                int32_t s = 0;
                if (kt == KT_Q8_0) {
                    const int8_t *wq = (const int8_t *)(blk + 2);
                    for (int j = 0; j < 32; j++)
                        s += wq[j] * xq[32 * k + j];
                } else {
                    const uint8_t *wq = blk + 2;
                    for (int j = 0; j < 16; j++) {
                        s += ((wq[j] & 15) - 8) * xq[32 * k + j];
                        s += ((wq[j] >> 4) - 8) * xq[32 * k + j + 16];
                    }
                }
                acc += f16_f32(dh) * xd[k] * (float)s;
            }
            y[i * y_stride + r] = acc;
        }
    }
}

static void rows_q8_0_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                               int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_q_portable(KT_Q8_0, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

static void rows_q4_0_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                               int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_q_portable(KT_Q4_0, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

/* ---- Q8_0 packed 16 rows at a time (layout: kernels_impl.h) -------------------------------- */

/* GISTD_PACK: "1" packs Q8_0 on every path, "0" on none, else the path decides. */
static int pack_env = -1;
static pthread_once_t pack_once = PTHREAD_ONCE_INIT;

static void read_pack_env(void)
{
    const char *env = getenv("GISTD_PACK");
    pack_env = env && !strcmp(env, "1") ? 1 : env && !strcmp(env, "0") ? 0 : -1;
}

uint32_t kern_pack_type(uint32_t type, int n_rows, int n_cols)
{
    pthread_once(&pack_once, read_pack_env);
    const bool packs = pack_env >= 0 ? pack_env == 1 : path()->packs_q8_0;
    if (type != DT_Q8_0 || !packs || n_rows < 1 || n_cols < 32 || n_cols % 32)
        return 0;
    return KERN_TYPE_Q8_0_R16;
}

size_t kern_packed_bytes(uint32_t packed, int n_rows, int n_cols)
{
    assert(packed == KERN_TYPE_Q8_0_R16);
    return (size_t)R16_ROWS(n_rows) * row_bytes(KT_Q8_0_R16, n_cols);
}

void kern_pack(uint32_t type, uint32_t packed, const void *W, int n_rows, int n_cols, void *out)
{
    assert(type == DT_Q8_0 && packed == KERN_TYPE_Q8_0_R16 && n_cols % 32 == 0);
    (void)type;
    const int nb = n_cols / 32;
    const size_t rb = row_bytes(KT_Q8_0_R16, n_cols);
    memset(out, 0, kern_packed_bytes(packed, n_rows, n_cols));
    for (int r = 0; r < n_rows; r++) {
        uint8_t *grp = (uint8_t *)out + (size_t)(r / 16) * 16 * rb;
        const int l = r % 16;
        for (int b = 0; b < nb; b++) {
            /* byte by byte: a file may place a tensor at any offset */
            const uint8_t *blk = (const uint8_t *)W + ((size_t)r * nb + b) * sizeof(block_q8_0);
            memcpy(grp + kern_r16_scales_at(b) + 2 * l, blk, 2);
            uint8_t *qb = grp + kern_r16_quants_at(nb, b) + 4 * l;
            for (int k = 0; k < 8; k++)
                for (int j = 0; j < 4; j++)
                    qb[64 * k + j] = blk[2 + 4 * k + j] ^ 0x80;
        }
    }
    /* the padding rows' scales are 0 and their quants 128 (zero) */
    for (int r = n_rows; r < R16_ROWS(n_rows); r++) {
        uint8_t *grp = (uint8_t *)out + (size_t)(r / 16) * 16 * rb;
        for (int b = 0; b < nb; b++)
            for (int k = 0; k < 8; k++)
                memset(grp + kern_r16_quants_at(nb, b) + 64 * k + 4 * (r % 16), 0x80, 4);
    }
}

float kern_r16_block(const uint8_t *W, size_t rb, int nb, int r, int b, int8_t q[32])
{
    const uint8_t *grp = kern_r16_group(W, rb, r / 16);
    const int l = r % 16;
    uint16_t dh;
    memcpy(&dh, grp + kern_r16_scales_at(b) + 2 * l, 2);
    const uint8_t *qb = grp + kern_r16_quants_at(nb, b) + 4 * l;
    for (int k = 0; k < 8; k++)
        for (int j = 0; j < 4; j++)
            q[4 * k + j] = (int8_t)(qb[64 * k + j] ^ 0x80);
    return f16_f32(dh);
}

void kern_rows_q8_0_r16_simple(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                               int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    const int nb = n_cols / 32;
    int8_t q[32];
    for (int r = r0; r < r1; r++) {
        for (int i = 0; i < nx; i++) {
            const int8_t *xq = (const int8_t *)(x + i * x_stride);
            const float *xd = (const float *)(x + i * x_stride + n_cols);
            float acc = 0;
            for (int b = 0; b < nb; b++) {
                float d = kern_r16_block(W, w_stride, nb, r, b, q);
                int32_t s = 0;
                for (int j = 0; j < 32; j++)
                    s += q[j] * xq[32 * b + j];
                acc += d * xd[b] * (float)s;
            }
            y[i * y_stride + r] = acc;
        }
    }
}

void kern_rows_q8_0_r16_f32(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                            int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    const int nb = n_cols / 32;
    int8_t q[32];
    for (int r = r0; r < r1; r++) {
        for (int i = 0; i < nx; i++) {
            const float *xf = (const float *)(x + i * x_stride);
            float acc = 0;
            for (int b = 0; b < nb; b++) {
                float d = kern_r16_block(W, w_stride, nb, r, b, q), s = 0;
                for (int j = 0; j < 32; j++)
                    s += (float)q[j] * xf[32 * b + j];
                acc += d * s;
            }
            y[i * y_stride + r] = acc;
        }
    }
}

static void to_f32_f32(const uint8_t *src, float *dst, int n)
{
    memcpy(dst, src, (size_t)n * 4);
}
static void to_f32_f16(const uint8_t *src, float *dst, int n)
{
    dt_to_f32(DT_F16, src, dst, (size_t)n);
}
static void to_f32_bf16(const uint8_t *src, float *dst, int n)
{
    dt_to_f32(DT_BF16, src, dst, (size_t)n);
}
static void to_f32_q8_0(const uint8_t *src, float *dst, int n)
{
    dt_to_f32(DT_Q8_0, src, dst, (size_t)n);
}
static void to_f32_q4_0(const uint8_t *src, float *dst, int n)
{
    dt_to_f32(DT_Q4_0, src, dst, (size_t)n);
}

static void swiglu_portable(float *g, const float *u, int n)
{
    for (int i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const kern_path_t kern_path_portable = {
    .name = "portable",
    .rows = {rows_f32_portable, rows_f16_portable, rows_bf16_portable, rows_q8_0_portable,
             rows_q4_0_portable, kern_rows_q5_0_portable, kern_rows_q5_1_portable,
             kern_rows_q4_K_portable, kern_rows_q5_K_portable, kern_rows_q6_K_portable},
    .to_f32 = {to_f32_f32, to_f32_f16, to_f32_bf16, to_f32_q8_0, to_f32_q4_0, kern_to_f32_q5_0,
               kern_to_f32_q5_1, kern_to_f32_q4_K, kern_to_f32_q5_K, kern_to_f32_q6_K},
    .rows[KT_Q8_0_R16] = kern_rows_q8_0_r16_simple,
    .qx_bytes = kern_qx_simple_bytes,
    .qx_make = kern_qx_simple_make,
    .swiglu = swiglu_portable,
};

/* ---- fused products ------------------------------------------------------------------------ */

struct kern_scratch {
    uint8_t *qx; /* kern_matmul_multi's quantised activations */
    size_t qx_cap;
    int n_thr;
    float **tile;     /* [n_thr] each thread's f32 tile of W for sgemm, made on first use */
    size_t *tile_cap; /* [n_thr] floats */
};

int kern_scratch_new(kern_scratch_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : ERR_NOMEM;
}

void kern_scratch_destroy(kern_scratch_t **p)
{
    if (!p || !*p)
        return;
    kern_scratch_t *ks = *p;
    for (int t = 0; t < ks->n_thr; t++)
        free(ks->tile[t]);
    free(ks->tile);
    free(ks->tile_cap);
    free(ks->qx);
    free(ks);
    *p = NULL;
}

int kern_scratch_reserve(kern_scratch_t *ks, int n_threads)
{
    if (n_threads <= ks->n_thr)
        return 0;
    float **tile = realloc(ks->tile, sizeof *tile * (size_t)n_threads);
    if (!tile)
        return ERR_NOMEM;
    ks->tile = tile;
    size_t *cap = realloc(ks->tile_cap, sizeof *cap * (size_t)n_threads);
    if (!cap)
        return ERR_NOMEM;
    ks->tile_cap = cap;
    for (int t = ks->n_thr; t < n_threads; t++) {
        ks->tile[t] = NULL;
        ks->tile_cap[t] = 0;
    }
    ks->n_thr = n_threads;
    return 0;
}

/* Bytes of one vector's quantised activations on a path: its own layout, then the K
 * layout. */
static size_t qx_total(const kern_path_t *p, int n_cols)
{
    return p->qx_bytes(n_cols) + kern_qk_bytes(n_cols);
}

static void qx_make(const kern_path_t *p, const float *x, int n_cols, uint8_t *out,
                    unsigned layouts)
{
    if (layouts & KERN_QX_BLOCKS)
        p->qx_make(x, n_cols, out);
    if (layouts & KERN_QX_K)
        kern_qk_make(x, n_cols, out + p->qx_bytes(n_cols));
}

size_t kern_qx_bytes(int n_cols)
{
    return qx_total(path(), n_cols);
}

void kern_qx_make(const float *x, int n_cols, void *qx)
{
    qx_make(path(), x, n_cols, qx, KERN_QX_BLOCKS | KERN_QX_K);
}

void kern_qx_make_some(const float *x, int n_cols, void *qx, unsigned layouts)
{
    qx_make(path(), x, n_cols, qx, layouts);
}

void kern_swiglu(float *g, const float *u, int n)
{
    path()->swiglu(g, u, n);
}

bool kern_type_quantises(uint32_t type)
{
    int kt = type_slot(type);
    return kt >= 0 && kern_slot_quant(kt);
}

unsigned kern_type_qx(uint32_t type)
{
    const int kt = type_slot(type);
    if (kt < 0 || !kern_slot_quant(kt))
        return 0;
    return kern_slot_k(kt) ? KERN_QX_K : KERN_QX_BLOCKS;
}

static bool is_quant(int kt)
{
    return kern_slot_quant(kt);
}

/* Rows [r0, r1) of chunk c of nc: contiguous, whole units of ROW_ALIGN rows. */
static void chunk_rows(int n_rows, int c, int nc, int *r0, int *r1)
{
    int units = (n_rows + ROW_ALIGN - 1) / ROW_ALIGN;
    int a = (int)((long)units * c / nc) * ROW_ALIGN;
    int b = (int)((long)units * (c + 1) / nc) * ROW_ALIGN;
    *r0 = a < n_rows ? a : n_rows;
    *r1 = b < n_rows ? b : n_rows;
}

/* Whether matrix slot kt in a product of n_b vectors goes through sgemm. */
static bool by_gemm(int how, int kt, int n_b)
{
    if (kt == KT_Q8_0_R16) /* no f32 rows to convert a tile from */
        return false;
    if (how)
        return how == KERN_BY_GEMM;
    /* Q8_0/Q4_0 (and K-quant) int8 row kernels outrun dequantising to f32 for sgemm at every batch
     * size (bench_kernels batch/prefill), so only float types switch to OpenBLAS. */
    return !is_quant(kt) && n_b >= GEMM_MIN_B;
}

/* Rows [r0, r1) of one matrix by the row kernels: with more vectors than one pass serves,
 * blocks of VEC_BLOCK vectors times ROW_BLOCK_BYTES of rows, so that both stay in L2 while
 * every vector of the block passes over every row of the block. */
static void rows_range(const kern_path_t *p, int kt, const kern_mat_t *m, const kern_act_t *a,
                       int r0, int r1)
{
    const int n_cols = a->n_cols, n_b = a->n_b, n_rows = m->n_rows;
    const size_t w_stride = row_bytes(kt, n_cols);
    const uint8_t *x = (const uint8_t *)a->x;
    size_t x_stride = (size_t)n_cols * sizeof(float);
    if (is_quant(kt)) {
        assert(a->qx);
        x = a->qx;
        x_stride = qx_total(p, n_cols);
        if (kern_slot_k(kt))
            x += p->qx_bytes(n_cols);
    }
    kern_rows_fn fn = p->rows[kt];
    int rblock = n_b <= KERN_MAX_NX ? r1 - r0 : (int)(ROW_BLOCK_BYTES / w_stride) + 1;
    if (kt == KT_Q8_0_R16) /* whole groups: a packed kernel computes every group it touches */
        rblock = (rblock + ROW_ALIGN - 1) & ~(ROW_ALIGN - 1);
    for (int vb = 0; vb < n_b; vb += VEC_BLOCK) {
        int ve = n_b - vb < VEC_BLOCK ? n_b : vb + VEC_BLOCK;
        for (int rb = r0; rb < r1; rb += rblock) {
            int re = r1 - rb < rblock ? r1 : rb + rblock;
            for (int b = vb; b < ve; b += KERN_MAX_NX) {
                int nx = ve - b < KERN_MAX_NX ? ve - b : KERN_MAX_NX;
                fn(m->W, w_stride, x + b * x_stride, x_stride, nx, n_cols,
                   m->Y + (size_t)b * n_rows, (size_t)n_rows, rb, re);
            }
        }
    }
}

/* Rows of W converted at a time for sgemm: about GEMM_TILE_BYTES of f32, whole units. */
static int tile_rows(int n_cols)
{
    int rows = (int)(GEMM_TILE_BYTES / ((size_t)n_cols * sizeof(float)));
    rows &= ~(ROW_ALIGN - 1);
    return rows < ROW_ALIGN ? ROW_ALIGN : rows;
}

/* The calling thread's f32 tile, grown to n floats; NULL when there is no memory. */
static float *thread_tile(kern_scratch_t *ks, size_t n)
{
    int t = omp_get_thread_num();
    if (!ks || t >= ks->n_thr)
        return NULL;
    if (ks->tile_cap[t] < n) {
        free(ks->tile[t]);
        ks->tile[t] = aligned_alloc(64, round64(n * sizeof(float)));
        ks->tile_cap[t] = ks->tile[t] ? n : 0;
    }
    return ks->tile[t];
}

/* Rows [r0, r1) of one matrix through sgemm on the calling thread (OpenBLAS runs one
 * thread inside a parallel region); other types than f32 are converted a tile at a time.
 * Without memory for a tile, the row kernels do it. */
static void gemm_range(const kern_path_t *p, int kt, const kern_mat_t *m, const kern_act_t *a,
                       int r0, int r1, kern_scratch_t *ks)
{
    const int n_cols = a->n_cols, n_b = a->n_b, n_rows = m->n_rows;
    const size_t w_stride = row_bytes(kt, n_cols);
    const uint8_t *W = m->W;
    if (kt == KT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_b, r1 - r0, n_cols, 1.0f, a->x,
                    n_cols, (const float *)(W + (size_t)r0 * w_stride), n_cols, 0.0f, m->Y + r0,
                    n_rows);
        return;
    }
    const int piece = tile_rows(n_cols);
    float *tile = thread_tile(ks, (size_t)piece * n_cols);
    if (!tile) {
        rows_range(p, kt, m, a, r0, r1);
        return;
    }
    kern_to_f32_fn conv = p->to_f32[kt];
    for (int t0 = r0; t0 < r1; t0 += piece) {
        int nt = r1 - t0 < piece ? r1 - t0 : piece;
        for (int r = 0; r < nt; r++)
            conv(W + (size_t)(t0 + r) * w_stride, tile + (size_t)r * n_cols, n_cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_b, nt, n_cols, 1.0f, a->x, n_cols,
                    tile, n_cols, 0.0f, m->Y + t0, n_rows);
    }
}

/* Chunks of a product: one per thread when sgemm does the work (each call packs X again);
 * else up to CHUNKS_PER_THREAD per thread, of CHUNK_MIN_BYTES of weights or more, and no
 * more than the largest matrix has units. */
static int product_chunks(int how, int n_mats, const kern_mat_t *mats, int n_cols, int n_b, int nt)
{
    if (nt <= 1)
        return 1;
    size_t bytes = 0;
    int units = 1;
    for (int i = 0; i < n_mats; i++) {
        int kt = type_slot(mats[i].type);
        if (by_gemm(how, kt, n_b))
            return nt;
        bytes += row_bytes(kt, n_cols) * (size_t)mats[i].n_rows;
        int u = (mats[i].n_rows + ROW_ALIGN - 1) / ROW_ALIGN;
        units = u > units ? u : units;
    }
    size_t by_size = bytes * (size_t)(n_b < KERN_MAX_NX ? n_b : KERN_MAX_NX) / CHUNK_MIN_BYTES;
    int nc = CHUNKS_PER_THREAD * nt;
    if (by_size < (size_t)nc)
        nc = by_size > (size_t)nt ? (int)by_size : nt;
    return nc < units ? nc : units;
}

static void multi_team(int how, int n_mats, const kern_mat_t *mats, const kern_act_t *a,
                       kern_scratch_t *ks, kern_done_fn done, void *ctx)
{
    const kern_path_t *p = path();
    const int nc = product_chunks(how, n_mats, mats, a->n_cols, a->n_b, omp_get_num_threads());
#pragma omp for schedule(dynamic, 1) nowait
    for (int c = 0; c < nc; c++) {
        int r0[KERN_MAX_MATS], r1[KERN_MAX_MATS];
        for (int i = 0; i < n_mats; i++) {
            chunk_rows(mats[i].n_rows, c, nc, &r0[i], &r1[i]);
            if (r0[i] == r1[i])
                continue;
            int kt = type_slot(mats[i].type);
            if (by_gemm(how, kt, a->n_b))
                gemm_range(p, kt, &mats[i], a, r0[i], r1[i], ks);
            else
                rows_range(p, kt, &mats[i], a, r0[i], r1[i]);
        }
        if (done)
            done(ctx, r0, r1);
    }
}

void kern_matmul_multi_team(int n_mats, const kern_mat_t *mats, const kern_act_t *a,
                            kern_scratch_t *ks, kern_done_fn done, void *ctx)
{
    assert(n_mats >= 0 && n_mats <= KERN_MAX_MATS);
    if (a->n_b > 0)
        multi_team(0, n_mats, mats, a, ks, done, ctx);
}

void kern_matmul_rows(const kern_mat_t *mat, const kern_act_t *a, int r0, int r1)
{
    int kt = type_slot(mat->type);
    assert(kt >= 0);
    if (r0 < r1 && a->n_b > 0)
        rows_range(path(), kt, mat, a, r0, r1);
}

/* kern_matmul_multi with the method picked (0: by batch size and type). */
static int multi(int how, int n_mats, const kern_mat_t *mats, const float *X, int n_cols, int n_b,
                 kern_scratch_t *ks, kern_done_fn done, void *ctx)
{
    assert(n_mats >= 0 && n_mats <= KERN_MAX_MATS);
    if (n_b <= 0 || n_mats == 0)
        return 0;
    const kern_path_t *p = path();
    unsigned layouts = 0; /* the quantised activations' layouts the products read */
    size_t bytes = 0;
    for (int i = 0; i < n_mats; i++) {
        int kt = type_slot(mats[i].type);
        assert(kt >= 0);
        assert(!is_quant(kt) || n_cols % (kern_slot_k(kt) ? QK_K : 32) == 0);
        layouts |= kern_type_qx(mats[i].type);
        bytes += row_bytes(kt, n_cols) * (size_t)mats[i].n_rows;
    }
    const int nt = omp_get_max_threads();
    const bool quant = layouts != 0;
    const size_t qxb = quant ? qx_total(p, n_cols) : 0;
    if (kern_scratch_reserve(ks, nt))
        return ERR_NOMEM;
    if (qxb * (size_t)n_b > ks->qx_cap) {
        free(ks->qx);
        ks->qx = aligned_alloc(64, qxb * (size_t)n_b);
        ks->qx_cap = ks->qx ? qxb * (size_t)n_b : 0;
        if (!ks->qx)
            return ERR_NOMEM;
    }
    const kern_act_t a = {.x = X, .qx = quant ? ks->qx : NULL, .n_cols = n_cols, .n_b = n_b};
    /* a few vectors are quantised here: sharing them out would cost a barrier */
    const bool quant_shared = quant && n_b > KERN_MAX_NX;
    for (int b = 0; quant && !quant_shared && b < n_b; b++)
        qx_make(p, X + (size_t)b * n_cols, n_cols, ks->qx + b * qxb, layouts);
    const bool par = nt > 1 && bytes * (size_t)n_b >= PAR_MIN_BYTES;
#pragma omp parallel if (par)
    {
        if (quant_shared) {
#pragma omp for schedule(static)
            for (int b = 0; b < n_b; b++)
                qx_make(p, X + (size_t)b * n_cols, n_cols, ks->qx + b * qxb, layouts);
        }
        multi_team(how, n_mats, mats, &a, ks, done, ctx);
    }
    return 0;
}

int kern_matmul_multi(int n_mats, const kern_mat_t *mats, const float *X, int n_cols, int n_b,
                      kern_scratch_t *ks, kern_done_fn done, void *ctx)
{
    return multi(0, n_mats, mats, X, n_cols, n_b, ks, done, ctx);
}

/* One matrix through a scratch made for the call. */
static void matmul_once(int how, uint32_t type, const void *W, const float *X, float *Y, int n_rows,
                        int n_cols, int n_b)
{
    assert(kern_type_supported(type));
    kern_scratch_t *ks = NULL;
    const kern_mat_t m = {.type = type, .W = W, .n_rows = n_rows, .Y = Y};
    int rc = kern_scratch_new(&ks);
    if (rc == 0)
        rc = multi(how, 1, &m, X, n_cols, n_b, ks, NULL, NULL);
    assert(rc == 0);
    (void)rc;
    kern_scratch_destroy(&ks);
}

void kern_matmul_how(int how, uint32_t type, const void *W, const float *X, float *Y, int n_rows,
                     int n_cols, int n_b)
{
    assert(how == KERN_BY_ROWS || how == KERN_BY_GEMM);
    matmul_once(how, type, W, X, Y, n_rows, n_cols, n_b);
}

void kern_matmul(uint32_t type, const void *W, const float *X, float *Y, int n_rows, int n_cols,
                 int n_b)
{
    matmul_once(0, type, W, X, Y, n_rows, n_cols, n_b);
}

void kern_matvec(uint32_t type, const void *W, const float *x, float *y, int n_rows, int n_cols)
{
    kern_matmul(type, W, x, y, n_rows, n_cols, 1);
}
