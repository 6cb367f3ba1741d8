#!/usr/bin/env bash
# OpenMP parallel regions (fork/joins) and libgomp barriers per decoded token and per
# prefill of the forward pass, counted by wrapping libgomp's entry points (LD_PRELOAD)
# while `gist-model logits` runs a model token by token and in one batch. Two runs of N and
# 2N tokens are subtracted, so loading and the first token do not count. The forward's own
# barriers (model/forward.c, team_barrier: five a layer for decode) are not libgomp's and
# do not show here.
# Usage: bench/count-omp.sh MODEL.gguf [THREADS (2)] [N (16)] [GIST_MODEL (build/bin/gist-model)]
set -euo pipefail
model=$1 threads=${2:-2} n=${3:-16}
gm=${4:-build/bin/gist-model}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/shim.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

/* Regions that ran with more than one thread (an if clause that is false asks for one);
 * barriers counted on thread 0 of a team of more than one, so each counts once. */
static unsigned long n_regions, n_barriers;

static void count_region(unsigned nt)
{
    if (nt > 1 || (nt == 0 && omp_get_max_threads() > 1))
        __atomic_add_fetch(&n_regions, 1, __ATOMIC_RELAXED);
}

static void count_barrier(void)
{
    if (omp_get_thread_num() == 0 && omp_get_num_threads() > 1)
        __atomic_add_fetch(&n_barriers, 1, __ATOMIC_RELAXED);
}

#define REAL(name) static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

void GOMP_parallel(void (*fn)(void *), void *data, unsigned nt, unsigned flags);
void GOMP_parallel_loop_dynamic(void (*fn)(void *), void *data, unsigned nt, long start,
                                long end, long incr, long chunk, unsigned flags);
void GOMP_parallel_loop_nonmonotonic_dynamic(void (*fn)(void *), void *data, unsigned nt,
                                             long start, long end, long incr, long chunk,
                                             unsigned flags);
void GOMP_barrier(void);
void GOMP_loop_end(void);

void GOMP_parallel(void (*fn)(void *), void *data, unsigned nt, unsigned flags)
{
    REAL(GOMP_parallel);
    count_region(nt);
    real_GOMP_parallel(fn, data, nt, flags);
}
void GOMP_parallel_loop_dynamic(void (*fn)(void *), void *data, unsigned nt, long start,
                                long end, long incr, long chunk, unsigned flags)
{
    REAL(GOMP_parallel_loop_dynamic);
    count_region(nt);
    real_GOMP_parallel_loop_dynamic(fn, data, nt, start, end, incr, chunk, flags);
}
void GOMP_parallel_loop_nonmonotonic_dynamic(void (*fn)(void *), void *data, unsigned nt,
                                             long start, long end, long incr, long chunk,
                                             unsigned flags)
{
    REAL(GOMP_parallel_loop_nonmonotonic_dynamic);
    count_region(nt);
    real_GOMP_parallel_loop_nonmonotonic_dynamic(fn, data, nt, start, end, incr, chunk, flags);
}
void GOMP_barrier(void)
{
    REAL(GOMP_barrier);
    count_barrier();
    real_GOMP_barrier();
}
void GOMP_loop_end(void)
{
    REAL(GOMP_loop_end);
    count_barrier();
    real_GOMP_loop_end();
}
__attribute__((destructor)) static void report(void)
{
    const char *out = getenv("OMP_COUNT_OUT");
    FILE *f = out ? fopen(out, "w") : NULL;
    if (f) {
        fprintf(f, "%lu %lu\n", n_regions, n_barriers);
        fclose(f);
    }
}
C
cc -O2 -shared -fPIC -fopenmp -o "$tmp/shim.so" "$tmp/shim.c" -ldl
n_vocab=$("$gm" info "$model" 2>/dev/null | awk '/n_vocab/ {print $NF; exit}')
n_vocab=${n_vocab:-256}
toks() { seq 1 "$1" | awk -v v="$n_vocab" '{printf "%d ", ($1 * 7919) % (v - 3) + 3}'; }
count() { # tokens ubatch -> "regions barriers"
    OMP_COUNT_OUT="$tmp/c" LD_PRELOAD="$tmp/shim.so" "$gm" logits "$model" --threads "$threads" \
        --tokens "$(toks "$1")" --ubatch "$2" --out "$tmp/l.bin" >/dev/null
    cat "$tmp/c"
}
read -r r1 b1 <<<"$(count "$n" 1)"
read -r r2 b2 <<<"$(count $((2 * n)) 1)"
read -r rp bp <<<"$(count "$n" "$n")"
echo "# $(basename "$model"), $threads threads: OpenMP regions and libgomp barriers with 2+ threads"
echo "decode, per token:         $(((r2 - r1) / n)) regions, $(((b2 - b1) / n)) barriers"
echo "prefill of $n, whole batch: $rp regions, $bp barriers"
