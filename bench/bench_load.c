/*
 * bench/bench_load.c — a load generator for gistd: many clients at once, each on its own thread
 * with its own libgistc connection, running the mix a chat service sees; with --duration, a
 * soak that prints the daemon's memory every interval and says whether it stays flat.
 *
 *   bench_load --spawn --model FILE [--gistd PATH] [gistd options...]
 *   bench_load --endpoint E [--pid PID]
 *       [--clients 64] [--requests 2000 | --duration SECONDS] [--interval 10]
 *       [--policy auto] [--budget SIZE] [--seed 1] [--timeout-ms 60000]
 *
 * --spawn starts gistd (PATH, default the gistd beside this program) on a free loopback port,
 * with --max-sessions 2 x clients + 8; options bench_load does not know go to it with their
 * value (--kv-budget 4M, --threads 1, ...). --endpoint uses a running daemon: only loopback
 * tcp (127.x.x.x, localhost, [::1]) and ipc:// endpoints are accepted.
 *
 * Each client opens a session (--policy; --budget, default 256 tokens' KV bytes; template
 * "plain") and streams turns: a user line appended, then an assistant reply of 8 to 32 tokens
 * (sampled, a seed per request). Now and then it continues a reply, scores a sentence, asks
 * for its session's figures or the daemon's stats, or closes its session and opens another.
 * With --requests, the total is shared out between the clients, every call counting as one
 * request, the last one of each client closing its session. With --duration each client runs
 * until the time is up, and every --interval seconds a line gives the requests and p99
 * latency of that interval, the daemon's VmRSS and jemalloc's figures for the KV arena.
 *
 * Report: requests, req/s and generated tok/s, latency p50/p90/p99/max per request kind
 * (successful requests; percentiles from a log histogram, within 2%), every distinct error
 * (rate limiting named as such), the daemon's VmHWM and VmRSS (/proc/PID/status: a spawned
 * daemon or --pid) and its stats (jemalloc, KV bytes, compactions). With a spawned daemon the
 * daemon's own request count must match what the clients sent. A soak ends with the RSS slope
 * over its second half (least squares over 1 s samples, KiB/min): "memory flat" is judged on
 * it. The last line, "summary: key=value ...", is for scripts. Exit status: 0 when every
 * request succeeded and was accounted for, 1 otherwise, 2 for bad options.
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "clients/libgistc/gistc.h"

#define MAX_CLIENTS    1024
#define MAX_GISTD_ARGS 64
#define MAX_ERRS       32 /* distinct errors kept */

enum kind { K_OPEN, K_APPEND, K_GENERATE, K_SCORE, K_STATS, K_INFO, K_CLOSE, N_KINDS };
static const char *const kind_name[N_KINDS] = {"open",  "append", "generate", "score",
                                               "stats", "info",   "close"};

/* ------------------------------------------------------------------ latency histograms */

/* Bucket i > 0 holds latencies in (H_MIN_MS * H_RATIO^(i-1), H_MIN_MS * H_RATIO^i] ms. */
#define H_BUCKETS 1024
#define H_MIN_MS  0.01
#define H_RATIO   1.02

typedef struct hist {
    uint64_t n;
    double max;
    uint32_t b[H_BUCKETS];
} hist_t;

static void hist_add(hist_t *h, double ms)
{
    int i = 0;
    if (ms > H_MIN_MS)
        i = (int)ceil(log(ms / H_MIN_MS) / log(H_RATIO));
    h->b[i < H_BUCKETS ? i : H_BUCKETS - 1]++;
    h->n++;
    h->max = ms > h->max ? ms : h->max;
}

static void hist_merge(hist_t *to, const hist_t *h)
{
    for (int i = 0; i < H_BUCKETS; i++)
        to->b[i] += h->b[i];
    to->n += h->n;
    to->max = h->max > to->max ? h->max : to->max;
}

/* The q-quantile's bucket's upper edge (never above the largest latency seen). */
static double hist_pct(const hist_t *h, double q)
{
    if (h->n == 0)
        return 0.0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->n), seen = 0;
    rank = rank ? rank : 1;
    for (int i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            const double edge = H_MIN_MS * pow(H_RATIO, i);
            return edge < h->max ? edge : h->max;
        }
    }
    return h->max;
}

