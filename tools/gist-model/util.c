/* tools/gist-model/util.c — argument parsing, file reading and timing shared by the commands. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools/gist-model/cmd.h"

int cmd_parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return cmd_usage_error("%s: '%s' is not an integer in [%ld, %ld]", opt, s, lo, hi);
    *out = v;
    return 0;
}

int cmd_parse_float(const char *opt, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return cmd_usage_error("%s: '%s' is not a number", opt, s);
    *out = v;
    return 0;
}

int cmd_sampler_opt(mdl_sampler_cfg_t *sc, bool *seeded, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (*i + 1 >= argc)
        return 0;
    const char *v = argv[*i + 1];
    long n = 0;
    int bad;
    if (!strcmp(a, "--temp")) {
        bad = cmd_parse_float(a, v, &sc->temp);
    } else if (!strcmp(a, "--top-k")) {
        bad = cmd_parse_long(a, v, 0, INT32_MAX, &n);
        sc->top_k = (int32_t)n;
    } else if (!strcmp(a, "--top-p")) {
        bad = cmd_parse_float(a, v, &sc->top_p);
    } else if (!strcmp(a, "--min-p")) {
        bad = cmd_parse_float(a, v, &sc->min_p);
    } else if (!strcmp(a, "--repeat-penalty")) {
        bad = cmd_parse_float(a, v, &sc->repeat_penalty);
    } else if (!strcmp(a, "--repeat-last-n")) {
        bad = cmd_parse_long(a, v, 0, 1 << 20, &n);
        sc->repeat_last_n = (int32_t)n;
    } else if (!strcmp(a, "--seed")) {
        char *end;
        errno = 0;
        sc->seed = strtoull(v, &end, 10);
        bad = errno || *end || end == v || v[0] == '-'
                  ? cmd_usage_error("--seed: '%s' is not an unsigned integer", v)
                  : 0;
        *seeded = true;
    } else {
        return 0;
    }
    ++*i;
    return bad ? -1 : 1;
}

double cmd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmd_read_file(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return cmd_usage_error("%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *t = realloc(b, cap *= 2);
        if (!t)
            free(b);
        b = t;
    }
    int err = ferror(f);
    fclose(f);
    if (!b || err) {
        free(b);
        return cmd_usage_error("%s: cannot read the file", path);
    }
    *buf = b;
    *len = n;
    return 0;
}
