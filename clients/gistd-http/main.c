/*
 * gistd-http — an OpenAI-compatible HTTP gateway to gistd, with Prometheus metrics.
 *
 *   gistd-http [--connect ENDPOINT] [--listen HOST:PORT] [options]
 *
 * It prints the URL it listens on as its first line (port 0 picks a free one), serves until
 * SIGINT or SIGTERM, and then closes the sessions it opened. See usage() for the options and
 * http.h for how it is built.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistd-http/http.h"

static void usage(FILE *f)
{
    fputs(
        "usage: gistd-http [--connect ENDPOINT] [--listen HOST:PORT] [options]\n"
        "  --connect ENDPOINT      gistd ($GISTD_ENDPOINT, else " GC_DEFAULT_ENDPOINT ")\n"
        "  --listen HOST:PORT      where to serve HTTP (default 127.0.0.1:8080; port 0: any)\n"
        "  --timeout MS            longest wait for gistd's next reply (default 10000)\n"
        "  --server-key FILE --key PREFIX   CURVE: the daemon's public key and this client's\n"
        "                          key pair PREFIX.pub/PREFIX.key ($GISTD_SERVER_KEY, $GISTD_KEY)\n"
        "  --max-body SIZE         largest request body (default 1M; larger: 413)\n"
        "  --max-connections N     HTTP connections at once (default 256)\n"
        "  --max-conversations N   conversations held in gistd sessions (default 64)\n"
        "  --idle-timeout SECONDS  close conversations idle this long (default 600)\n"
        "  --template NAME         chat template of new sessions (default: the daemon's)\n"
        "  --policy NAME           compaction policy of new sessions (default: the daemon's)\n"
        "  --session-budget SIZE   KV budget of new sessions (default: the daemon's)\n"
        "  --model-id NAME         the model's name in the API (default: the model's own)\n",
        f);
}

static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("gistd-http: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 2;
}

static int whole(const char *opt, const char *s, unsigned long lo, unsigned long hi,
                 unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "gistd-http: %s: '%s' is not a whole number from %lu to %lu\n", opt, s, lo,
                hi);
        return 2;
    }
    *out = v;
    return 0;
}

static int read_keys(const char *server_file, const char *prefix, char server[GC_KEY_LEN],
                     char pub[GC_KEY_LEN], char sec[GC_KEY_LEN])
{
    if (!server_file != !prefix)
        return bad("CURVE needs both --server-key FILE and --key PREFIX");
    char path[4096];
    err_info_t e;
    err_clear(&e);
    int rc = gc_key_read(server_file, server, &e);
    if (!rc) {
        snprintf(path, sizeof path, "%s.pub", prefix);
        rc = gc_key_read(path, pub, &e);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s.key", prefix);
        rc = gc_key_read(path, sec, &e);
    }
    return rc ? bad("%s", err_msg(&e)) : 0;
}

/* Closes sessions with a connection of the pool (best effort: gistd may be gone). */
static void close_all(gh_pool_t *pool, const uint32_t *s, unsigned n)
{
    if (!n)
        return;
    gc_client_t *c = NULL;
    err_info_t e;
    if (gh_pool_get(pool, &c, &e))
        return;
    gh_closing_t gone = {0};
    for (unsigned i = 0; i < n; i++) {
        gone.session[gone.n++] = s[i];
        if (gone.n == sizeof gone.session / sizeof gone.session[0] || i + 1 == n) {
            gh_close_sessions(c, &gone);
            gone.n = 0;
        }
    }
    gh_pool_put(pool, c, 0);
}