/* ------------------------------------------------------------------ shared state */

typedef struct err_seen {
    int kind, code;
    char msg[200]; /* the first message of this kind and code */
    uint64_t n;
} err_seen_t;

typedef struct load {
    /* settings */
    const char *endpoint, *policy;
    int n_clients, timeout_ms;
    uint64_t requests; /* total (0: soak) */
    double duration;   /* soak seconds (0: --requests) */
    size_t budget;
    uint64_t seed;
    double t_end; /* soak: when clients stop */
    /* results, under mu */
    pthread_mutex_t mu;
    hist_t kind[N_KINDS];
    hist_t iv; /* every kind, this interval */
    uint64_t tokens, errors;
    err_seen_t errs[MAX_ERRS];
    int n_errs;
    uint64_t errs_other; /* errors of a kind and code beyond MAX_ERRS */
    atomic_int running;
    atomic_bool abort; /* the daemon is gone: clients stop after their current request */
} load_t;

typedef struct client {
    load_t *L;
    pthread_t thread;
    gc_client_t *gc;
    uint64_t quota, done, failed;
    uint32_t session;
    bool open, timed_out;
    uint64_t rng;
} client_t;

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static const char *code_label(int code)
{
    return code == ERR_RATE ? "RATE-LIMITED" : code == ERR_TIMEOUT ? "TIMEOUT" : "ERROR";
}

/* Records an error: the first message of each (kind, code) is kept and counted. */
static void note_error_locked(load_t *L, int kind, int code, const err_info_t *e)
{
    L->errors++;
    for (int i = 0; i < L->n_errs; i++)
        if (L->errs[i].kind == kind && L->errs[i].code == code) {
            L->errs[i].n++;
            return;
        }
    if (L->n_errs == MAX_ERRS) {
        L->errs_other++;
        return;
    }
    err_seen_t *s = &L->errs[L->n_errs++];
    s->kind = kind;
    s->code = code;
    s->n = 1;
    snprintf(s->msg, sizeof s->msg, "%s", err_msg(e));
}

/* Accounts for one request of client c. */
static void note(client_t *c, int kind, double t0, int rc, const err_info_t *e, uint32_t n_tok)
{
    load_t *L = c->L;
    const double ms = (bench_now() - t0) * 1e3;
    c->done++;
    c->failed += rc != 0;
    c->timed_out |= rc == ERR_TIMEOUT;
    pthread_mutex_lock(&L->mu);
    if (rc) {
        note_error_locked(L, kind, rc, e);
    } else {
        hist_add(&L->kind[kind], ms);
        hist_add(&L->iv, ms);
        L->tokens += n_tok;
    }
    pthread_mutex_unlock(&L->mu);
}

/* ------------------------------------------------------------------ one client */

static const char *const user_lines[] = {
    "Tell me a story about a cat.",
    "What happened next?",
    "Why was the little boy sad?",
    "Once upon a time there was a big red ball.",
    "Lily and Tom went to the park. What did they see?",
    "The dog wanted to play. Did the bird fly away?",
    "Tell me more about the girl and her mom.",
    "And then what did they do?",
};
#define N_LINES (sizeof user_lines / sizeof user_lines[0])

static int do_open(client_t *c)
{
    err_info_t e = {0};
    gc_open_opts_t o = {
        .policy = c->L->policy, .budget_bytes = c->L->budget, .chat_template = "plain"};
    const double t0 = bench_now();
    int rc = gc_open(c->gc, &o, &c->session, &e);
    note(c, K_OPEN, t0, rc, &e, 0);
    c->open = rc == 0;
    return rc;
}

static void do_close(client_t *c)
{
    err_info_t e = {0};
    const double t0 = bench_now();
    int rc = gc_close(c->gc, c->session, &e);
    note(c, K_CLOSE, t0, rc, &e, 0);
    c->open = false; /* a failed close is an error either way; the next open starts afresh */
}

