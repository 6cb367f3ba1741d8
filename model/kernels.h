/*
 * model/kernels.h — the compute kernels of the forward pass.
 *
 * Matrix products of a weight matrix W (n_rows rows of n_cols elements, stored
 * as in the GGUF file: row r is contiguous, ggml_row_bytes(type, n_cols) bytes)
 * with f32 activations. Each kernel has a naive reference (suffix _ref) kept
 * beside the fast one; the fast ones pick AVX-512, AVX2/FMA or portable code at
 * run time and split rows across OpenMP threads (the caller's omp thread count).
 * Large batches of f32/f16/bf16 weights go through OpenBLAS sgemm (OpenMP build, one
 * runtime); Q8_0/Q4_0 weights always take the row kernels, which quantise the activations
 * to int8 blocks of 32 (scale max|x|/127) once per call and sum exact int8 products per
 * block, as llama.cpp does: each x is then off by at most half its block's scale.
 * Supported weight types: F32, F16, BF16, Q8_0, Q4_0.
 * Callable from the thread that owns the model; kernels parallelise inside.
 */
#ifndef GISTD_MODEL_KERNELS_H
#define GISTD_MODEL_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* y[r] = sum_c W[r][c] * x[c], r < n_rows. */
void kern_matvec(uint32_t type, const void *W, const float *x, float *y, int n_rows, int n_cols);
void kern_matvec_ref(uint32_t type, const void *W, const float *x, float *y, int n_rows,
                     int n_cols);

/* Y[b][r] = sum_c W[r][c] * X[b][c], for b < n_b (X is [n_b][n_cols], Y is [n_b][n_rows]).
 * Reads W from memory once for small batches (decode across sessions), in cache-sized
 * blocks for larger ones; sgemm for large batches of float types (prefill). */
void kern_matmul(uint32_t type, const void *W, const float *X, float *Y, int n_rows, int n_cols,
                 int n_b);
void kern_matmul_ref(uint32_t type, const void *W, const float *X, float *Y, int n_rows, int n_cols,
                     int n_b);

/* Copies row r of W to f32 (embedding lookup). */
void kern_get_row(uint32_t type, const void *W, int n_cols, int r, float *out);

/* Whether kern_matvec supports a type. */
bool kern_type_supported(uint32_t type);

/* Name of the SIMD path chosen at run time ("avx512", "avx2", "portable"). The choice is
 * made once, from the CPU's features, or from the environment variable GISTD_SIMD when it
 * names a path this CPU can run. */
const char *kern_simd_name(void);

/* Makes every later kernel call use the named path, for tests and benchmarks (not while
 * another thread is inside a kernel). Returns 0, ERR_UNSUPPORTED when this CPU cannot run
 * it, or ERR_INVAL for an unknown name. */
int kern_force_simd(const char *name);

#endif
