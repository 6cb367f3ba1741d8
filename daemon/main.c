/*
 * daemon/main.c — the gistd command: options, signals, and the daemon's life.
 *
 *   gistd --model FILE [--listen tcp://127.0.0.1:5557] [--kv-budget SIZE]
 *         [--kv-budget-max SIZE] [--session-budget SIZE] [--threads N] [--max-sessions N]
 *         [--snapshot-dir DIR]
 *         [--log-level error|warn|info|debug] [--max-request SIZE] [--prefill-chunk N]
 *         [--kv-type f32|f16] [--block-rows N] [--policy P]
 *         [--curve-secret FILE --allow-keys FILE | --insecure] [--rate-limit N]
 *         [--rate-burst N] [--max-client-sessions N]
 *   gistd --keygen PREFIX      (writes PREFIX.key and PREFIX.pub, then exits)
 *
 * The first line on stdout is the endpoint it listens on (with the port resolved when the
 * listen address ends in ":*"), printed once it is ready to serve; everything else goes to
 * stderr. SIGINT and SIGTERM (stop) and SIGHUP (reload the allow list) reach the loop
 * through a self-pipe. Exit status: 0 after a clean stop, 2 for bad options or a model that
 * cannot be loaded, 1 otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "daemon/gistd.h"

/* The self-pipe: the signal handler writes to [1], the loop polls [0]. */
static int stop_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    const int saved = errno;
    char c = sig == SIGHUP ? DMN_CTL_RELOAD : 's';
    if (write(stop_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a stop is already on its way */
    }
    errno = saved;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("gistd: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (try gistd --help)\n", stderr);
    return 2;
}

static void usage(FILE *f)
{
    fputs("usage: gistd --model FILE [--listen ENDPOINT] [--kv-budget SIZE] "
          "[--kv-budget-max SIZE]\n"
          "             [--session-budget SIZE]\n"
          "             [--threads N] [--max-sessions N] [--snapshot-dir DIR] [--log-level L]\n"
          "             [--max-request SIZE] [--prefill-chunk N] [--kv-type f32|f16] "
          "[--block-rows N] [--policy P]\n"
          "             [--curve-secret FILE --allow-keys FILE | --insecure] [--rate-limit N]\n"
          "             [--rate-burst N] [--max-client-sessions N]\n"
          "       gistd --keygen PREFIX\n"
          "  P         the policy of sessions that name none: auto (default), full, window, h2o, "
          "tova,\n"
          "            trim, pool, gist\n"
          "  ENDPOINT  tcp://127.0.0.1:5557 (default), tcp://127.0.0.1:* (a free port), "
          "ipc:///path\n"
          "  SIZE      bytes, or with a suffix K, M, G (powers of 1024): 64M, 1.5G\n"
          "  L         error, warn (default), info, debug\n"
          "Budgets (KV bytes):\n"
          "  --kv-budget SIZE      the daemon's hard limit, all sessions together (default: "
          "none)\n"
          "  --kv-budget-max SIZE  the highest limit a client's SetBudget (gistctl budget) may "
          "set, the\n"
          "                        global one or a session's (default: --kv-budget, so clients "
          "may lower\n"
          "                        it and raise it back but never past what gistd started "
          "with; without\n"
          "                        --kv-budget, the machine's physical memory). No limit may "
          "pass physical\n"
          "                        memory, and the global one cannot be set to 0 (off)\n"
          "  --session-budget SIZE each session's default hard limit (default: none)\n"
          "Access:\n"
          "  --curve-secret FILE   the daemon's CURVE secret key (z85 text, as gistd --keygen "
          "writes it)\n"
          "  --allow-keys FILE     client public keys it accepts, one a line: KEY [admin]; "
          "'#' comments\n"
          "                        (admin keys may change budgets and snapshot every session;\n"
          "                        SIGHUP reloads the file, and a key taken off it is refused)\n"
          "  --insecure            serve an address other than loopback or ipc:// without "
          "CURVE\n"
          "                        (without it such a --listen is refused)\n"
          "  --rate-limit N        requests/s per client key and address, 0: off (default: "
          "200 with CURVE,\n"
          "                        off without it, where every local client shares one "
          "credential)\n"
          "  --rate-burst N        requests a client may send at once (default: twice the rate)\n"
          "  --max-client-sessions N  sessions one client key may hold, 0: off (default: 16 "
          "with CURVE,\n"
          "                        off without it)\n"
          "  --max-request SIZE    largest request accepted (default 1M); up to 4 times that is "
          "answered\n"
          "                        with an error, a larger frame drops the connection\n"
          "  gistd --keygen PREFIX writes a key pair, PREFIX.key (secret, mode 0600) and "
          "PREFIX.pub\n"
          "The first line on stdout is the endpoint gistd listens on.\n",
          f);
}

