#include "tests/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int n_run, n_failed;
static bool cur_failed, cur_skipped;
static char skip_reason[256];
static char tmpdir[256];

void check_fail_(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    cur_failed = true;
    printf("# %s:%d: ", file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

void check_skip(const char *fmt, ...)
{
    va_list ap;
    cur_skipped = true;
    va_start(ap, fmt);
    vsnprintf(skip_reason, sizeof skip_reason, fmt, ap);
    va_end(ap);
}

static bool require_shared(void)
{
    const char *r = getenv("GISTD_REQUIRE_SHARED");
    return r && *r && strcmp(r, "0") != 0;
}

void check_skip_missing(const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (require_shared()) {
        cur_failed = true;
        printf("# GISTD_REQUIRE_SHARED=1, and %s\n", why);
        fflush(stdout);
    } else {
        check_skip("%s", why);
    }
}

bool check_failed(void)
{
    return cur_failed;
}

void check_run(const char *name, void (*fn)(void))
{
    cur_failed = false;
    cur_skipped = false;
    skip_reason[0] = '\0';
    fn();
    n_run++;
    if (cur_failed) {
        n_failed++;
        printf("not ok %d - %s\n", n_run, name);
    } else if (cur_skipped) {
        printf("ok %d - %s # SKIP %s\n", n_run, name, skip_reason);
    } else {
        printf("ok %d - %s\n", n_run, name);
    }
    fflush(stdout);
}

int check_done(void)
{
    printf("1..%d\n", n_run);
    if (tmpdir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "# could not remove %s\n", tmpdir);
    }
    return n_failed ? 1 : 0;
}

const char *check_root(void)
{
    const char *r = getenv("GISTD_ROOT");
    return r && *r ? r : ".";
}

const char *check_shared(const char *rel)
{
    static char path[1024];
    const char *base = getenv("GISTD_SHARED");
    if (!base || !*base)
        base = "../shared";
    snprintf(path, sizeof path, "%s/%s", base, rel);
    return access(path, R_OK) == 0 ? path : NULL;
}

const char *check_shared_or_skip(const char *rel)
{
    const char *path = check_shared(rel);
    if (!path) {
        const char *base = getenv("GISTD_SHARED");
        check_skip_missing("%s not found under %s", rel, base && *base ? base : "../shared");
    }
    return path;
}

const char *check_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/gistd-test-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return tmpdir;
}

char *check_slurp(const char *path, size_t *len)
{
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc(n > 0 ? (size_t)n + 1 : 1);
    if (p && n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (!p)
        return NULL;
    *len = n > 0 ? (size_t)n : 0;
    p[*len] = 0;
    return p;
}
