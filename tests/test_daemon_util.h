/*
 * tests/test_daemon_util.h — helpers for the daemon's integration tests: run gistd as a real
 * process on a free loopback port (it prints the endpoint it bound on its first stdout line,
 * which is also how a test knows it is ready), make tiny models with gist-model, and run
 * gist-model to get reference outputs. Header-only; each test program includes it once.
 */
#ifndef GISTD_TESTS_TEST_DAEMON_UTIL_H
#define GISTD_TESTS_TEST_DAEMON_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clients/libgistc/gistc.h"
#include "tests/check.h"

/* Path of a built program (GISTD_BUILD, default "build"). */
static inline const char *td_bin(const char *name)
{
    static char buf[4][512];
    static int k;
    const char *b = getenv("GISTD_BUILD");
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s/bin/%s", check_root(), b ? b : "build", name);
    return p;
}

/* Runs argv, waits, and returns its exit status (-1 if it did not exit normally); its stdout
 * goes to out (NUL-terminated, at most cap - 1 bytes) when out is given, its stderr nowhere. */
static inline int td_run(char *const argv[], char *out, size_t cap)
{
    int fd[2];
    if (pipe(fd) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    size_t n = 0;
    char sink[4096];
    for (;;) {
        ssize_t r =
            out && n + 1 < cap ? read(fd[0], out + n, cap - 1 - n) : read(fd[0], sink, sizeof sink);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (out && n + 1 < cap)
            n += (size_t)r;
    }
    if (out)
        out[n] = 0;
    close(fd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Writes a tiny random-weight model (gist-model make-tiny) into the test's folder. */
static inline const char *td_tiny_model(const char *name, const char *seed)
{
    static char path[4][512];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", check_tmpdir(), name);
    char *argv[] = {(char *)td_bin("gist-model"), "make-tiny", p, "--seed", (char *)seed, NULL};
    if (td_run(argv, NULL, 0) != 0) {
        check_fail_(__FILE__, __LINE__, "gist-model make-tiny %s failed", p);
        return NULL;
    }
    return p;
}

/* The text `gist-model generate` adds after the prompt (greedy), into out. */
static inline int td_reference(const char *model, const char *prompt, const char *n, char *out,
                               size_t cap)
{
    char buf[65536];
    char *argv[] = {(char *)td_bin("gist-model"),
                    "generate",
                    (char *)model,
                    "--prompt",
                    (char *)prompt,
                    "-n",
                    (char *)n,
                    "--temp",
                    "0",
                    NULL};
    if (td_run(argv, buf, sizeof buf) != 0)
        return -1;
    size_t pl = strlen(prompt), bl = strlen(buf);
    if (bl < pl + 1 || strncmp(buf, prompt, pl) || buf[bl - 1] != '\n')
        return -1;
    snprintf(out, cap, "%.*s", (int)(bl - pl - 1), buf + pl);
    return 0;
}

typedef struct td_daemon {
    pid_t pid;
    char endpoint[256];
} td_daemon_t;

/* Starts gistd with --model model --listen tcp://127.0.0.1:* and the extra arguments (NULL-
 * terminated), and waits for the endpoint on its first stdout line. */
static inline int td_start(td_daemon_t *d, const char *model, const char *const *extra)
{
    const char *argv[40];
    int n = 0;
    argv[n++] = td_bin("gistd");
    argv[n++] = "--model";
    argv[n++] = model;
    argv[n++] = "--listen";
    argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--log-level";
    argv[n++] = "error";
    bool has_listen = false;
    for (int i = 0; extra && extra[i] && n < 38; i++) {
        has_listen |= !strcmp(extra[i], "--listen");
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    if (has_listen) { /* the caller's --listen replaces the default */
        memmove(argv + 3, argv + 5, sizeof argv[0] * (size_t)(n - 4));
        n -= 2;
    }
    int fd[2];
    if (pipe(fd) < 0)
        return -1;
    d->pid = fork();
    if (d->pid < 0)
        return -1;
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a test that crashes leaves no daemon behind */
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fd[1]);
    size_t got = 0;
    d->endpoint[0] = 0;
    struct pollfd p = {fd[0], POLLIN, 0};
    while (got + 1 < sizeof d->endpoint) {
        if (poll(&p, 1, 60000) <= 0)
            break;
        ssize_t r = read(fd[0], d->endpoint + got, 1);
        if (r <= 0 || d->endpoint[got] == '\n')
            break;
        got++;
    }
    d->endpoint[got] = 0;
    close(fd[0]); /* gistd writes nothing more on stdout */
    if (got == 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
        check_fail_(__FILE__, __LINE__, "gistd did not print its endpoint");
        return -1;
    }
    return 0;
}

/* Sends sig to the daemon and returns its exit status (-1: killed by a signal). */
static inline int td_stop(td_daemon_t *d, int sig)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, sig);
    int st;
    while (waitpid(d->pid, &st, 0) < 0 && errno == EINTR)
        ;
    d->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline gc_client_t *td_connect(const td_daemon_t *d)
{
    gc_client_t *c = NULL;
    err_info_t e;
    err_clear(&e);
    if (gc_connect(d->endpoint, 30000, &c, &e))
        check_fail_(__FILE__, __LINE__, "connect %s: %s", d->endpoint, err_msg(&e));
    return c;
}

/* Greedy sampling. */
static const gc_sampling_t td_greedy = {.temp = 0.0f, .repeat_penalty = 1.0f};

/* How td_start_with starts gistd: where its stderr goes (NULL: the test's stderr), and a
 * file-size limit in bytes (RLIMIT_FSIZE, 0: none) set in the child before exec. */
typedef struct td_opts {
    const char *log_path;
    long fsize_limit;
} td_opts_t;

/* td_start with options (see td_opts_t); extra as for td_start. */
static inline int td_start_with(td_daemon_t *d, const char *model, const char *const *extra,
                                const td_opts_t *o)
{
    const char *argv[40];
    int n = 0;
    bool has_listen = false, has_log = false;
    for (int i = 0; extra && extra[i]; i++) {
        has_listen |= !strcmp(extra[i], "--listen");
        has_log |= !strcmp(extra[i], "--log-level");
    }
    argv[n++] = td_bin("gistd");
    argv[n++] = "--model";
    argv[n++] = model;
    if (!has_listen) {
        argv[n++] = "--listen";
        argv[n++] = "tcp://127.0.0.1:*";
    }
    if (!has_log) {
        argv[n++] = "--log-level";
        argv[n++] = "error";
    }
    for (int i = 0; extra && extra[i] && n < 39; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    int fd[2];
    if (pipe(fd) < 0)
        return -1;
    d->pid = fork();
    if (d->pid < 0)
        return -1;
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        if (o && o->log_path) {
            int lf = open(o->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (lf >= 0)
                dup2(lf, 2);
        }
        if (o && o->fsize_limit > 0) {
            struct rlimit rl = {(rlim_t)o->fsize_limit, (rlim_t)o->fsize_limit};
            setrlimit(RLIMIT_FSIZE, &rl);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fd[1]);
    size_t got = 0;
    d->endpoint[0] = 0;
    struct pollfd p = {fd[0], POLLIN, 0};
    while (got + 1 < sizeof d->endpoint) {
        if (poll(&p, 1, 60000) <= 0)
            break;
        ssize_t r = read(fd[0], d->endpoint + got, 1);
        if (r <= 0 || d->endpoint[got] == '\n')
            break;
        got++;
    }
    d->endpoint[got] = 0;
    close(fd[0]);
    if (got == 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
        check_fail_(__FILE__, __LINE__, "gistd did not print its endpoint");
        return -1;
    }
    return 0;
}

/* Resident memory of a process in KiB (VmRSS in /proc/PID/status), or -1. */
static inline long td_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

/* Seconds on a monotonic clock, for deadlines. */
static inline double td_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- sessions and files, for tests that snapshot and restore ---- */

/* A file's bytes (malloc'd, one NUL past *len so text can be searched), or NULL. */
static inline char *td_slurp(const char *path, size_t *len)
{
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
    *len = n > 0 ? (size_t)n : 0;
    if (p)
        p[*len] = 0;
    return p;
}

static inline int td_spew(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    const bool ok = fwrite(p, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Makes the folder name under the test's folder and returns its path. */
static inline const char *td_mkdir(const char *name)
{
    static char path[4][512];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", check_tmpdir(), name);
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        check_fail_(__FILE__, __LINE__, "mkdir %s: %s", p, strerror(errno));
    return p;
}

/* The session's token ids (*n of them; malloc'd), or NULL after a failed check. */
static inline int32_t *td_transcript_ids(gc_client_t *c, uint32_t s, uint32_t *n)
{
    err_info_t e;
    int32_t *ids = NULL;
    uint32_t total = 0;
    *n = 0;
    if (gc_transcript(c, s, 0, 0, NULL, NULL, &ids, n, &total, &e)) {
        check_fail_(__FILE__, __LINE__, "transcript of session %u: %s", s, err_msg(&e));
        return NULL;
    }
    if (*n != total)
        check_fail_(__FILE__, __LINE__, "transcript of session %u: %u of %u tokens", s, *n, total);
    return ids;
}

/* Checks that session s holds exactly ids[0..n), token for token. */
static inline void td_expect_ids(gc_client_t *c, uint32_t s, const int32_t *ids, uint32_t n,
                                 const char *what)
{
    uint32_t m = 0;
    int32_t *got = td_transcript_ids(c, s, &m);
    if (m != n)
        check_fail_(__FILE__, __LINE__, "%s: session %u holds %u tokens, expected %u", what, s, m,
                    n);
    for (uint32_t i = 0; got && ids && i < m && i < n; i++)
        if (got[i] != ids[i]) {
            check_fail_(__FILE__, __LINE__, "%s: session %u position %u: %d, expected %d", what, s,
                        i, got[i], ids[i]);
            break;
        }
    free(got);
}

/* A fresh session holding exactly ids (no BOS added: ids carry their own); its id. */
static inline uint32_t td_twin_of(gc_client_t *c, const int32_t *ids, uint32_t n)
{
    err_info_t e;
    uint32_t s = 0;
    gc_usage_t u;
    gc_open_opts_t oo = {.no_bos = true};
    if (gc_open(c, &oo, &s, &e) || gc_append_tokens(c, s, ids, n, &u, &e))
        check_fail_(__FILE__, __LINE__, "a session of %u tokens: %s", n, err_msg(&e));
    td_expect_ids(c, s, ids, n, "twin");
    return s;
}

/* Checks that sessions a and b go on with the same 12 greedy tokens. */
static inline void td_same_continuation(gc_client_t *c, uint32_t a, uint32_t b, const char *what)
{
    err_info_t e;
    gc_gen_opts_t o = {.session = a, .max_tokens = 12, .sampling = &td_greedy};
    gc_result_t ra = {0}, rb = {0};
    if (gc_generate(c, &o, NULL, &ra, &e))
        check_fail_(__FILE__, __LINE__, "%s: generate on %u: %s", what, a, err_msg(&e));
    o.session = b;
    if (gc_generate(c, &o, NULL, &rb, &e))
        check_fail_(__FILE__, __LINE__, "%s: generate on %u: %s", what, b, err_msg(&e));
    if (!ra.text || !rb.text || strcmp(ra.text, rb.text) || ra.n_tokens != 12)
        check_fail_(__FILE__, __LINE__,
                    "%s: session %u goes on \"%s\" (%u tokens), a fresh one with its tokens "
                    "\"%s\"",
                    what, a, ra.text ? ra.text : "(none)", ra.n_tokens,
                    rb.text ? rb.text : "(none)");
    gc_result_free(&ra);
    gc_result_free(&rb);
}

#endif