int main(int argc, char **argv)
{
    gh_t g;
    memset(&g, 0, sizeof g);
    gh_config_t *cfg = &g.cfg;
    cfg->gistd.endpoint = getenv("GISTD_ENDPOINT");
    cfg->gistd.timeout_ms = 10000;
    snprintf(cfg->listen_host, sizeof cfg->listen_host, "127.0.0.1");
    cfg->port = 8080;
    cfg->max_body = 1 << 20;
    cfg->max_connections = 256;
    cfg->max_conversations = 64;
    cfg->idle_s = 600;
    const char *server_key = getenv("GISTD_SERVER_KEY"), *key = getenv("GISTD_KEY");
    server_key = server_key && *server_key ? server_key : NULL;
    key = key && *key ? key : NULL;
    unsigned long v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc)
            return bad("'%s' needs a value or is unknown (try --help)", a);
        const char *val = argv[++i];
        int rc = 0;
        if (!strcmp(a, "--connect")) {
            cfg->gistd.endpoint = val;
        } else if (!strcmp(a, "--listen")) {
            const char *colon = strrchr(val, ':');
            if (!colon || colon == val || (size_t)(colon - val) >= sizeof cfg->listen_host)
                return bad("--listen: '%s' is not HOST:PORT", val);
            snprintf(cfg->listen_host, sizeof cfg->listen_host, "%.*s", (int)(colon - val), val);
            rc = whole(a, colon + 1, 0, 65535, &v);
            cfg->port = (unsigned)v;
        } else if (!strcmp(a, "--timeout")) {
            rc = whole(a, val, 1, 86400000, &v);
            cfg->gistd.timeout_ms = (int)v;
        } else if (!strcmp(a, "--server-key")) {
            server_key = val;
        } else if (!strcmp(a, "--key")) {
            key = val;
        } else if (!strcmp(a, "--max-body")) {
            if (gc_parse_size(val, &cfg->max_body) || cfg->max_body == 0)
                return bad("--max-body: '%s' is not a size such as 64K or 1M", val);
        } else if (!strcmp(a, "--max-connections")) {
            rc = whole(a, val, 1, 65536, &v);
            cfg->max_connections = (unsigned)v;
        } else if (!strcmp(a, "--max-conversations")) {
            rc = whole(a, val, 1, 1 << 20, &v);
            cfg->max_conversations = (unsigned)v;
        } else if (!strcmp(a, "--idle-timeout")) {
            rc = whole(a, val, 1, 365ul * 86400, &v);
            cfg->idle_s = (double)v;
        } else if (!strcmp(a, "--template")) {
            cfg->chat_template = val;
        } else if (!strcmp(a, "--policy")) {
            cfg->policy = val;
        } else if (!strcmp(a, "--session-budget")) {
            if (gc_parse_size(val, &cfg->session_budget))
                return bad("--session-budget: '%s' is not a size such as 64K or 1M", val);
        } else if (!strcmp(a, "--model-id")) {
            cfg->model_id = val;
        } else {
            return bad("unknown option '%s' (try --help)", a);
        }
        if (rc)
            return rc;
    }
    char sk[GC_KEY_LEN], pk[GC_KEY_LEN], xk[GC_KEY_LEN];
    if (server_key || key) {
        if (read_keys(server_key, key, sk, pk, xk))
            return 2;
        cfg->gistd.server_key = sk;
        cfg->gistd.public_key = pk;
        cfg->gistd.secret_key = xk;
    }

    /* signals reach the main thread alone, through sigtimedwait */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    err_info_t e;
    err_clear(&e);
    int status = 1;
    void *http = NULL;
    unsigned port = 0;
    if (gh_pool_new(&cfg->gistd, &g.pool) ||
        gh_convs_new(cfg->max_conversations, cfg->idle_s, &g.convs) || gh_metrics_new(&g.metrics)) {
        fprintf(stderr, "gistd-http: out of memory\n");
        goto out;
    }
    if (gh_http_start(&g, &http, &port, &e)) {
        fprintf(stderr, "gistd-http: %s\n", err_msg(&e));
        goto out;
    }
    printf("http://%s:%u\n", cfg->listen_host, port);
    fflush(stdout);
    /* a first connection now tells the operator early when gistd is not there */
    gc_client_t *c = NULL;
    if (gh_pool_get(g.pool, &c, &e))
        fprintf(stderr,
                "gistd-http: cannot reach gistd yet (%s); requests get 503 until it "
                "does\n",
                err_msg(&e));
    else
        gh_pool_put(g.pool, c, 0);

    for (;;) {
        struct timespec tick = {.tv_sec = 1};
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGINT || sig == SIGTERM)
            break;
        gh_closing_t gone = {0};
        do {
            gone.n = 0;
            gh_convs_reap(g.convs, gh_now(), &gone);
            close_all(g.pool, gone.session, gone.n);
        } while (gone.n == sizeof gone.session / sizeof gone.session[0]);
    }
    status = 0;
out:
    gh_http_stop(&http);
    uint32_t *sessions = NULL;
    unsigned n = 0;
    gh_convs_destroy(&g.convs, &sessions, &n);
    if (g.pool)
        close_all(g.pool, sessions, n);
    free(sessions);
    gh_pool_destroy(&g.pool);
    gh_metrics_destroy(&g.metrics);
    return status;
}
