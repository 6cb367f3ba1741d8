/*
 * bench/bench_http.c — what gistd-http adds to a request, and how it holds up under many
 * HTTP clients at once.
 *
 *   bench_http --endpoint E --http HOST:PORT [--gistctl PATH] [--requests 300] [--tokens 16]
 *              [--clients 64] [--turns 8]
 *
 * Latency: --requests greedy completions of --tokens tokens, one at a time, taking turns
 * between three ways of asking for the same thing: libgistc straight to gistd (open a session,
 * generate with the prompt, close: what the gateway does for /v1/completions), POST
 * /v1/completions to the gateway (one keep-alive HTTP connection), and a `gistctl gen` process
 * (when --gistctl is given), in an order that turns each round. Taking turns keeps a busy
 * machine's noise out of the comparison.
 * Prints p50/p90/p99 of each and the gateway's added latency (gateway minus libgistc, at the
 * same percentile), and checks that the gateway's text equals libgistc's.
 *
 * Load: --clients threads, each with its own keep-alive HTTP connection, each holding a
 * conversation of --turns turns that it resends whole every turn (every other turn streamed).
 * Prints requests/s, latency percentiles and every error; exit status 1 on any error.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "clients/libgistc/gistc.h"

extern char **environ;

static const char *g_host = "127.0.0.1";
static int g_port;

/* ------------------------------------------------------------------ a small HTTP client */

typedef struct hconn {
    int fd;
    char *buf; /* bytes read and not yet consumed: [0, len) */
    size_t len, cap;
} hconn_t;

static int h_open(hconn_t *h)
{
    h->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (h->fd < 0)
        return -1;
    int one = 1;
    setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, g_host, &a.sin_addr);
    if (connect(h->fd, (struct sockaddr *)&a, sizeof a)) {
        close(h->fd);
        h->fd = -1;
        return -1;
    }
    h->len = 0;
    return 0;
}

static void h_close(hconn_t *h)
{
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    h->len = 0;
}

/* Reads more bytes into the buffer: 0, or -1 at EOF or error. */
static int h_fill(hconn_t *h)
{
    if (h->cap - h->len < 65536) {
        size_t cap = h->cap ? h->cap * 2 : 1 << 17;
        char *p = realloc(h->buf, cap);
        if (!p)
            return -1;
        h->buf = p;
        h->cap = cap;
    }
    ssize_t n = read(h->fd, h->buf + h->len, h->cap - h->len - 1);
    if (n <= 0)
        return -1;
    h->len += (size_t)n;
    h->buf[h->len] = 0;
    return 0;
}

static void h_consume(hconn_t *h, size_t n)
{
    memmove(h->buf, h->buf + n, h->len - n);
    h->len -= n;
    h->buf[h->len] = 0;
}

/* POSTs body to path and reads the whole reply (Content-Length or chunked) into *out
 * (malloc'd, NUL-terminated). Returns the HTTP status, or -1 when the connection failed. */
static int h_post(hconn_t *h, const char *path, const char *body, char **out)
{
    *out = NULL;
    if (h->fd < 0 && h_open(h))
        return -1;
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      path, g_host, strlen(body));
    if (write(h->fd, head, (size_t)hl) != hl ||
        write(h->fd, body, strlen(body)) != (ssize_t)strlen(body))
        goto broken;
    char *end;
    while (!h->buf || !(end = strstr(h->buf, "\r\n\r\n")))
        if (h_fill(h))
            goto broken;
    const size_t head_len = (size_t)(end - h->buf) + 4;
    int status = 0;
    sscanf(h->buf, "HTTP/1.%*d %d", &status);
    const char *cl = strcasestr(h->buf, "\r\nContent-Length:");
    const bool chunked = strcasestr(h->buf, "\r\nTransfer-Encoding: chunked") &&
                         strcasestr(h->buf, "\r\nTransfer-Encoding: chunked") < end;
    const bool closing = strcasestr(h->buf, "\r\nConnection: close") &&
                         strcasestr(h->buf, "\r\nConnection: close") < end;
    size_t want = cl && cl < end ? strtoull(cl + 17, NULL, 10) : 0;
    h_consume(h, head_len);
    char *o = malloc(1);
    size_t ol = 0;
    if (!o)
        goto broken;
    if (!chunked) {
        while (h->len < want)
            if (h_fill(h)) {
                free(o);
                goto broken;
            }
        char *p = realloc(o, want + 1);
        if (!p) {
            free(o);
            goto broken;
        }
        o = p;
        memcpy(o, h->buf, want);
        ol = want;
        h_consume(h, want);
    } else {
        for (;;) {
            char *crlf;
            while (!(crlf = memmem(h->buf, h->len, "\r\n", 2)))
                if (h_fill(h)) {
                    free(o);
                    goto broken;
                }
            const size_t size = strtoull(h->buf, NULL, 16), line = (size_t)(crlf - h->buf) + 2;
            while (h->len < line + size + 2)
                if (h_fill(h)) {
                    free(o);
                    goto broken;
                }
            if (size == 0) {
                h_consume(h, line + 2);
                break;
            }
            char *p = realloc(o, ol + size + 1);
            if (!p) {
                free(o);
                goto broken;
            }
            o = p;
            memcpy(o + ol, h->buf + line, size);
            ol += size;
            h_consume(h, line + size + 2);
        }
    }
    o[ol] = 0;
    *out = o;
    if (closing)
        h_close(h);
    return status;
