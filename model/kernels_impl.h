/*
 * model/kernels_impl.h — private to the kernels: the table of one SIMD path.
 *
 * kernels.c owns the portable path and picks one table at run time (AVX-512,
 * AVX2/FMA or portable); kernels_avx2.c and kernels_avx512.c each define one
 * table, compiled for their instruction set and only called on a CPU that has
 * it. The tables are constant; any thread may call through them.
 *
 * Weight types are indexed by slot (KT_F32 ...), not by their ggml numbers.
 * Q8_0 and Q4_0 weights are multiplied with activations quantised once per
 * product to int8 blocks of 32 with an f32 scale (as llama.cpp does); each path
 * lays those out as its inner loop wants (qx_bytes/qx_make), one layout that
 * serves both weight types, and dots are exact int32 sums per block scaled in f32.
 * K-quant weights (Q4_K, Q5_K, Q6_K) are multiplied with activations quantised per
 * 256-block (as llama.cpp's Q8_K): one layout for every path, made by kern_qk_make and
 * placed after the path's own layout in the same buffer (see kern_qx_bytes).
 */
#ifndef GISTD_MODEL_KERNELS_IMPL_H
#define GISTD_MODEL_KERNELS_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* Q5_0 and Q5_1 (the fallback of K-quant mixes for rows that are not whole 256-blocks) are
 * dequantised a block at a time and multiplied with the f32 activations, on every path. */
enum {
    KT_F32,
    KT_F16,
    KT_BF16,
    KT_Q8_0,
    KT_Q4_0,
    KT_Q5_0,
    KT_Q5_1,
    KT_Q4_K,
    KT_Q5_K,
    KT_Q6_K,
    KT_Q8_0_R16, /* Q8_0 packed 16 rows at a time (KERN_TYPE_Q8_0_R16, below) */
    KT_COUNT
};

/* Whether a slot's row kernels read the K layout of quantised activations. */
static inline int kern_slot_k(int kt)
{
    return kt == KT_Q4_K || kt == KT_Q5_K || kt == KT_Q6_K;
}

/* Whether a slot's row kernels read quantised activations (rather than f32 rows). */
static inline int kern_slot_quant(int kt)
{
    return kt == KT_Q8_0 || kt == KT_Q4_0 || kt == KT_Q8_0_R16 || kern_slot_k(kt);
}

/*
 * Q8_0 weights packed 16 rows at a time (kern_pack): the row kernels' int8 products then
 * take one weight vector for 16 rows and one activation word for all of them (a broadcast),
 * and a block's scales for 16 rows in one conversion, where a row at a time spends a scale,
 * a conversion and a horizontal sum on each row (bench/batching.md, "Weights packed 16
 * rows at a time"). Group g (rows 16g .. 16g+15) starts at byte g * 16 * row_bytes, where
 * the file has its rows, and holds its nb blocks a pair at a time, in one stream:
 *   - the pair's f16 scales, [2][16]: block b of row 16g+l at [b % 2][l] (64 bytes);
 *   - the pair's quants, [2][8][16][4]: bytes 4k .. 4k+3 of block b of row 16g+l at
 *     [b % 2][k][l], each plus 128 (as unsigned bytes, which the int8 products multiply
 *     with the signed activations; the activations' bias undoes the 128);
 *   - with nb odd, the last block alone: its 32 bytes of scales, then its quants.
 * A matrix whose rows are not whole groups is padded with zero rows to the next group: its
 * buffer is R16_ROWS(n_rows) * row_bytes. Kernels compute whole groups and store only the
 * rows asked for.
 */
#define R16_ROWS(n) (((n) + 15) / 16 * 16)

static inline const uint8_t *kern_r16_group(const uint8_t *W, size_t row_bytes, int g)
{
    return W + (size_t)g * 16 * row_bytes;
}

/* Where block b's 16 scales and its quants lie in a group of nb blocks. */
static inline size_t kern_r16_scales_at(int b)
{
    return (size_t)(b / 2) * 1088 + (size_t)(b % 2) * 32;
}

static inline size_t kern_r16_quants_at(int nb, int b)
{
    return (size_t)(b / 2) * 1088 + (b / 2 * 2 + 1 < nb ? 64 : 32) + (size_t)(b % 2) * 512;
}

/* Block b of row r of a packed matrix of nb blocks a row: its 32 quants, signed, into q;
 * returns its scale. */
float kern_r16_block(const uint8_t *W, size_t row_bytes, int nb, int r, int b, int8_t q[32]);

/* Most vectors one pass over a weight row serves; callers split larger batches. */
#define KERN_MAX_NX 4

/* Weight rows stream from DRAM once a token: the SIMD row loops ask, at each step, for the
 * line this many bytes further on, which keeps more of the stream in flight than the
 * hardware's prefetchers alone (bench/depth.md, "Weights asked for ahead"). Past a matrix's
 * end the ask is harmless: prefetches never fault. */
