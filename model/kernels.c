/*
 * model/kernels.c — matrix products of stored weights with f32 activations.
 *
 * Naive references (kern_*_ref) dequantise each row with dt_to_f32 and sum in
 * double; the fast kernels are plain loops for now.
 */
#include "model/kernels.h"

#include "common/dtype.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of one stored row of n elements (n a multiple of 32 for q8_0/q4_0). */
static size_t row_bytes(uint32_t type, int n)
{
    switch (type) {
    case DT_F32:
        return (size_t)n * 4;
    case DT_F16:
    case DT_BF16:
        return (size_t)n * 2;
    case DT_Q8_0:
        return (size_t)(n / QK8_0) * sizeof(block_q8_0);
    case DT_Q4_0:
        return (size_t)(n / QK4_0) * sizeof(block_q4_0);
    default:
        return 0;
    }
}

bool kern_type_supported(uint32_t type)
{
    return row_bytes(type, 32) != 0;
}

const char *kern_simd_name(void)
{
    return "portable";
}

void kern_get_row(uint32_t type, const void *W, int n_cols, int r, float *out)
{
    assert(kern_type_supported(type));
    const uint8_t *row = (const uint8_t *)W + (size_t)r * row_bytes(type, n_cols);
    int rc = dt_to_f32(type, row, out, (size_t)n_cols);
    assert(rc == 0);
    (void)rc;
}

void kern_matmul_ref(uint32_t type, const void *W, const float *X, float *Y, int n_rows,
                     int n_cols, int n_b)
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

void kern_matvec_ref(uint32_t type, const void *W, const float *x, float *y, int n_rows,
                     int n_cols)
{
    kern_matmul_ref(type, W, x, y, n_rows, n_cols, 1);
}

void kern_matmul(uint32_t type, const void *W, const float *X, float *Y, int n_rows, int n_cols,
                 int n_b)
{
    assert(kern_type_supported(type));
    size_t rb = row_bytes(type, n_cols);
#pragma omp parallel
    {
        float *w = malloc((size_t)n_cols * sizeof *w);
        assert(w);
#pragma omp for schedule(static)
        for (int r = 0; r < n_rows; r++) {
            dt_to_f32(type, (const uint8_t *)W + (size_t)r * rb, w, (size_t)n_cols);
            for (int b = 0; b < n_b; b++) {
                const float *x = X + (size_t)b * n_cols;
                float s = 0;
                for (int c = 0; c < n_cols; c++)
                    s += w[c] * x[c];
                Y[(size_t)b * n_rows + r] = s;
            }
        }
        free(w);
    }
}

void kern_matvec(uint32_t type, const void *W, const float *x, float *y, int n_rows, int n_cols)
{
    kern_matmul(type, W, x, y, n_rows, n_cols, 1);
}