broken:
    h_close(h);
    return -1;
}

/* The text of the first "text" field of a JSON reply (no escapes decoded: for comparing). */
static char *json_text(const char *reply, const char *field)
{
    char key[32];
    snprintf(key, sizeof key, "\"%s\":\"", field);
    const char *p = strstr(reply, key);
    if (!p)
        return NULL;
    p += strlen(key);
    const char *q = p;
    while (*q && *q != '"')
        q += *q == '\\' && q[1] ? 2 : 1;
    return strndup(p, (size_t)(q - p));
}

/* The same text as JSON would escape it (for comparing with json_text). */
static char *json_escape(const char *s)
{
    char *o = malloc(strlen(s) * 6 + 1), *w = o;
    if (!o)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            w += sprintf(w, "\\%c", *p);
        else if (*p == '\n')
            w += sprintf(w, "\\n");
        else if (*p < 0x20)
            w += sprintf(w, "\\u%04X", *p);
        else
            *w++ = (char)*p;
    }
    *w = 0;
    return o;
}

/* ------------------------------------------------------------------ percentiles */

static double pct(double *v, int n, double p)
{
    if (n == 0)
        return NAN;
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    int i = (int)ceil(p / 100.0 * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* ------------------------------------------------------------------ latency */

static const char *g_endpoint, *g_gistctl;
static int g_tokens = 16;
static const char *const prompt = "Once upon a time";

static double run_gistc(gc_client_t *c, char **text)
{
    const double t0 = bench_now();
    err_info_t e;
    err_clear(&e);
    uint32_t s = 0;
    gc_sampling_t smp;
    gc_sampling_default(&smp);
    smp.temp = 0;
    gc_result_t res;
    memset(&res, 0, sizeof res);
    gc_gen_opts_t o = {.max_tokens = (uint32_t)g_tokens, .prompt = prompt, .sampling = &smp};
    if (gc_open(c, NULL, &s, &e) || (o.session = s, gc_generate(c, &o, NULL, &res, &e)) ||
        gc_close(c, s, &e)) {
        fprintf(stderr, "bench_http: libgistc: %s\n", err_msg(&e));
        exit(1);
    }
    const double dt = bench_now() - t0;
    *text = res.text;
    res.text = NULL;
    gc_result_free(&res);
    return dt;
}

static double run_http(hconn_t *h, char **text)
{
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0}", prompt,
             g_tokens);
    const double t0 = bench_now();
    char *reply;
    int st = h_post(h, "/v1/completions", body, &reply);
    const double dt = bench_now() - t0;
    if (st != 200) {
        fprintf(stderr, "bench_http: POST /v1/completions: status %d: %s\n", st,
                reply ? reply : "");
        exit(1);
    }
    *text = json_text(reply, "text");
    free(reply);
    return dt;
}