#define KERN_WEIGHT_AHEAD 4096

/*
 * Computes y[i * y_stride + r] = dot(row r of W, activation vector i) for rows
 * r0 <= r < r1 and i < nx (nx <= KERN_MAX_NX). W rows are w_stride bytes apart.
 * x points at vector 0 of the prepared activations (f32 rows for F32/F16/BF16,
 * the path's quantised layout for Q8_0/Q4_0, the K layout for K-quants), x_stride bytes
 * apart.
 */
typedef void (*kern_rows_fn)(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);

/* Converts n elements of one stored row to f32. */
typedef void (*kern_to_f32_fn)(const uint8_t *src, float *dst, int n);

typedef struct kern_path {
    const char *name;
    kern_rows_fn rows[KT_COUNT];
    kern_to_f32_fn to_f32[KT_COUNT];
    /* Bytes of one quantised activation vector of n_cols elements (a multiple of 32),
     * read by the Q8_0 and the Q4_0 row kernels alike; a multiple of 64. */
    size_t (*qx_bytes)(int n_cols);
    /* Quantises x[0..n_cols) into out (qx_bytes(n_cols) bytes, 64-byte aligned). */
    void (*qx_make)(const float *x, int n_cols, uint8_t *out);
    /* g[i] = silu(g[i]) * u[i] for i < n (kern_swiglu). */
    void (*swiglu)(float *g, const float *u, int n);
    /* Whether models loaded on this path pack their Q8_0 matrices (kern_pack_type): only
     * where rows[KT_Q8_0_R16] is the faster kernel; every path can multiply packed ones. */
    int packs_q8_0;
} kern_path_t;

extern const kern_path_t kern_path_portable;
extern const kern_path_t kern_path_avx2;
extern const kern_path_t kern_path_avx512;
/* AVX-512 with Q8_0/Q4_0 dequantised to f32 in registers: only to measure against. */
extern const kern_path_t kern_path_avx512_fma;

/* kern_matmul with the method picked by the caller (for benchmarks that find the batch
 * size where sgemm starts to win): one pass of the row kernels per KERN_MAX_NX vectors,
 * or OpenBLAS sgemm on each thread's rows (on f32 tiles of W for other types). */
enum { KERN_BY_ROWS = 1, KERN_BY_GEMM = 2 };
void kern_matmul_how(int how, uint32_t type, const void *W, const float *X, float *Y, int n_rows,
                     int n_cols, int n_b);

/*
 * The "simple" quantised activation layout (portable and AVX2): qs int8[n_cols],
 * then float d[n_cols / 32], then int32 sum[n_cols / 32] (the sum of each block's qs),
 * padded to 64 bytes. value c = d[c / 32] * qs[c].
 */
size_t kern_qx_simple_bytes(int n_cols);
void kern_qx_simple_make(const float *x, int n_cols, uint8_t *out);

/*
 * The K layout (activations of K-quant products, every path): qs int8[n_cols], then
 * float d[n_cols / 256], then int16 bsums[n_cols / 16] (the sum of each 16 qs), padded to
 * 64 bytes; value c = d[c / 256] * qs[c], d = max|x| / 127 over the 256-block. For n_cols
 * not a multiple of 256 the bytes are counted for the whole blocks (so that the size grows
 * with n_cols) but nothing is made: no K-quant row has such a length.
 */
size_t kern_qk_bytes(int n_cols);
void kern_qk_make(const float *x, int n_cols, uint8_t *out);

/* The portable K-quant row kernels and conversions, shared by every path's table (the
 * conversions only serve forced sgemm in benchmarks: K-quants always take the rows). */
void kern_rows_q4_K_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);
void kern_rows_q5_K_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);
void kern_rows_q6_K_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);
void kern_rows_q5_0_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);
void kern_rows_q5_1_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);
void kern_to_f32_q5_0(const uint8_t *src, float *dst, int n);
void kern_to_f32_q5_1(const uint8_t *src, float *dst, int n);
void kern_to_f32_q4_K(const uint8_t *src, float *dst, int n);
void kern_to_f32_q5_K(const uint8_t *src, float *dst, int n);
void kern_to_f32_q6_K(const uint8_t *src, float *dst, int n);
/* Packed Q8_0 rows for the paths whose own kernel is not the packed one: with the "simple"
 * layout's activations (portable, AVX2) and with f32 activations (avx512-fma). */
void kern_rows_q8_0_r16_simple(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                               int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);
void kern_rows_q8_0_r16_f32(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                            int nx, int n_cols, float *y, size_t y_stride, int r0, int r1);

/* Quantises 32 floats as every path does (the SIMD ones with the same f32 operations, so
 * the bytes agree): d = max|x| / 127, q = x * (1 / d) rounded to nearest even.
 * Returns d (0 for an all-zero block, then every q is 0). */
float kern_quant_block(const float *x, int8_t *q);

#endif
