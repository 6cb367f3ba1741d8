/*
 * bench/bench_english.h — is a text still English? The share of its words found in a
 * vocabulary read from a folder of text files (the training corpus), for the benchmarks
 * that watch a model's output over a long run. A word is a run of ASCII letters, compared
 * in lower case; everything else separates words. Header-only (each bench/bench_*.c is its
 * own program); single-threaded callers.
 */
#ifndef GISTD_BENCH_ENGLISH_H
#define GISTD_BENCH_ENGLISH_H

#include <ctype.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BENCH_WORD_MAX 64 /* longer runs of letters are cut here, in the text and the corpus */

typedef struct bench_vocab {
    char **slot; /* [cap] open addressing; NULL: empty */
    size_t n, cap;
} bench_vocab_t;

static inline uint64_t bench_word_hash(const char *w, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)w[i]) * 1099511628211ull;
    return h;
}

/* The slot of word w[0..n): where it is, or the empty one where it would go. */
static inline size_t bench_vocab_find(const bench_vocab_t *v, const char *w, size_t n)
{
    size_t i = (size_t)bench_word_hash(w, n) & (v->cap - 1);
    while (v->slot[i] && (strncmp(v->slot[i], w, n) != 0 || v->slot[i][n] != '\0'))
        i = (i + 1) & (v->cap - 1);
    return i;
}

static inline bool bench_vocab_has(const bench_vocab_t *v, const char *w, size_t n)
{
    return v->cap && v->slot[bench_vocab_find(v, w, n)] != NULL;
}

/* Adds w[0..n) (lower case already); -1 when out of memory. */
static inline int bench_vocab_add(bench_vocab_t *v, const char *w, size_t n)
{
    if (2 * (v->n + 1) > v->cap) {
        bench_vocab_t g = {.cap = v->cap ? 2 * v->cap : 1u << 16};
        g.slot = calloc(g.cap, sizeof *g.slot);
        if (!g.slot)
            return -1;
        for (size_t i = 0; i < v->cap; i++)
            if (v->slot[i])
                g.slot[bench_vocab_find(&g, v->slot[i], strlen(v->slot[i]))] = v->slot[i];
        free(v->slot);
        g.n = v->n;
        *v = g;
    }
    size_t i = bench_vocab_find(v, w, n);
    if (v->slot[i])
        return 0;
    if (!(v->slot[i] = strndup(w, n)))
        return -1;
    v->n++;
    return 0;
}

/* Calls fn on every word of s[0..len) (lower-cased, at most BENCH_WORD_MAX letters). */
static inline int bench_words(const char *s, size_t len,
                              int (*fn)(void *ctx, const char *w, size_t n), void *ctx)
{
    char w[BENCH_WORD_MAX];
    size_t n = 0;
    for (size_t i = 0; i <= len; i++) {
        const int c = i < len ? (unsigned char)s[i] : ' ';
        if (c < 128 && isalpha(c)) {
            if (n < BENCH_WORD_MAX)
                w[n++] = (char)tolower(c);
            continue;
        }
        if (n && fn(ctx, w, n))
            return -1;
        n = 0;
    }
    return 0;
}

static inline int bench_vocab_add_cb(void *ctx, const char *w, size_t n)
{
    return bench_vocab_add(ctx, w, n);
}

/* Reads every *.txt in dir except `leave_out` (a file name, or NULL) into the vocabulary.
 * Returns the files read, or -1 (with a message on stderr) when none could be. */
static inline int bench_vocab_load(bench_vocab_t *v, const char *dir, const char *leave_out)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "vocabulary: cannot open %s\n", dir);
        return -1;
    }
    int files = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const size_t k = strlen(de->d_name);
        if (k < 5 || strcmp(de->d_name + k - 4, ".txt") != 0 ||
            (leave_out && !strcmp(de->d_name, leave_out)))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        char buf[1 << 16];
        size_t got, keep = 0;
        /* a word cut at the end of a read is carried over to the next */
        while ((got = fread(buf + keep, 1, sizeof buf - keep, f)) > 0) {
            size_t end = keep + got, cut = end;
            while (cut > 0 && cut > end - BENCH_WORD_MAX && isalpha((unsigned char)buf[cut - 1]))
                cut--;
            if (cut == 0 || feof(f))
                cut = end;
            if (bench_words(buf, cut, bench_vocab_add_cb, v)) {
                fclose(f);
                closedir(d);
                fprintf(stderr, "vocabulary: out of memory\n");
                return -1;
            }
            memmove(buf, buf + cut, end - cut);
            keep = end - cut;
        }
        if (keep)
            bench_words(buf, keep, bench_vocab_add_cb, v);
        fclose(f);
        files++;
    }
    closedir(d);
    if (!files)
        fprintf(stderr, "vocabulary: no .txt files in %s\n", dir);
    return files ? files : -1;
}

static inline void bench_vocab_free(bench_vocab_t *v)
{
    for (size_t i = 0; i < v->cap; i++)
        free(v->slot[i]);
    free(v->slot);
    memset(v, 0, sizeof *v);
}

typedef struct bench_english {
    const bench_vocab_t *v;
    uint64_t words, known;
} bench_english_t;

static inline int bench_english_cb(void *ctx, const char *w, size_t n)
{
    bench_english_t *e = ctx;
    e->words++;
    e->known += bench_vocab_has(e->v, w, n);
    return 0;
}

/* Adds the words of s[0..len) to the counts in e. */
static inline void bench_english_count(bench_english_t *e, const char *s, size_t len)
{
    bench_words(s, len, bench_english_cb, e);
}

#endif