static void do_append(client_t *c)
{
    err_info_t e = {0};
    const char *line = user_lines[rng_next(&c->rng) % N_LINES];
    const double t0 = bench_now();
    int rc = gc_append(c->gc, c->session, line, 0, GC_ROLE_USER, NULL, &e);
    note(c, K_APPEND, t0, rc, &e, 0);
}

static void do_generate(client_t *c)
{
    err_info_t e = {0};
    gc_sampling_t smp;
    gc_sampling_default(&smp);
    smp.seed = rng_next(&c->rng);
    gc_gen_opts_t o = {.session = c->session,
                       .max_tokens = 8 + (uint32_t)(rng_next(&c->rng) % 25),
                       .role = GC_ROLE_ASSISTANT,
                       .sampling = &smp};
    gc_result_t res = {0};
    const double t0 = bench_now();
    int rc = gc_generate(c->gc, &o, NULL, &res, &e);
    note(c, K_GENERATE, t0, rc, &e, rc ? 0 : res.n_tokens);
    gc_result_free(&res);
}

static void do_score(client_t *c)
{
    err_info_t e = {0};
    float *lp = NULL;
    int32_t *tok = NULL;
    size_t n = 0;
    double total = 0;
    const char *line = user_lines[rng_next(&c->rng) % N_LINES];
    const double t0 = bench_now();
    int rc = gc_score(c->gc, c->session, line, NULL, 0, &lp, &tok, &n, &total, &e);
    if (!rc && (n == 0 || !isfinite(total)))
        rc = err_set(&e, ERR_INTERNAL, "score of \"%s\": %zu tokens, total %g", line, n, total);
    note(c, K_SCORE, t0, rc, &e, 0);
    free(lp);
    free(tok);
}

static void do_stats(client_t *c)
{
    err_info_t e = {0};
    gc_stats_t st;
    const bool sessions = rng_next(&c->rng) % 4 == 0;
    const double t0 = bench_now();
    int rc = gc_stats(c->gc, sessions, &st, &e);
    note(c, K_STATS, t0, rc, &e, 0);
    if (!rc)
        gc_stats_free(&st);
}

static void do_info(client_t *c)
{
    err_info_t e = {0};
    gc_session_info_t si;
    const double t0 = bench_now();
    int rc = gc_session_info(c->gc, c->session, &si, &e);
    if (!rc && si.id != c->session)
        rc = err_set(&e, ERR_INTERNAL, "info for session %u names session %u", c->session, si.id);
    note(c, K_INFO, t0, rc, &e, 0);
}

/* One step of the mix. `left` counts the requests still to send (UINT64_MAX: soak); a client
 * with a session keeps one back for closing it. */
static void step(client_t *c, uint64_t left)
{
    if (!c->open) {
        if (left >= 2)
            do_open(c);
        else
            do_stats(c);
        return;
    }
    if (left == 1) {
        do_close(c);
        return;
    }
    const uint32_t r = (uint32_t)(rng_next(&c->rng) % 100);
    if (r < 55 && left >= 4) { /* a turn: the user's line, then the reply */
        do_append(c);
        if (!c->timed_out)
            do_generate(c);
    } else if (r < 65) {
        do_generate(c); /* the reply goes on */
    } else if (r < 75) {
        do_score(c);
    } else if (r < 85) {
        do_stats(c);
    } else if (r < 95 || left < 4) {
        do_info(c);
    } else {
        do_close(c); /* and the next step opens another */
    }
}

static void *client_main(void *arg)
{
    client_t *c = arg;
    load_t *L = c->L;
    err_info_t e = {0};
    if (gc_connect(L->endpoint, L->timeout_ms, &c->gc, &e)) {
        pthread_mutex_lock(&L->mu);
        note_error_locked(L, -1, e.code ? e.code : ERR_IO, &e);
        pthread_mutex_unlock(&L->mu);
        atomic_fetch_sub(&L->running, 1);
        return NULL;
    }
    for (;;) {
        uint64_t left;
        if (L->duration > 0) {
            if (bench_now() >= L->t_end) {
                if (c->open)
                    do_close(c);
                break;
            }
            left = UINT64_MAX;
        } else {
            left = c->quota - c->done;
        }
        if (left == 0 || c->timed_out || atomic_load(&L->abort))
            break; /* done; or no answer (the connection is suspect), or no daemon */
        step(c, left);
    }
    gc_disconnect(&c->gc);
    atomic_fetch_sub(&L->running, 1);
    return NULL;
}

