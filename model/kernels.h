/*
 * model/kernels.h — the compute kernels of the forward pass.
 *
 * Matrix products of a weight matrix W (n_rows rows of n_cols elements, stored
 * as in the GGUF file: row r is contiguous, ggml_row_bytes(type, n_cols) bytes)
 * with f32 activations. Each kernel has a naive reference (suffix _ref) kept
 * beside the fast one; the fast ones pick AVX-512, AVX2/FMA or portable code at
 * run time and split rows across OpenMP threads (the caller's omp thread count).
 * Large batches of f32/f16/bf16 weights go through OpenBLAS sgemm, each thread on its
 * own rows (OpenMP build, one runtime); Q8_0/Q4_0 weights always take the row kernels,
 * which quantise the activations to int8 blocks of 32 (scale max|x|/127) once per product
 * and sum exact int8 products per block, as llama.cpp does: each x is then off by at most
 * half its block's scale. K-quant weights (Q4_K, Q5_K, Q6_K) take activations quantised
 * per 256-block instead (llama.cpp's Q8_K: d = max|x|/127 over the block, with the sums of
 * each 16), so each x is off by at most half its 256-block's scale. Supported weight types:
 * F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K.
 *
 * Fused products (kern_matmul_multi) multiply one batch of activations with several
 * matrices (Q, K, V; gate, up) in one parallel region and one quantisation; their team
 * form runs inside a parallel region the caller already has open, so that a whole
 * forward pass can be one region. Chunk c of nc covers the same share of every matrix
 * (whole units of KERN_ROW_UNIT rows), so a thread reads about as many bytes as any
 * other, and a caller finds the rows of several matrices that belong together (gate and
 * up, or the two halves of a RoPE pair) made by one thread.
 *
 * Callable from the thread that owns the model (the team forms: from every thread of its
 * team); kernels parallelise inside. Only kern_matmul and kern_matvec allocate per call.
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
 * blocks for larger ones; sgemm for large batches of float types (prefill). Allocates its
 * buffers on every call (the forward pass uses the fused products and their scratch). */
void kern_matmul(uint32_t type, const void *W, const float *X, float *Y, int n_rows, int n_cols,
                 int n_b);
void kern_matmul_ref(uint32_t type, const void *W, const float *X, float *Y, int n_rows, int n_cols,
                     int n_b);

/* ---- fused products ---- */

/* Rows of a matrix are handed out in units of this many (the last unit may be short). */
#define KERN_ROW_UNIT 16
/* Most matrices one fused product takes. */
#define KERN_MAX_MATS 8

/* One weight matrix of a fused product and where its results go. */
typedef struct kern_mat {
    uint32_t type;
    const void *W; /* n_rows rows of the product's n_cols elements */
    int n_rows;
    float *Y; /* [n_b][n_rows] */
} kern_mat_t;

/* The activations of a product: n_b vectors of n_cols f32 and, when a matrix quantises its
 * activations (kern_type_quantises), the same vectors quantised by kern_qx_make,
 * kern_qx_bytes(n_cols) bytes apart. */
typedef struct kern_act {
    const float *x;  /* [n_b][n_cols] */
    const void *qx;  /* [n_b][kern_qx_bytes(n_cols)], 64-byte aligned; NULL when none does */
    int n_cols, n_b; /* n_cols a multiple of 32 when qx is used (256 for K-quants) */
} kern_act_t;

/* Bytes of one quantised activation vector of n_cols elements (a multiple of 32); a
 * multiple of 64, and never less for a larger n_cols. One buffer serves every quantised
 * weight type: the blocks of 32 for Q8_0/Q4_0, then (n_cols a multiple of 256) the
 * 256-blocks of the K-quants. */
size_t kern_qx_bytes(int n_cols);
/* Quantises x[0..n_cols) into qx (kern_qx_bytes(n_cols) bytes, 64-byte aligned). Pure: the
 * same x gives the same bytes on any thread. */
void kern_qx_make(const float *x, int n_cols, void *qx);
/* The layouts of a quantised vector that products with a weight type read (0 for float
 * types): the blocks of 32, the 256-blocks of the K-quants. */
enum { KERN_QX_BLOCKS = 1, KERN_QX_K = 2 };
unsigned kern_type_qx(uint32_t type);
/* kern_qx_make of only the layouts in `layouts` (the others' bytes are left as they were):
 * a model without K-quants need not make theirs for every vector. */
void kern_qx_make_some(const float *x, int n_cols, void *qx, unsigned layouts);

/* The feed-forward's gate: g[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] for
 * i < n, with the chosen path's vector exp (a few ulp). */
