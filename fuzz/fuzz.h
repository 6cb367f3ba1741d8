/*
 * fuzz/fuzz.h — the checks behind the libFuzzer targets, callable from ordinary tests.
 *
 * Each target file (model/fuzz_*.c, kvstore/fuzz_*.c, daemon/fuzz_*.c) defines
 * fuzz_<target>_one: it runs one input through the code it fuzzes and checks what must hold
 * for any input (a refusal has a code and a message, every pointer handed out lies inside the
 * input, a round trip gives the input back, ...). It returns 0, or 1 with a message in why
 * (cap bytes) when a property broke; memory errors are the sanitizers' to catch. Compiled
 * with -DGISTD_FUZZ_ENTRY (the `make fuzz` build), the file also defines
 * LLVMFuzzerTestOneInput, which aborts on a broken property so that libFuzzer keeps the input.
 * tests/test_fuzz_regress*.c replay the seed corpora and every input that once broke something
 * through the same functions.
 *
 * A target may build what it needs once (tokenizers, stores) and keep it in static
 * variables for the life of the process: one thread only.
 */
#ifndef GISTD_FUZZ_FUZZ_H
#define GISTD_FUZZ_FUZZ_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int fuzz_gguf_one(const uint8_t *data, size_t size, char *why, size_t cap);
int fuzz_gguf_vocab_one(const uint8_t *data, size_t size, char *why, size_t cap);
int fuzz_tokenizer_one(const uint8_t *data, size_t size, char *why, size_t cap);
int fuzz_snapshot_one(const uint8_t *data, size_t size, char *why, size_t cap);
int fuzz_request_one(const uint8_t *data, size_t size, char *why, size_t cap);

/* The request target's structure-aware mutation (daemon/fuzz_request.c): changes data[size]
 * in place into at most max_size bytes and returns the new size, 0 when nothing fitted (data
 * is then unchanged). The same seed and input give the same output. */
size_t fuzz_request_mutate(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

/* Writes a printf-style message to why and returns 1: `return fuzz_fail(why, cap, ...)`. */
static inline int fuzz_fail(char *why, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline int fuzz_fail(char *why, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (cap)
        vsnprintf(why, cap, fmt, ap);
    va_end(ap);
    return 1;
}

#ifdef GISTD_FUZZ_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* The libFuzzer entry point of a target whose check is fn. */
#define FUZZ_ENTRY(fn)                                                                             \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)                                   \
    {                                                                                              \
        char why_[512] = "";                                                                       \
        if (fn(data, size, why_, sizeof why_)) {                                                   \
            fprintf(stderr, "%s: property broken: %s\n", #fn, why_);                               \
            abort();                                                                               \
        }                                                                                          \
        return 0;                                                                                  \
    }
#else
#define FUZZ_ENTRY(fn)
#endif

#endif
