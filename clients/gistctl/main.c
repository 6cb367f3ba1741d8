/*
 * gistctl — the command line for a running gistd.
 *
 *   gistctl [--connect ENDPOINT] [--timeout MS] [--server-key FILE --key PREFIX] COMMAND ...
 *
 * ENDPOINT defaults to $GISTD_ENDPOINT, else tcp://127.0.0.1:5557. The timeout (default
 * 10000 ms) bounds how long gistctl waits while the daemon sends nothing; a daemon working on
 * a request sends keep-alives, so only a daemon that is gone or stuck runs it out (gistctl
 * then says so and exits 3). SIGINT and SIGTERM end the wait: the command closes (or cancels)
 * what it started and exits 130.
 * With CURVE, FILE is the daemon's public key (its .pub) and PREFIX names this client's key
 * pair, PREFIX.pub and PREFIX.key, as `gistd --keygen PREFIX` writes them ($GISTD_SERVER_KEY
 * and $GISTD_KEY when the options are not given).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistctl/ctl.h"

static const struct {
    const char *name;
    int (*fn)(ctl_t *, int, char **);
    const char *usage;
} commands[] = {
    {"gen", ctl_gen,
     "gen (--prompt STR | --prompt-file F) -n N [--temp T] [--seed S] [--top-k K] [--top-p P] "
     "[--min-p P] [--repeat-penalty R] [--stop STR]... [--session ID]"},
    {"chat", ctl_chat,
     "chat [--session ID] [--template T (default: the model file's)] [--system STR] [-n N] "
     "[--temp T] [--seed S] [--prompt-file F] [--budget SIZE] [--policy P] [--param KEY=VALUE]..."},
    {"open", ctl_open,
     "open [--budget SIZE] [--soft SIZE] [--policy P] [--param KEY=VALUE]... [--template T] "
     "[--name STR]"},
    {"score", ctl_score,
     "score --prompt-file F|- [--policy P] [--budget SIZE] [--param KEY=VALUE]... [--session ID]"},
    {"close", ctl_close, "close ID [--forget]"},
    {"cancel", ctl_cancel, "cancel ID"},
    {"sessions", ctl_sessions, "sessions [--json]"},
    {"stats", ctl_stats, "stats [--json] [--sessions]"},
    {"top", ctl_top, "top [--interval SECONDS] [--count N]"},
    {"budget", ctl_budget, "budget SIZE [--soft SIZE] [--session ID]"},
    {"expand", ctl_expand, "expand ID [--span A:B] [--max-tokens N]"},
    {"transcript", ctl_transcript, "transcript ID [--tokens] [--first N] [--count N]"},
    {"snapshot", ctl_snapshot, "snapshot [ID]"},
    {"restore", ctl_restore, "restore ID [--as-new]"},
};

int ctl_usage(const char *fmt, ...)
{
    va_list ap;
    fputs("gistctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CTL_USAGE;
}

/* Set by SIGINT and SIGTERM: the only state the handler touches. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

bool ctl_interrupted(void)
{
    return interrupted != 0;
}

int ctl_close_quietly(gc_client_t *c, uint32_t session, int timeout_ms)
{
    err_info_t e;
    err_clear(&e);
    gc_set_timeout(c, timeout_ms < 2000 ? timeout_ms : 2000);
    /* a second signal must not cut the close short: the first one asked for it */
    const sig_atomic_t saved = interrupted;
    int rc = gc_close(c, session, &e);
    if (rc == ERR_CANCELLED) /* interrupted again: once more */
        rc = gc_close(c, session, &e);
    interrupted = saved;
    return rc;
}

int ctl_fail(const err_info_t *e)
{
    fprintf(stderr, "gistctl: %s\n", err_msg(e));
    return e->code == ERR_TIMEOUT ? CTL_NO_ANSWER : CTL_DAEMON;
}

int ctl_uint(const char *opt, const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > max)
        return ctl_usage("%s: '%s' is not a whole number up to %lu", opt, s, max);
    *out = v;
    return 0;
}

int ctl_float(const char *opt, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return ctl_usage("%s: '%s' is not a number", opt, s);
    *out = v;
    return 0;
}

void ctl_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

void ctl_json_session(FILE *f, const gc_session_info_t *s)
{
    fprintf(f, "{\"id\": %u, \"name\": ", s->id);
    ctl_json_str(f, s->name);
    fprintf(f, ", \"state\": ");
    ctl_json_str(f, s->state);
    fprintf(f, ", \"policy\": ");
    ctl_json_str(f, s->policy);
    fprintf(f, ", \"chat_template\": ");
    ctl_json_str(f, s->chat_template);
    fprintf(f,
            ", \"bytes\": %llu, \"peak_bytes\": %llu, \"hard_bytes\": %llu, \"soft_bytes\": %llu"
            ", \"tokens\": %u, \"pending\": %u, \"rows\": %llu, \"compression\": %.6g"
            ", \"prompt_tokens\": %llu, \"generated_tokens\": %llu, \"tokens_per_s\": %.6g"
            ", \"idle_s\": %.3f, \"compactions\": %u, \"bytes_freed\": %lld"
            ", \"expansions\": %u, \"expand_tokens\": %llu"
            ", \"events_dropped\": %llu, \"tier_bytes\": {\"f32\": %llu, \"f16\": %llu, "
            "\"q8_0\": %llu}}",
            (unsigned long long)s->bytes, (unsigned long long)s->peak_bytes,
            (unsigned long long)s->hard_bytes, (unsigned long long)s->soft_bytes, s->tokens,
            s->pending, (unsigned long long)s->rows, s->compression,
            (unsigned long long)s->prompt_tokens, (unsigned long long)s->generated_tokens,
            s->tokens_per_s, s->idle_s, s->compactions, (long long)s->bytes_freed, s->expansions,
            (unsigned long long)s->expand_tokens,
            (unsigned long long)s->events_dropped, (unsigned long long)s->tier_f32,
            (unsigned long long)s->tier_f16, (unsigned long long)s->tier_q8_0);
}