/* ------------------------------------------------------------------ the daemon */

/* VmHWM and VmRSS of pid in KiB; -1 when it cannot be read. */
static int read_mem(pid_t pid, long *hwm, long *rss)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    *hwm = *rss = -1;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "VmHWM: %ld kB", hwm);
        sscanf(line, "VmRSS: %ld kB", rss);
    }
    fclose(f);
    return *hwm >= 0 && *rss >= 0 ? 0 : -1;
}

/* The daemon's memory, sampled by the main thread: the last figures, the largest VmRSS seen,
 * and (t, VmRSS) pairs for the soak's slope. */
typedef struct memwatch {
    pid_t pid; /* 0: unknown */
    long hwm, rss, rss_max;
    size_t n, cap;
    double *t;
    long *rss_at;
} memwatch_t;

static bool mem_sample(memwatch_t *m, double t)
{
    if (m->pid <= 0 || read_mem(m->pid, &m->hwm, &m->rss))
        return false;
    m->rss_max = m->rss > m->rss_max ? m->rss : m->rss_max;
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 256;
        double *nt = realloc(m->t, m->cap * sizeof *nt);
        m->t = nt ? nt : m->t;
        long *nr = realloc(m->rss_at, m->cap * sizeof *nr);
        m->rss_at = nr ? nr : m->rss_at;
        if (!nt || !nr) {
            fprintf(stderr, "bench_load: out of memory\n");
            exit(1);
        }
    }
    m->t[m->n] = t;
    m->rss_at[m->n++] = m->rss;
    return true;
}

/* ipc://..., or tcp:// on 127.x.x.x, localhost or [::1]. */
static bool is_loopback(const char *ep)
{
    if (!strncmp(ep, "ipc://", 6))
        return true;
    if (strncmp(ep, "tcp://", 6))
        return false;
    const char *h = ep + 6;
    return !strncmp(h, "127.", 4) || !strncmp(h, "localhost:", 10) || !strncmp(h, "[::1]:", 6);
}