void kern_swiglu(float *g, const float *u, int n);

/* Called on the thread that made them once rows [r0[i], r1[i]) of every matrix i of a
 * fused product are final for every vector (r0[i] == r1[i] for none of matrix i). */
typedef void (*kern_done_fn)(void *ctx, const int *r0, const int *r1);

/* Buffers of the fused products: quantised activations, per-thread f32 tiles of W for
 * sgemm. Grown as calls need them, never shrunk. One owner; one product at a time. */
typedef struct kern_scratch kern_scratch_t;
int kern_scratch_new(kern_scratch_t **out);
void kern_scratch_destroy(kern_scratch_t **p);
/* Makes room for teams of up to n_threads threads; call before a team uses the scratch.
 * 0 or ERR_NOMEM. */
int kern_scratch_reserve(kern_scratch_t *ks, int n_threads);

/* Y_i = X W_i^T for n_mats (<= KERN_MAX_MATS) matrices of one X [n_b][n_cols], in one
 * parallel region of the caller's omp thread count (on the calling thread alone when the
 * work is small): X is quantised once for all Q8_0/Q4_0 matrices, and rows of all matrices
 * are shared out in chunks. done (may be NULL) runs after each chunk. 0 or ERR_NOMEM. */
int kern_matmul_multi(int n_mats, const kern_mat_t *mats, const float *X, int n_cols, int n_b,
                      kern_scratch_t *ks, kern_done_fn done, void *ctx);

/* The same product inside a parallel region the caller has open: every thread of the
 * team calls it with the same mats and a (activations ready; each thread may pass its own
 * copy of the same values), takes chunks in turn and returns without waiting for the
 * others (no barrier). ks was reserved for the team's size. Outside a parallel region the
 * calling thread does all of it. */
void kern_matmul_multi_team(int n_mats, const kern_mat_t *mats, const kern_act_t *a,
                            kern_scratch_t *ks, kern_done_fn done, void *ctx);

/* Rows [r0, r1) of the product with one matrix on the calling thread alone (row kernels
 * only, no OpenMP). */
void kern_matmul_rows(const kern_mat_t *mat, const kern_act_t *a, int r0, int r1);

/*
 * Weights packed for the kernels in use. A Q8_0 matrix multiplies faster with its rows
 * interleaved 16 at a time (the layout is in kernels_impl.h), on the AVX-512 path: a model
 * loads each such matrix packed into memory of its own. A packed matrix has the type
 * KERN_TYPE_Q8_0_R16, outside the file types; every function here takes it, every path
 * multiplies it, and it gives the same products as the matrix it was packed from.
 */
#define KERN_TYPE_Q8_0_R16 0x10008u

/* The type `type` is packed to for the kernels in use (n_rows x n_cols), or 0 when it is
 * multiplied as stored. GISTD_PACK=1 packs on every path (the others' loops are portable:
 * for tests), GISTD_PACK=0 on none (to measure against). */
uint32_t kern_pack_type(uint32_t type, int n_rows, int n_cols);

/* Bytes of a matrix of `type` packed (kern_pack_type's result), n_rows x n_cols. */
size_t kern_packed_bytes(uint32_t packed, int n_rows, int n_cols);

/* Packs W (n_rows rows of `type` as stored in the file) into out (kern_packed_bytes,
 * 64-byte aligned) as `packed`. */
void kern_pack(uint32_t type, uint32_t packed, const void *W, int n_rows, int n_cols, void *out);

/* Bytes of one row of n_cols elements of `type` (packed types: the same as the type they
 * were packed from). */
size_t kern_row_bytes(uint32_t type, int n_cols);

/* Copies row r of W to f32 (embedding lookup). */
void kern_get_row(uint32_t type, const void *W, int n_cols, int r, float *out);

/* Whether kern_matvec supports a type. */
bool kern_type_supported(uint32_t type);

/* Whether the products with a weight type read quantised activations (kern_act_t.qx):
 * Q8_0, Q4_0 and the K-quants. */
bool kern_type_quantises(uint32_t type);

/* Name of the SIMD path chosen at run time ("avx512", "avx2", "portable"). The choice is
 * made once, from the CPU's features, or from the environment variable GISTD_SIMD when it
 * names a path this CPU can run. */
const char *kern_simd_name(void);

/* Makes every later kernel call use the named path, for tests and benchmarks (not while
 * another thread is inside a kernel). Returns 0, ERR_UNSUPPORTED when this CPU cannot run
 * it, or ERR_INVAL for an unknown name. */
int kern_force_simd(const char *name);

#endif