gc_client_t *ctl_client(ctl_t *x, int *status)
{
    if (x->c)
        return x->c;
    err_info_t e;
    err_clear(&e);
    gc_connect_opts_t o = {.endpoint = x->endpoint, .timeout_ms = x->timeout_ms};
    if (x->curve) {
        o.server_key = x->server_key;
        o.public_key = x->public_key;
        o.secret_key = x->secret_key;
    }
    if (gc_connect_opts(&o, &x->c, &e)) {
        fprintf(stderr, "gistctl: cannot reach gistd at %s: %s\n",
                x->endpoint ? x->endpoint : GC_DEFAULT_ENDPOINT, err_msg(&e));
        /* a malformed endpoint or key is this side's mistake, not the daemon's refusal */
        *status = e.code == ERR_TIMEOUT || e.code == ERR_IO ? CTL_NO_ANSWER
                  : e.code == ERR_INVAL                     ? CTL_USAGE
                  : e.code == ERR_CANCELLED                 ? CTL_INTERRUPTED
                                                            : CTL_DAEMON;
        return NULL;
    }
    return x->c;
}

int ctl_param(ctl_params_t *p, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv || strlen(kv) >= sizeof p->buf[0])
        return ctl_usage("--param: '%s' is not KEY=VALUE", kv);
    if (p->n == 16)
        return ctl_usage("--param: at most 16 parameters");
    char *b = p->buf[p->n];
    snprintf(b, sizeof p->buf[0], "%s", kv);
    b[eq - kv] = 0;
    p->key[p->n] = b;
    p->value[p->n] = b + (eq - kv) + 1;
    p->n++;
    return 0;
}

const char *ctl_size_signed(int64_t v, char *buf, size_t cap)
{
    if (v >= 0)
        return gc_format_size((uint64_t)v, buf, cap);
    buf[0] = '-';
    gc_format_size((uint64_t)-v, buf + 1, cap - 1);
    return buf;
}

static void usage(FILE *f)
{
    fputs("usage: gistctl [--connect ENDPOINT] [--timeout MS] [--server-key FILE --key PREFIX] "
          "COMMAND ...\n",
          f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  gistctl %s\n", commands[i].usage);
    fputs(
        "ENDPOINT: $GISTD_ENDPOINT, else " GC_DEFAULT_ENDPOINT ". SIZE: bytes or 64K, 8M, 1G.\n"
        "CURVE: FILE is the daemon's public key, PREFIX.pub and PREFIX.key this client's key pair\n"
        "(gistd --keygen PREFIX); $GISTD_SERVER_KEY and $GISTD_KEY stand in for the options.\n"
        "--timeout MS (default 10000): how long to wait while the daemon sends nothing (a daemon\n"
        "working on a request sends keep-alives, however long it takes).\n"
        "Exit status: 0 ok, 1 the daemon refused, 2 bad arguments, 3 no answer in time,\n"
        "130 interrupted (what the command opened is closed first).\n",
        f);
}

/* The CURVE keys of x from the daemon's public key file and this client's key prefix. */
static int load_keys(ctl_t *x, const char *server_file, const char *prefix)
{
    if (!server_file && !prefix)
        return 0;
    if (!server_file || !prefix)
        return ctl_usage("CURVE needs both --server-key FILE and --key PREFIX");
    char path[4096];
    err_info_t e;
    err_clear(&e);
    int rc = gc_key_read(server_file, x->server_key, &e);
    if (!rc) {
        snprintf(path, sizeof path, "%s.pub", prefix);
        rc = gc_key_read(path, x->public_key, &e);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s.key", prefix);
        rc = gc_key_read(path, x->secret_key, &e);
    }
    if (rc)
        return ctl_usage("%s", err_msg(&e));
    x->curve = true;
    return 0;
}

int main(int argc, char **argv)
{
    const char *endpoint = getenv("GISTD_ENDPOINT");
    const char *server_key = getenv("GISTD_SERVER_KEY"), *key = getenv("GISTD_KEY");
    if (server_key && !*server_key)
        server_key = NULL;
    if (key && !*key)
        key = NULL;
    unsigned long timeout = 10000;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc)
            return ctl_usage("'%s' needs a value or is unknown (try gistctl --help)", a);
        if (!strcmp(a, "--connect")) {
            endpoint = argv[++i];
        } else if (!strcmp(a, "--server-key")) {
            server_key = argv[++i];
        } else if (!strcmp(a, "--key")) {
            key = argv[++i];
        } else if (!strcmp(a, "--timeout")) {
            if (ctl_uint(a, argv[++i], 86400000ul, &timeout) || timeout == 0)
                return CTL_USAGE;
        } else {
            return ctl_usage("unknown option '%s' (try gistctl --help)", a);
        }
    }
    if (i >= argc) {
        usage(stderr);
        return CTL_USAGE;
    }
    /* SIGINT and SIGTERM end a wait (no SA_RESTART: the poll returns EINTR) */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    const char *name = argv[i];
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++) {
        if (strcmp(name, commands[k].name))
            continue;
        ctl_t x = {.endpoint = endpoint, .timeout_ms = (int)timeout};
        if (load_keys(&x, server_key, key))
            return CTL_USAGE;
        int rc = commands[k].fn(&x, argc - i - 1, argv + i + 1);
        gc_disconnect(&x.c);
        return rc;
    }
    return ctl_usage("unknown command '%s' (try gistctl --help)", name);
}
