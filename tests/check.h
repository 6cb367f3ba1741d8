/*
 * tests/check.h — the project's small in-tree test harness (TAP output).
 *
 * A test program defines `static void test_x(void)` functions, runs each with
 * RUN(test_x) from main, and returns check_done(). Failed CHECKs do not abort
 * the test; they print a diagnostic and mark it failed. tests/run.sh reads the
 * TAP lines of every program and prints the closing `N passed, N failed` line.
 * Single-threaded; the harness keeps its state in check.c.
 */
#ifndef GISTD_TESTS_CHECK_H
#define GISTD_TESTS_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void check_fail_(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Skips the current test for a reason of this machine (a CPU feature, mount rights). */
void check_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Skips the current test for want of shared data or an installed package. With
 * GISTD_REQUIRE_SHARED=1 (as CI runs) the test fails instead: a machine set up as the README
 * says has both, so their absence would hide what the test guards. */
void check_skip_missing(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void check_run(const char *name, void (*fn)(void));
int check_done(void);
bool check_failed(void);

/* Path of a file under the shared data folder (env GISTD_SHARED, default
 * "../shared"), or NULL when it does not exist. Returns a static buffer. */
const char *check_shared(const char *rel);
/* check_shared, and when the file is absent check_skip_missing naming it. */
const char *check_shared_or_skip(const char *rel);

/* A fresh temporary directory for this test program (created on first call). */
const char *check_tmpdir(void);

/* The repository root (env GISTD_ROOT, default "."). */
const char *check_root(void);

/* A file's bytes, malloc'd with one NUL past *len so text can be searched; NULL (and *len 0)
 * when it cannot be read. */
char *check_slurp(const char *path, size_t *len);

#define RUN(fn) check_run(#fn, fn)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_fail_(__FILE__, __LINE__, "CHECK(%s)", #cond);                                   \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_fail_(__FILE__, __LINE__, __VA_ARGS__);                                          \
    } while (0)

#define CHECK_INT(a, op, b)                                                                        \
    do {                                                                                           \
        long long ca_ = (long long)(a), cb_ = (long long)(b);                                      \
        if (!(ca_ op cb_))                                                                         \
            check_fail_(__FILE__, __LINE__, "CHECK_INT(%s %s %s): %lld vs %lld", #a, #op, #b, ca_, \
                        cb_);                                                                      \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double ca_ = (double)(a), cb_ = (double)(b), ct_ = (double)(tol);                          \
        if (!(ca_ - cb_ <= ct_ && cb_ - ca_ <= ct_))                                               \
            check_fail_(__FILE__, __LINE__, "CHECK_NEAR(%s, %s, %s): %.9g vs %.9g", #a, #b, #tol,  \
                        ca_, cb_);                                                                 \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *ca_ = (a), *cb_ = (b);                                                         \
        if (!ca_ || !cb_ || strcmp(ca_, cb_) != 0)                                                 \
            check_fail_(__FILE__, __LINE__, "CHECK_STR(%s, %s): \"%s\" vs \"%s\"", #a, #b,         \
                        ca_ ? ca_ : "(null)", cb_ ? cb_ : "(null)");                               \
    } while (0)

/* Checks an int result is 0; on failure prints the code (and an err_info_t msg if given). */
#define CHECK_OK(rc)                                                                               \
    do {                                                                                           \
        int cr_ = (rc);                                                                            \
        if (cr_ != 0)                                                                              \
            check_fail_(__FILE__, __LINE__, "CHECK_OK(%s): returned %d", #rc, cr_);                \
    } while (0)

#endif