/* Starts gistd with argv (NULL-terminated) and reads the endpoint from its first stdout line. */
static pid_t spawn_gistd(char *const *argv, char *ep, size_t cap)
{
    int fd[2];
    if (pipe(fd) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* no daemon outlives the benchmark */
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execv(argv[0], argv);
        fprintf(stderr, "bench_load: cannot run %s\n", argv[0]);
        _exit(127);
    }
    close(fd[1]);
    size_t n = 0;
    while (n + 1 < cap && read(fd[0], ep + n, 1) == 1 && ep[n] != '\n')
        n++;
    ep[n] = 0;
    close(fd[0]);
    if (n == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/* The gistd beside this program. */
static void default_gistd(char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 16);
    if (n <= 0) {
        snprintf(buf, cap, "build/bin/gistd");
        return;
    }
    buf[n] = 0;
    char *slash = strrchr(buf, '/');
    snprintf(slash ? slash + 1 : buf, 16, "gistd");
}

/* ------------------------------------------------------------------ reporting */

static void print_latency(const load_t *L)
{
    printf("%-9s %9s %10s %10s %10s %10s\n", "kind", "count", "p50 ms", "p90 ms", "p99 ms",
           "max ms");
    hist_t all = {0};
    for (int k = 0; k < N_KINDS; k++) {
        const hist_t *h = &L->kind[k];
        hist_merge(&all, h);
        if (h->n)
            printf("%-9s %9llu %10.2f %10.2f %10.2f %10.2f\n", kind_name[k],
                   (unsigned long long)h->n, hist_pct(h, 0.5), hist_pct(h, 0.9), hist_pct(h, 0.99),
                   h->max);
    }
    printf("%-9s %9llu %10.2f %10.2f %10.2f %10.2f\n", "all", (unsigned long long)all.n,
           hist_pct(&all, 0.5), hist_pct(&all, 0.9), hist_pct(&all, 0.99), all.max);
}

static void print_errors(const load_t *L)
{
    printf("errors %llu\n", (unsigned long long)L->errors);
    for (int i = 0; i < L->n_errs; i++) {
        const err_seen_t *s = &L->errs[i];
        printf("  %s x%llu: %s (%s): %s%s\n", code_label(s->code), (unsigned long long)s->n,
               s->kind < 0 ? "connect" : kind_name[s->kind], err_str(s->code), s->msg,
               s->code == ERR_RATE ? " [the daemon's per-client rate limit: raise it]" : "");
    }
    if (L->errs_other)
        printf("  and %llu more of other kinds\n", (unsigned long long)L->errs_other);
}

/* Least-squares slope of rss over t (KiB per minute) for the samples in [t_from, t_to], their
 * number and their range (KiB). */
static double rss_slope(const double *t, const long *rss, size_t n, double t_from, double t_to,
                        size_t *used, long *lo, long *hi)
{
    double st = 0, sr = 0, stt = 0, str = 0;
    size_t k = 0;
    *lo = *hi = -1;
    for (size_t i = 0; i < n; i++) {
        if (t[i] < t_from || t[i] > t_to)
            continue;
        st += t[i];
        sr += (double)rss[i];
        stt += t[i] * t[i];
        str += t[i] * (double)rss[i];
        *lo = k == 0 || rss[i] < *lo ? rss[i] : *lo;
        *hi = k == 0 || rss[i] > *hi ? rss[i] : *hi;
        k++;
    }
    *used = k;
    const double den = (double)k * stt - st * st;
    return k >= 2 && den > 0 ? ((double)k * str - st * sr) / den * 60.0 : 0.0;
}

/* One soak line: this interval's requests, req/s, p99 and errors; VmRSS; the KV arena's
 * jemalloc figures (the monitor's own stats call). */
static void soak_line(load_t *L, gc_client_t *mon, const memwatch_t *m, double t, double span,
                      uint64_t *errors_before)
{
    pthread_mutex_lock(&L->mu);
    const double p99 = hist_pct(&L->iv, 0.99);
    const uint64_t n = L->iv.n, errors = L->errors - *errors_before;
    *errors_before = L->errors;
    memset(&L->iv, 0, sizeof L->iv);
    pthread_mutex_unlock(&L->mu);
    gc_stats_t s;
    err_info_t e;
    const bool ok = gc_stats(mon, false, &s, &e) == 0;
    printf("%8.0f %9llu %8.1f %9.2f %7llu %11ld %13.0f %13.0f\n", t, (unsigned long long)n,
           n / span, p99, (unsigned long long)errors, m->pid > 0 ? m->rss : -1L,
           ok ? s.je_allocated / 1024.0 : -1.0, ok ? s.je_resident / 1024.0 : -1.0);
    fflush(stdout);
    if (ok)
        gc_stats_free(&s);
}

/* ------------------------------------------------------------------ main */

static int usage(void)
{
    fputs("usage: bench_load --spawn --model FILE [--gistd PATH] [gistd options...]\n"
          "       bench_load --endpoint E [--pid PID]\n"
          "           [--clients 64] [--requests 2000 | --duration SECONDS] [--interval 10]\n"
          "           [--policy auto] [--budget SIZE] [--seed 1] [--timeout-ms 60000]\n",
          stderr);
    return 2;
}

int main(int argc, char **argv)
{
    static load_t L;
    static client_t cl[MAX_CLIENTS];
    const char *model = NULL, *endpoint = NULL, *budget_arg = NULL;
    const char *gargs[MAX_GISTD_ARGS];
    char gistd[512], ep[256], maxs[32];
    int n_gargs = 0, spawn = 0;
    double interval = 10.0;
    long given_pid = 0;
    L.n_clients = 64;
    L.policy = "auto";
    L.seed = 1;
    L.timeout_ms = 60000;
    default_gistd(gistd, sizeof gistd);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--spawn")) {
            spawn = 1;
            continue;
        }
        if (!v)
            return usage();
        i++;
        if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--endpoint"))
            endpoint = v;
        else if (!strcmp(a, "--gistd"))
            snprintf(gistd, sizeof gistd, "%s", v);
        else if (!strcmp(a, "--pid"))
            given_pid = atol(v);
        else if (!strcmp(a, "--clients"))
            L.n_clients = atoi(v);
        else if (!strcmp(a, "--requests"))
            L.requests = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--duration"))
            L.duration = atof(v);
        else if (!strcmp(a, "--interval"))
            interval = atof(v);
        else if (!strcmp(a, "--policy"))
            L.policy = v;
        else if (!strcmp(a, "--budget"))
            budget_arg = v;
        else if (!strcmp(a, "--seed"))
            L.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--timeout-ms"))
            L.timeout_ms = atoi(v);
        else if (spawn && a[0] == '-' && a[1] == '-' && n_gargs + 2 < MAX_GISTD_ARGS - 12) {
            if (!strcmp(a, "--listen") && !is_loopback(v)) {
                fprintf(stderr, "bench_load: --listen %s is not loopback or ipc\n", v);
                return 2;
            }
            gargs[n_gargs++] = a; /* for gistd */
            gargs[n_gargs++] = v;
        } else {
            fprintf(stderr, "bench_load: unknown option '%s'\n", a);
            return usage();
        }
    }
    if (spawn == !!endpoint || (spawn && !model) || L.n_clients < 1 || L.n_clients > MAX_CLIENTS ||
        (L.requests > 0) == (L.duration > 0) || interval <= 0 || L.timeout_ms <= 0) {
        fprintf(stderr,
                "bench_load: give --spawn --model FILE or --endpoint E; 1 to %d clients; "
                "either --requests N or --duration SECONDS\n",
                MAX_CLIENTS);
        return usage();
    }
    if (L.requests && L.requests < 2ull * (uint64_t)L.n_clients) {
        fprintf(stderr, "bench_load: --requests must be at least 2 per client (open, close)\n");
        return 2;
    }
    if (endpoint && !is_loopback(endpoint)) {
        fprintf(stderr, "bench_load: %s is not a loopback or ipc endpoint: refused\n", endpoint);
        return 2;
    }

    /* the daemon */
    pid_t pid = (pid_t)given_pid;
    if (spawn) {
        snprintf(maxs, sizeof maxs, "%d", 2 * L.n_clients + 8);
        const char *av[MAX_GISTD_ARGS] = {gistd,      "--model",           model,
                                          "--listen", "tcp://127.0.0.1:*", "--log-level",
                                          "error",    "--max-sessions",    maxs};
        int n = 9;
        for (int i = 0; i < n_gargs; i++) /* later options win */
            av[n++] = gargs[i];
        av[n] = NULL;
        pid = spawn_gistd((char *const *)av, ep, sizeof ep);
        if (pid < 0) {
            fprintf(stderr, "bench_load: %s did not start\n", gistd);
            return 1;
        }
        endpoint = ep;
    }
    L.endpoint = endpoint;
    pthread_mutex_init(&L.mu, NULL);
    int rc = 1;
    err_info_t e = {0};
    gc_client_t *mon = NULL; /* the monitor's own connection */
    uint64_t mon_calls = 0;
    gc_stats_t st0 = {0}, st1 = {0};
    if (gc_connect(endpoint, L.timeout_ms, &mon, &e) || gc_stats(mon, false, &st0, &e)) {
        fprintf(stderr, "bench_load: %s: %s\n", endpoint, err_msg(&e));
        goto out;
    }
    mon_calls++;
    if (budget_arg) {
        if (gc_parse_size(budget_arg, &L.budget)) {
            fprintf(stderr, "bench_load: --budget: '%s' is not a size\n", budget_arg);
            rc = 2;
            goto out;
        }
    } else {
        L.budget = (size_t)st0.kv_bytes_per_token * 256;
    }

    char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];
    bench_print_machine();
    const gc_model_info_t *mi = gc_model(mon);
    printf("# gistd %s on %s (pid %ld), model %s: n_embd %u, n_layer %u, n_head %u/%u\n",
           spawn ? "spawned" : "running", endpoint, (long)pid, mi->name, mi->n_embd, mi->n_layer,
           mi->n_head, mi->n_head_kv);
    if (L.duration > 0)
        printf("# soak: %d clients for %.0f s, a line every %.0f s\n", L.n_clients, L.duration,
               interval);
    else
        printf("# load: %d clients, %llu requests\n", L.n_clients, (unsigned long long)L.requests);
    printf("# sessions: policy %s, budget %s, template plain; replies of 8-32 tokens\n", L.policy,
           gc_format_size(L.budget, b1, sizeof b1));
    fflush(stdout);

    /* memory samples, one a second (soak: for the slope) */
    memwatch_t mw = {.pid = pid, .hwm = -1, .rss = -1, .rss_max = -1};
    const bool have_pid = mem_sample(&mw, 0.0);

    const double t0 = bench_now();
    L.t_end = t0 + L.duration;
    atomic_store(&L.running, L.n_clients);
    for (int i = 0; i < L.n_clients; i++) {
        cl[i].L = &L;
        cl[i].rng = L.seed * 1000003u + (uint64_t)i;
        cl[i].quota =
            L.requests / (uint64_t)L.n_clients + ((uint64_t)i < L.requests % (uint64_t)L.n_clients);
        if (pthread_create(&cl[i].thread, NULL, client_main, &cl[i])) {
            fprintf(stderr, "bench_load: cannot start client thread %d\n", i);
            atomic_fetch_sub(&L.running, L.n_clients - i);
            L.n_clients = i;
            break;
        }
    }
    if (L.duration > 0)
        printf("%8s %9s %8s %9s %7s %11s %13s %13s\n", "time s", "requests", "req/s", "p99 ms",
               "errors", "rss KiB", "je alloc KiB", "je resid KiB");
    double next_sample = t0 + 1.0, next_line = t0 + interval;
    int dstatus = 0;
    bool died = false;
    uint64_t errors_before = 0;
    while (atomic_load(&L.running) > 0) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        const double now = bench_now();
        if (spawn && !died && waitpid(pid, &dstatus, WNOHANG) == pid) {
            died = true;
            atomic_store(&L.abort, true);
            printf("daemon died after %.1f s (%s %d); stopping the clients\n", now - t0,
                   WIFSIGNALED(dstatus) ? "signal" : "exit status",
                   WIFSIGNALED(dstatus) ? WTERMSIG(dstatus) : WEXITSTATUS(dstatus));
            fflush(stdout);
        }
        if (have_pid && !died && now >= next_sample) {
            next_sample += 1.0;
            mem_sample(&mw, now - t0);
        }
        if (L.duration > 0 && now >= next_line && now < L.t_end) { /* not the closing */
            soak_line(&L, mon, &mw, now - t0, now - (next_line - interval), &errors_before);
            mon_calls++;
            next_line += interval;
        }
    }
    for (int i = 0; i < L.n_clients; i++)
        pthread_join(cl[i].thread, NULL);
    const double wall = bench_now() - t0;

    /* the figures */
    if (have_pid)
        mem_sample(&mw, wall);
    uint64_t done = 0, failed = 0, short_clients = 0, cmin = UINT64_MAX, cmax = 0;
    for (int i = 0; i < L.n_clients; i++) {
        done += cl[i].done;
        failed += cl[i].failed;
        short_clients += L.requests && cl[i].done != cl[i].quota;
        cmin = cl[i].done < cmin ? cl[i].done : cmin;
        cmax = cl[i].done > cmax ? cl[i].done : cmax;
    }
    printf("\n");
    print_latency(&L);
    printf("requests %llu in %.1f s: %.1f req/s; generated %llu tokens: %.1f tok/s\n",
           (unsigned long long)done, wall, done / wall, (unsigned long long)L.tokens,
           L.tokens / wall);
    printf("per client: %llu to %llu requests", (unsigned long long)cmin, (unsigned long long)cmax);
    if (L.requests)
        printf(" (%llu of %d clients short of their share)", (unsigned long long)short_clients,
               L.n_clients);
    printf("\n");
    print_errors(&L);
    const bool st_ok = !died && gc_stats(mon, false, &st1, &e) == 0;
    mon_calls++;
    int64_t unaccounted = 0;
    if (st_ok) {
        /* every message the daemon received since the first stats call (that one included) */
        const uint64_t seen = st1.requests - st0.requests + 1;
        const uint64_t sent = done + (uint64_t)L.n_clients + mon_calls; /* every handshake tried */
        unaccounted = (int64_t)seen - (int64_t)sent;
        printf("daemon: %llu requests seen (%llu sent with handshakes and monitoring), "
               "%llu errors, %llu compactions, %llu budget refusals\n",
               (unsigned long long)seen, (unsigned long long)sent,
               (unsigned long long)(st1.errors - st0.errors), (unsigned long long)st1.compactions,
               (unsigned long long)st1.budget_refusals);
        printf("daemon KV: %s used, %s peak, budget %s; jemalloc (KV arena): allocated %s, "
               "active %s, resident %s\n",
               gc_format_size(st1.kv_used_bytes, b1, sizeof b1),
               gc_format_size(st1.kv_peak_bytes, b2, sizeof b2),
               st1.kv_budget_bytes ? gc_format_size(st1.kv_budget_bytes, b3, sizeof b3) : "none",
               gc_format_size(st1.je_allocated, b4, sizeof b4),
               gc_format_size(st1.je_active, b5, sizeof b5),
               gc_format_size(st1.je_resident, b6, sizeof b6));
    } else {
        printf("daemon: %s\n", died ? "gone, no stats" : err_msg(&e));
    }
    if (have_pid)
        printf("daemon memory: VmHWM %.1f MiB, VmRSS %.1f MiB now, %.1f MiB at most while "
               "sampled\n",
               mw.hwm / 1024.0, mw.rss / 1024.0, mw.rss_max / 1024.0);
    else
        printf("daemon memory: unknown (give --pid)\n");
    double slope = 0;
    size_t used = 0;
    if (L.duration > 0 && have_pid) {
        /* the second half of the soak, not the clients' closing after it */
        long lo, hi;
        slope = rss_slope(mw.t, mw.rss_at, mw.n, L.duration / 2, L.duration, &used, &lo, &hi);
        printf("rss slope over the second half: %+.1f KiB/min (%zu samples, VmRSS %ld to %ld "
               "KiB)\n",
               slope, used, lo, hi);
    }
    gc_disconnect(&mon);
    if (spawn && !died) {
        if (waitpid(pid, &dstatus, WNOHANG) == pid) {
            printf("daemon died at the end of the run (status %d)\n", dstatus);
            died = true;
        } else {
            kill(pid, SIGTERM);
            waitpid(pid, &dstatus, 0);
            dstatus = WIFEXITED(dstatus) ? WEXITSTATUS(dstatus) : -1;
            if (dstatus)
                printf("daemon exit status %d after SIGTERM\n", dstatus);
        }
    }
    if (spawn)
        pid = 0;
    const bool ok = L.errors == 0 && failed == 0 && short_clients == 0 && st_ok &&
                    (!spawn || unaccounted == 0) && !died && dstatus == 0;
    printf("summary: clients=%d requests=%llu expected=%llu errors=%llu short_clients=%llu "
           "unaccounted=%lld tokens=%llu wall_s=%.2f req_s=%.1f tok_s=%.1f hwm_kib=%ld "
           "rss_kib=%ld rss_max_kib=%ld je_allocated=%llu je_resident=%llu compactions=%llu "
           "kv_peak=%llu slope_kib_min=%.1f status=%s\n",
           L.n_clients, (unsigned long long)done, (unsigned long long)L.requests,
           (unsigned long long)L.errors, (unsigned long long)short_clients, (long long)unaccounted,
           (unsigned long long)L.tokens, wall, done / wall, L.tokens / wall, mw.hwm, mw.rss,
           mw.rss_max, (unsigned long long)st1.je_allocated, (unsigned long long)st1.je_resident,
           (unsigned long long)st1.compactions, (unsigned long long)st1.kv_peak_bytes, slope,
           ok ? "ok" : "FAILED");
    rc = ok ? 0 : 1;
    free(mw.t);
    free(mw.rss_at);
out:
    gc_stats_free(&st0);
    gc_stats_free(&st1);
    gc_disconnect(&mon);
    if (spawn && pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    return rc;
}
