/*
 * tests/test_daemon_util.h — helpers for the daemon's integration tests: run gistd as a real
 * process on a free loopback port (it prints the endpoint it bound on its first stdout line,
 * which is also how a test knows it is ready), make tiny models with gist-model, and run
 * gist-model to get reference outputs; talk to the daemon in raw frames; save snapshot files
 * and check what became of them. Header-only (every helper static inline, named td_*); each
 * test program includes it once. Single-threaded, as the tests are; a failed helper marks the
 * running test failed (check_fail_) where it says so.
 */
#ifndef GISTD_TESTS_TEST_DAEMON_UTIL_H
#define GISTD_TESTS_TEST_DAEMON_UTIL_H

#include <dirent.h>
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
#include <zmq.h>

#include "clients/libgistc/gistc.h"
#include "proto/gistd.pb-c.h"
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

/* Runs argv, waits, and returns its exit status (-1 if it did not exit normally). Its stdout
 * goes to out (NUL-terminated, at most cap - 1 bytes; the rest is read and dropped; their count
 * into *len when len is given) when out is given, and its stderr there too when with_stderr is
 * set, else nowhere. */
static inline int td_run_(char *const argv[], char *out, size_t cap, bool with_stderr,
                          size_t *len)
{
    int fd[2];
    if (pipe(fd) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        if (with_stderr) {
            dup2(fd[1], 2);
        } else {
            int null = open("/dev/null", O_WRONLY);
            if (null >= 0)
                dup2(null, 2);
        }
        close(fd[0]);
        close(fd[1]);
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
    if (len)
        *len = n;
    close(fd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Runs argv; its stdout into out (when given), its stderr nowhere. See td_run_. */
static inline int td_run(char *const argv[], char *out, size_t cap)
{
    return td_run_(argv, out, cap, false, NULL);
}

/* td_run for output that may hold NUL bytes: their count into *len. */
static inline int td_run_bytes(char *const argv[], char *out, size_t cap, size_t *len)
{
    return td_run_(argv, out, cap, false, len);
}

/* Runs argv with its stdout and stderr both into out, for a test of what a program says when
 * it refuses. See td_run_. */
static inline int td_run_all(char *const argv[], char *out, size_t cap)
{
    return td_run_(argv, out, cap, true, NULL);
}

/* The path of name under the test's folder, in a static buffer that stays valid for the next
 * 15 calls (td_tiny_model and td_mkdir return such paths too). */
static inline const char *td_tmp_path(const char *name)
{
    static char path[16][512];
    static int k;
    char *p = path[k++ % 16];
    snprintf(p, sizeof path[0], "%s/%s", check_tmpdir(), name);
    return p;
}

/* Writes a tiny random-weight model (gist-model make-tiny) into the test's folder. */
static inline const char *td_tiny_model(const char *name, const char *seed)
{
    const char *p = td_tmp_path(name);
    char *argv[] = {
        (char *)td_bin("gist-model"), "make-tiny", (char *)p, "--seed", (char *)seed, NULL};
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

/* How td_start_with starts gistd: where its stderr goes (NULL: the test's stderr), and a
 * file-size limit in bytes (RLIMIT_FSIZE, 0: none) set in the child before exec. */
typedef struct td_opts {
    const char *log_path;
    long fsize_limit;
} td_opts_t;

/* Runs gistd as argv (NULL-terminated) with o (NULL: no options) and waits for the endpoint on
 * its first stdout line; d gets its pid and endpoint. -1 when it could not be started, or after
 * a failed check when it printed no endpoint within 60 s (it is then killed). */
static inline int td_spawn_(td_daemon_t *d, const char *const *argv, const td_opts_t *o)
{
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
    return td_spawn_(d, argv, NULL);
}

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
    return td_spawn_(d, argv, o);
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

/* How long a test's client waits for a reply before it fails the test: long enough for the
 * longest prefill of a test (two sessions of 6000 tokens) on two cores shared with busy
 * loops, where 30 s was not; a daemon that stops answering still fails the test. */
#define TD_REPLY_TIMEOUT_MS 120000

/* A client of the daemon (TD_REPLY_TIMEOUT_MS for every reply), or NULL after a failed check. */
static inline gc_client_t *td_connect(const td_daemon_t *d)
{
    gc_client_t *c = NULL;
    err_info_t e;
    err_clear(&e);
    if (gc_connect(d->endpoint, TD_REPLY_TIMEOUT_MS, &c, &e))
        check_fail_(__FILE__, __LINE__, "connect %s: %s", d->endpoint, err_msg(&e));
    return c;
}

/* td_start, then td_connect: the connected client, or NULL after a failed check (the daemon is
 * then not left running). A NULL model (a fixture whose own check failed) gives NULL at once. */
static inline gc_client_t *td_up(td_daemon_t *d, const char *model, const char *const *extra)
{
    if (!model)
        return NULL;
    if (td_start(d, model, extra)) {
        check_fail_(__FILE__, __LINE__, "gistd %s could not be started", model);
        return NULL;
    }
    gc_client_t *c = td_connect(d);
    if (!c)
        td_stop(d, SIGKILL);
    return c;
}

/* Greedy sampling. */
static const gc_sampling_t td_greedy = {.temp = 0.0f, .repeat_penalty = 1.0f};

/* A tiny model (td_tiny_model) and, into ref, the text gist-model adds after prompt in n
 * greedy tokens (td_reference): the model's path, or NULL after a failed check. */
static inline const char *td_tiny_reference(const char *name, const char *seed, const char *prompt,
                                            const char *n, char *ref, size_t cap)
{
    const char *model = td_tiny_model(name, seed);
    if (!model || td_reference(model, prompt, n, ref, cap)) {
        check_fail_(__FILE__, __LINE__, "no reference for \"%s\" from %s", prompt, name);
        return NULL;
    }
    return model;
}

/* Whether memory bounds mean anything in this build: under sanitizers RSS says nothing about
 * the daemon (shadow memory, quarantined frees), so the tests do not check it there. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TD_RSS_CHECKED 0
#else
#define TD_RSS_CHECKED 1
#endif

/* A figure of /proc/PID/status in bytes (field "VmRSS", "VmHWM", ...), or -1. */
static inline long td_vm_bytes(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    const size_t fl = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':') {
            v = strtol(line + fl + 1, NULL, 10);
            break;
        }
    if (f)
        fclose(f);
    return v < 0 ? -1 : v * 1024;
}

/* Resident memory of a process in KiB (VmRSS in /proc/PID/status), or -1. */
static inline long td_rss_kib(pid_t pid)
{
    const long b = td_vm_bytes(pid, "VmRSS");
    return b < 0 ? -1 : b / 1024;
}

/* Seconds on a monotonic clock, for deadlines. */
static inline double td_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- sessions and files, for tests that snapshot and restore ---- */

/* Writes len bytes of p to path (replacing it); 0 or -1. Its reader is check_slurp. */
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
    const char *p = td_tmp_path(name);
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

/* Appends text to session s (role none), checked. */
static inline void td_append(gc_client_t *c, uint32_t s, const char *text)
{
    err_info_t e;
    gc_usage_t u;
    if (gc_append(c, s, text, 0, GC_ROLE_NONE, &u, &e))
        check_fail_(__FILE__, __LINE__, "append to session %u: %s", s, err_msg(&e));
}

/* Generates n greedy tokens on session s (after prompt; NULL: none) and copies their text into
 * out (empty when it fails, which is a failed check). 0 or the error code. */
static inline int td_gen_text(gc_client_t *c, uint32_t s, uint32_t n, const char *prompt, char *out,
                              size_t cap)
{
    gc_gen_opts_t o = {.session = s, .max_tokens = n, .prompt = prompt, .sampling = &td_greedy};
    gc_result_t res = {0};
    err_info_t e;
    int rc = gc_generate(c, &o, NULL, &res, &e);
    if (rc)
        check_fail_(__FILE__, __LINE__, "generate on session %u: %s", s, err_msg(&e));
    snprintf(out, cap, "%s", res.text ? res.text : "");
    gc_result_free(&res);
    return rc;
}

/* Tokens of a long turn (all inside the tiny vocabulary, none special); salt varies them. */
static inline void td_long_turn(int32_t *ids, uint32_t n, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        ids[i] = (int32_t)(3 + (i * 7919u + salt * 104729u + 13u) % 380u);
}

/* A file of the snapshot folder, as saved by the test (p malloc'd; NULL when it was missing). */
typedef struct td_saved {
    char path[512];
    uint8_t *p;
    size_t len;
} td_saved_t;

/* Saves dir/session-ID.gistd + suffix ("" the body, ".kv" the rows) into s; a failed check
 * when the file is missing. */
static inline void td_save(td_saved_t *s, const char *dir, uint32_t id, const char *suffix)
{
    snprintf(s->path, sizeof s->path, "%s/session-%u.gistd%s", dir, id, suffix);
    s->p = (uint8_t *)check_slurp(s->path, &s->len);
    if (!s->p)
        check_fail_(__FILE__, __LINE__, "%s is missing", s->path);
}

/* The file at path (may differ from where it was saved) still holds the saved bytes. */
static inline bool td_unchanged(const td_saved_t *s, const char *path)
{
    size_t len;
    uint8_t *p = (uint8_t *)check_slurp(path, &len);
    const bool same = p && s->p && len == s->len && !memcmp(p, s->p, len);
    free(p);
    return same;
}

/* Files in dir whose name marks a temporary file of a snapshot (".tmp", ".next"), each named
 * on stderr. */
static inline int td_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp") || strstr(de->d_name, ".next")) {
            fprintf(stderr, "# left in %s: %s\n", dir, de->d_name);
            n++;
        }
    if (d)
        closedir(d);
    return n;
}

/* ---- raw frames, for what libgistc would not send or would not wait for ---- */

/* A DEALER connected to ep, with 30 s receive and send timeouts (a daemon that stopped
 * reading or answering fails the test instead of hanging it). */
static inline void *td_raw_open(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, tmo = 30000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &tmo, sizeof tmo);
    zmq_connect(s, ep);
    return s;
}

