/*
 * fuzz/replay.h — replays a fuzz target's checked-in inputs through its check, for the
 * regression tests (tests/test_fuzz_regress*.c): every file of fuzz/corpus/<target>/ (the
 * seeds, at least one) and of tests/data/fuzz/<target>/ (inputs that once broke something),
 * each a test failure with the target's message when its check fails. Header-only (static
 * functions); uses tests/check.h, so one test program at a time; one thread.
 */
#ifndef GISTD_FUZZ_REPLAY_H
#define GISTD_FUZZ_REPLAY_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz/fuzz.h"
#include "tests/check.h"

typedef int (*fuzz_fn_t)(const uint8_t *, size_t, char *, size_t);

static inline uint8_t *fuzz_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            uint8_t *p = realloc(buf, cap ? 2 * cap : 4096);
            if (!p)
                break;
            buf = p;
            cap = cap ? 2 * cap : 4096;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        if (k == 0)
            break;
        n += k;
    }
    fclose(f);
    *len = n;
    return buf ? buf : malloc(1);
}

/* Runs fn on every file of root/dir; returns how many there were. */
static inline int fuzz_replay_dir(const char *dir, fuzz_fn_t fn)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", check_root(), dir);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char file[sizeof path + 260];
        snprintf(file, sizeof file, "%s/%s", path, de->d_name);
        size_t len = 0;
        uint8_t *buf = fuzz_slurp(file, &len);
        CHECK_MSG(buf != NULL, "cannot read %s", file);
        if (!buf)
            continue;
        char why[512] = "";
        CHECK_MSG(fn(buf, len, why, sizeof why) == 0, "%s/%s: %s", dir, de->d_name, why);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

static inline void fuzz_replay(const char *target, fuzz_fn_t fn)
{
    char seeds[256], found[256];
    snprintf(seeds, sizeof seeds, "fuzz/corpus/%s", target);
    snprintf(found, sizeof found, "tests/data/fuzz/%s", target);
    int n = fuzz_replay_dir(seeds, fn);
    CHECK_MSG(n > 0, "no seeds in %s", seeds);
    fuzz_replay_dir(found, fn);
}

#endif