/* "123", "64K", "1.5M", "2GiB" -> bytes. */
static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0) || !isfinite(v))
        return ERR_INVAL;
    double mul = 1;
    const char *u = *end ? strchr("KMGT", *end >= 'a' ? *end - 'a' + 'A' : *end) : NULL;
    if (u) {
        for (const char *q = "KMGT"; q <= u; q++)
            mul *= 1024.0;
        end++;
    }
    if (mul > 1 && *end == 'i')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || v * mul > 1e18)
        return ERR_INVAL;
    *out = (size_t)(v * mul);
    return 0;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > max)
        return ERR_INVAL;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    dmn_cfg_t cfg;
    dmn_cfg_default(&cfg);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long u;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--insecure")) {
            cfg.insecure = true;
            continue;
        }
        if (!v)
            return usage_error("'%s' needs a value or is unknown", a);
        i++;
        if (!strcmp(a, "--keygen")) {
            err_info_t e;
            err_clear(&e);
            if (dmn_keygen(v, &e)) {
                fprintf(stderr, "gistd: --keygen: %s\n", err_msg(&e));
                return 1;
            }
            printf("%s.key\n%s.pub\n", v, v);
            return 0;
        } else if (!strcmp(a, "--model")) {
            cfg.model_path = v;
        } else if (!strcmp(a, "--curve-secret")) {
            cfg.curve_secret = v;
        } else if (!strcmp(a, "--allow-keys")) {
            cfg.allow_keys = v;
        } else if (!strcmp(a, "--rate-limit") || !strcmp(a, "--rate-burst")) {
            char *end;
            errno = 0;
            const double r = strtod(v, &end);
            if (errno || end == v || *end || !(r >= 0) || r > 1e9)
                return usage_error("%s: '%s' is not a number of requests", a, v);
            if (!strcmp(a, "--rate-limit"))
                cfg.rate_limit = r;
            else
                cfg.rate_burst = r;
        } else if (!strcmp(a, "--max-client-sessions")) {
            if (parse_uint(v, 1u << 20, &u))
                return usage_error("--max-client-sessions: '%s' is not a number", v);
            cfg.max_client_sessions = (int64_t)u;
        } else if (!strcmp(a, "--listen")) {
            cfg.listen = v;
        } else if (!strcmp(a, "--snapshot-dir")) {
            cfg.snapshot_dir = v;
        } else if (!strcmp(a, "--policy")) {
            cfg.policy = v;
        } else if (!strcmp(a, "--kv-budget")) {
            if (parse_size(v, &cfg.kv_budget))
                return usage_error("--kv-budget: '%s' is not a size (like 64M)", v);
        } else if (!strcmp(a, "--kv-budget-max")) {
            if (parse_size(v, &cfg.kv_budget_max) || cfg.kv_budget_max == 0)
                return usage_error("--kv-budget-max: '%s' is not a size above 0 (like 1G)", v);
        } else if (!strcmp(a, "--session-budget")) {
            if (parse_size(v, &cfg.session_budget))
                return usage_error("--session-budget: '%s' is not a size (like 8M)", v);
        } else if (!strcmp(a, "--max-request")) {
            if (parse_size(v, &cfg.max_request) || cfg.max_request < 64)
                return usage_error("--max-request: '%s' is not a size of at least 64 bytes", v);
        } else if (!strcmp(a, "--threads")) {
            if (parse_uint(v, 1024, &u))
                return usage_error("--threads: '%s' is not a number of threads", v);
            cfg.threads = (int)u;
        } else if (!strcmp(a, "--max-sessions")) {
            if (parse_uint(v, 1u << 20, &u) || u == 0)
                return usage_error("--max-sessions: '%s' is not a positive number", v);
            cfg.max_sessions = (uint32_t)u;
        } else if (!strcmp(a, "--block-rows")) {
            if (parse_uint(v, 1u << 16, &u) || u == 0)
                return usage_error("--block-rows: '%s' is not a positive number", v);
            cfg.block_rows = (uint32_t)u;
        } else if (!strcmp(a, "--prefill-chunk")) {
            if (parse_uint(v, 1u << 16, &u) || u == 0)
                return usage_error("--prefill-chunk: '%s' is not a positive number", v);
            cfg.prefill_chunk = (uint32_t)u;
        } else if (!strcmp(a, "--kv-type")) {
            if (!strcmp(v, "f32"))
                cfg.kv_type = DT_F32;
            else if (!strcmp(v, "f16"))
                cfg.kv_type = DT_F16;
            else
                return usage_error("--kv-type: '%s' is not f32 or f16", v);
        } else if (!strcmp(a, "--log-level")) {
            static const char *const levels[] = {"error", "warn", "info", "debug"};
            cfg.log_level = -1;
            for (int l = 0; l < 4; l++)
                if (!strcmp(v, levels[l]))
                    cfg.log_level = l;
            if (cfg.log_level < 0)
                return usage_error("--log-level: '%s' is not error, warn, info or debug", v);
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (!cfg.model_path)
        return usage_error("no model: give --model FILE");
    err_info_t e;
    err_clear(&e);
    if (dmn_auth_check(&cfg, &e)) {
        fprintf(stderr, "gistd: %s\n", err_msg(&e));
        return 2;
    }

    if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        fprintf(stderr, "gistd: pipe: %s\n", strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL); /* reloads the allow list */
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit (RLIMIT_FSIZE) hit while writing a snapshot must fail that write with
     * EFBIG, which the snapshot reports, rather than kill the daemon and every session. */
    signal(SIGXFSZ, SIG_IGN);

    dmn_t *d = NULL;
    int rc = dmn_new(&cfg, &d, &e);
    if (rc) {
        fprintf(stderr, "gistd: %s\n", err_msg(&e));
        return rc == ERR_NOMEM || rc == ERR_IO ? 1 : 2;
    }
    printf("%s\n", dmn_endpoint(d));
    fflush(stdout);
    rc = dmn_run(d, stop_pipe[0]);
    dmn_destroy(&d);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
    return rc ? 1 : 0;
}