/* Sends [empty][r packed], whatever its size; 0 or -1. */
static inline int td_raw_request(void *s, const Gistd__Request *r)
{
    uint8_t small[4096];
    const size_t n = gistd__request__get_packed_size(r);
    uint8_t *buf = n <= sizeof small ? small : malloc(n);
    if (!buf)
        return -1;
    gistd__request__pack(r, buf);
    const int rc = zmq_send(s, "", 0, ZMQ_SNDMORE) < 0 || zmq_send(s, buf, n, 0) < 0 ? -1 : 0;
    if (buf != small)
        free(buf);
    return rc;
}

/* Receives [empty][payload] and decodes it (NULL on a timeout, a bad reply or one over 64 KiB;
 * the caller frees it with gistd__reply__free_unpacked). */
static inline Gistd__Reply *td_raw_recv(void *s)
{
    static uint8_t buf[1 << 16];
    int n = zmq_recv(s, buf, sizeof buf, 0);
    if (n != 0)
        return NULL;
    int more;
    size_t ml = sizeof more;
    zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml);
    if (!more)
        return NULL;
    n = zmq_recv(s, buf, sizeof buf, 0);
    return n < 0 || (size_t)n > sizeof buf ? NULL : gistd__reply__unpack(NULL, (size_t)n, buf);
}

#endif