static double run_gistctl(void)
{
    char n[16];
    snprintf(n, sizeof n, "%d", g_tokens);
    char *argv[] = {(char *)g_gistctl,
                    "--connect",
                    (char *)g_endpoint,
                    "gen",
                    "--prompt",
                    (char *)prompt,
                    "-n",
                    n,
                    "--temp",
                    "0",
                    NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    const double t0 = bench_now();
    pid_t pid;
    int status = -1;
    if (posix_spawn(&pid, g_gistctl, &fa, NULL, argv, environ) == 0)
        waitpid(pid, &status, 0);
    const double dt = bench_now() - t0;
    posix_spawn_file_actions_destroy(&fa);
    if (status != 0) {
        fprintf(stderr, "bench_http: %s gen failed (status %d)\n", g_gistctl, status);
        exit(1);
    }
    return dt;
}

static void print_row(const char *name, double *v, int n)
{
    printf("%-34s %6d %9.3f %9.3f %9.3f\n", name, n, 1e3 * pct(v, n, 50), 1e3 * pct(v, n, 90),
           1e3 * pct(v, n, 99));
}

static void latency(int n)
{
    err_info_t e;
    err_clear(&e);
    gc_client_t *c = NULL;
    if (gc_connect(g_endpoint, 60000, &c, &e)) {
        fprintf(stderr, "bench_http: %s\n", err_msg(&e));
        exit(1);
    }
    hconn_t h = {.fd = -1};
    double *a = calloc((size_t)n, sizeof *a), *b = calloc((size_t)n, sizeof *b),
           *p = calloc((size_t)n, sizeof *p);
    int na = 0, nb = 0, np = 0, mismatches = 0;
    /* one of each first, unmeasured: connections, caches */
    char *ta, *tb;
    run_gistc(c, &ta);
    run_http(&h, &tb);
    free(ta);
    free(tb);
    for (int i = 0; i < n; i++) {
        /* the order turns too: what runs after a gistctl process pays for its exit */
        for (int k = 0; k < 3; k++) {
            switch ((i + k) % 3) {
            case 0:
                a[na++] = run_gistc(c, &ta);
                break;
            case 1:
                b[nb++] = run_http(&h, &tb);
                break;
            default:
                if (g_gistctl)
                    p[np++] = run_gistctl();
            }
        }
        char *esc = json_escape(ta);
        mismatches += !tb || !esc || strcmp(esc, tb);
        free(esc);
        free(ta);
        free(tb);
    }
    double *sa = malloc((size_t)n * sizeof *sa), *sb = malloc((size_t)n * sizeof *sb);
    memcpy(sa, a, (size_t)n * sizeof *sa);
    memcpy(sb, b, (size_t)n * sizeof *sb);
    printf("\n## latency: greedy completion of %d tokens, one request at a time (ms)\n", g_tokens);
    printf("%-34s %6s %9s %9s %9s\n", "path", "n", "p50", "p90", "p99");
    print_row("libgistc (open, generate, close)", a, na);
    print_row("gistd-http POST /v1/completions", b, nb);
    if (np)
        print_row("gistctl gen (a process each)", p, np);
    printf("gateway adds: p50 %.3f ms, p99 %.3f ms (%.1f%% at p50)\n",
           1e3 * (pct(sb, n, 50) - pct(sa, n, 50)), 1e3 * (pct(sb, n, 99) - pct(sa, n, 99)),
           100.0 * (pct(sb, n, 50) / pct(sa, n, 50) - 1.0));
    printf("texts equal to libgistc's: %d of %d\n", n - mismatches, n);
    if (mismatches)
        exit(1);
    free(a);
    free(b);
    free(p);
    free(sa);
    free(sb);
    h_close(&h);
    free(h.buf);
    gc_disconnect(&c);
}

/* ------------------------------------------------------------------ load */

static int g_turns = 8;
static atomic_int g_errors;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static double *g_lat;
static int g_n_lat;

static void *client(void *arg)
{
    const int id = (int)(intptr_t)arg;
    hconn_t h = {.fd = -1};
    char *conv = calloc(1, 1 << 16);
    size_t cl = 0;
    for (int turn = 0; turn < g_turns; turn++) {
        cl += (size_t)snprintf(conv + cl, (1 << 16) - cl,
                               "%s{\"role\":\"user\",\"content\":"
                               "\"Client %d asks question %d.\"}",
                               cl ? "," : "", id, turn);
        char body[1 << 17];
        const bool stream = turn % 2;
        snprintf(body, sizeof body, "{\"messages\":[%s],\"max_tokens\":8,\"temperature\":0%s}",
                 conv, stream ? ",\"stream\":true" : "");
        const double t0 = bench_now();
        char *reply;
        int st = h_post(&h, "/v1/chat/completions", body, &reply);
        const double dt = bench_now() - t0;
        bool ok = st == 200 && reply;
        char *content = NULL;
        if (ok && stream) {
            ok = strstr(reply, "data: [DONE]\n\n") != NULL && !strstr(reply, "\"error\"");
            /* the streamed text, joined, is this turn's assistant message */
            size_t n = 0;
            content = calloc(1, strlen(reply) + 1);
            for (char *p = reply; ok && (p = strstr(p, "\"content\":\"")); p++) {
                char *t = json_text(p, "content");
                n += (size_t)sprintf(content + n, "%s", t ? t : "");
                free(t);
            }
        } else if (ok) {
            content = json_text(reply, "content");
            ok = content != NULL;
        }
        if (!ok) {
            atomic_fetch_add(&g_errors, 1);
            fprintf(stderr, "client %d turn %d: status %d: %.200s\n", id, turn, st,
                    reply ? reply : "(no reply)");
        }
        cl += (size_t)snprintf(conv + cl, (1 << 16) - cl,
                               ",{\"role\":\"assistant\",\"content\":\"%s\"}",
                               content ? content : "");
        free(content);
        free(reply);
        pthread_mutex_lock(&g_mu);
        g_lat[g_n_lat++] = dt;
        pthread_mutex_unlock(&g_mu);
    }
    h_close(&h);
    free(h.buf);
    free(conv);
    return NULL;
}

static void load(int clients)
{
    g_lat = calloc((size_t)clients * (size_t)g_turns, sizeof *g_lat);
    pthread_t *th = calloc((size_t)clients, sizeof *th);
    const double t0 = bench_now();
    for (int i = 0; i < clients; i++)
        pthread_create(&th[i], NULL, client, (void *)(intptr_t)i);
    for (int i = 0; i < clients; i++)
        pthread_join(th[i], NULL);
    const double dt = bench_now() - t0;
    printf("\n## load: %d HTTP clients at once, %d-turn conversations resent whole each turn "
           "(8 tokens a reply; every other turn streamed)\n",
           clients, g_turns);
    printf("requests %d in %.2f s: %.1f req/s; latency p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, "
           "max %.1f ms; errors %d\n",
           g_n_lat, dt, g_n_lat / dt, 1e3 * pct(g_lat, g_n_lat, 50), 1e3 * pct(g_lat, g_n_lat, 90),
           1e3 * pct(g_lat, g_n_lat, 99), 1e3 * pct(g_lat, g_n_lat, 100), atomic_load(&g_errors));
    free(th);
    free(g_lat);
}

int main(int argc, char **argv)
{
    int requests = 300, clients = 64;
    const char *http = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--endpoint"))
            g_endpoint = v;
        else if (!strcmp(a, "--http"))
            http = v;
        else if (!strcmp(a, "--gistctl"))
            g_gistctl = v;
        else if (!strcmp(a, "--requests"))
            requests = atoi(v);
        else if (!strcmp(a, "--tokens"))
            g_tokens = atoi(v);
        else if (!strcmp(a, "--clients"))
            clients = atoi(v);
        else if (!strcmp(a, "--turns"))
            g_turns = atoi(v);
        else
            break;
    }
    const char *colon = http ? strrchr(http, ':') : NULL;
    if (!g_endpoint || !colon || requests < 1 || clients < 1 || clients > 1024 || g_turns < 1 ||
        g_tokens < 1 || (argc - 1) % 2) {
        fputs("usage: bench_http --endpoint E --http HOST:PORT [--gistctl PATH] "
              "[--requests 300] [--tokens 16] [--clients 64] [--turns 8]\n",
              stderr);
        return 2;
    }
    static char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - http), http);
    g_host = host;
    g_port = atoi(colon + 1);
    bench_print_machine();
    latency(requests);
    load(clients);
    return atomic_load(&g_errors) ? 1 : 0;
}
