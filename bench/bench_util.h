/*
 * bench/bench_util.h — what the speed benchmarks share: a monotonic clock, medians, the
 * machine line every benchmark prints, the machine's streaming read bandwidth, and the
 * parsing of list arguments ("0,1024,8192", "f16,q8_0").
 * Header-only (each bench/bench_*.c is its own program); single-threaded callers.
 */
#ifndef GISTD_BENCH_UTIL_H
#define GISTD_BENCH_UTIL_H

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "model/kernels.h"

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of v[0..n) (sorts v). */
static inline double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Prints "# machine: CPU model, cores" and the kernel path and OpenBLAS build. */
static inline void bench_print_machine(void)
{
    char line[256], model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p) {
                snprintf(model, sizeof model, "%s", p + 2);
                model[strcspn(model, "\n")] = '\0';
            }
            break;
        }
    }
    if (f)
        fclose(f);
    printf("# machine: %s, %d cores online\n", model, omp_get_num_procs());
    printf("# kernels: %s path; %s (core %s)\n", kern_simd_name(), openblas_get_config(),
           openblas_get_corename());
}

static inline uint64_t bench_sum_range(const uint64_t *p, size_t n)
{
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    return a ^ b ^ c ^ d;
}

/* A 1 GiB buffer (much larger than any cache) for measuring the streaming read bandwidth. */
typedef struct bench_bw {
    uint64_t *buf;
    size_t n; /* uint64_t elements */
} bench_bw_t;

/* Allocates and touches the buffer; -1 when there is no memory for it. */
static inline int bench_bw_init(bench_bw_t *b)
{
    b->n = ((size_t)1 << 30) / 8;
    b->buf = aligned_alloc(64, b->n * 8);
    if (!b->buf)
        return -1;
    for (size_t i = 0; i < b->n; i++)
        b->buf[i] = i;
    return 0;
}

static inline void bench_bw_fini(bench_bw_t *b)
{
    free(b->buf);
    b->buf = NULL;
}

/* GB/s of reading the buffer with nt threads, each streaming its own contiguous part:
 * the best and the median of reps passes (reps <= 32). */
static inline void bench_bw_measure(const bench_bw_t *bw, int nt, int reps, double *best,
                                    double *med)
{
    double t[32];
    volatile uint64_t sink = 0;
    const uint64_t *buf = bw->buf;
    const size_t n = bw->n;
    if (reps > 32)
        reps = 32;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        uint64_t s = 0;
#pragma omp parallel num_threads(nt) reduction(^ : s)
        {
            int id = omp_get_thread_num(), k = omp_get_num_threads();
            size_t a = n * id / k, e = n * (id + 1) / k;
            s ^= bench_sum_range(buf + a, e - a);
        }
        sink ^= s;
        t[r] = (double)(n * 8) / (bench_now() - t0) / 1e9;
    }
    (void)sink;
    *best = 0;
    for (int r = 0; r < reps; r++)
        *best = t[r] > *best ? t[r] : *best;
    *med = bench_median(t, reps);
}

/* bench_bw_init, one measurement, bench_bw_fini. Returns -1 when out of memory. */
static inline int bench_bandwidth(int nt, int reps, double *best, double *med)
{
    bench_bw_t b;
    if (bench_bw_init(&b) != 0)
        return -1;
    bench_bw_measure(&b, nt, reps, best, med);
    bench_bw_fini(&b);
    return 0;
}

/* Parses "A,B,..." of non-negative integers into v[0..max); the count, or -1 when an item
 * is not a number, is negative or there are more than max. */
static inline int bench_parse_list(const char *s, long *v, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        v[n++] = strtol(s, &end, 10);
        if (end == s || v[n - 1] < 0)
            return -1;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return *s ? -1 : n;
}

/* Parses "f32,f16,q8_0" (KV row types) into types[0..max), stopping at max; the count, or -1
 * for a name it does not know. */
static inline int bench_parse_row_types(const char *s, uint32_t *types, int max)
{
    int n = 0;
    while (*s && n < max) {
        const size_t len = strcspn(s, ",");
        if (!strncmp(s, "f32", len) && len == 3)
            types[n++] = DT_F32;
        else if (!strncmp(s, "f16", len) && len == 3)
            types[n++] = DT_F16;
        else if (!strncmp(s, "q8_0", len) && len == 4)
            types[n++] = DT_Q8_0;
        else
            return -1;
        s += len + (s[len] == ',');
    }
    return n;
}

#endif
