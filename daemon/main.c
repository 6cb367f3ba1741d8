/*
 * daemon/main.c — the gistd command: options, signals, and the daemon's life.
 *
 *   gistd --model FILE [--listen tcp://127.0.0.1:5557] [--kv-budget SIZE]
 *         [--kv-budget-max SIZE] [--session-budget SIZE] [--threads N] [--max-sessions N]
 *         [--snapshot-dir DIR] [--spill-dir DIR|none]
 *         [--log-level error|warn|info|debug] [--max-request SIZE] [--prefill-chunk N]
 *         [--idle-timeout SECONDS]
 *         [--kv-type f32|f16|q8_0] [--block-rows N] [--policy P]
 *         [--curve-secret FILE --allow-keys FILE | --insecure] [--rate-limit N]
 *         [--rate-burst N] [--max-client-sessions N]
 *   gistd --keygen PREFIX      (writes PREFIX.key and PREFIX.pub, then exits)
 *
 * The first line on stdout is the endpoint it listens on (with the port resolved when the
 * listen address ends in ":*"), printed once it is ready to serve; everything else goes to
 * stderr. SIGINT and SIGTERM (stop) and SIGHUP (reload the allow list) reach the loop
 * through a self-pipe. Exit status: 0 after a clean stop, 2 for bad options or a model file
 * that cannot be loaded (whatever is wrong with it), 1 when it cannot serve.
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
    fputs(
        "usage: gistd --model FILE [option]...\n"
        "       gistd --keygen PREFIX\n"
        "Serving (every default in brackets):\n"
        "  --model FILE          the GGUF model to serve (required)\n"
        "  --listen ENDPOINT     where clients connect [" DMN_DEFAULT_LISTEN "];\n"
        "                        tcp://127.0.0.1:* picks a free port, ipc:///path a local socket\n"
        "  --kv-budget SIZE      the hard limit of the whole KV store [none: no limit]\n"
        "  --kv-budget-max SIZE  the highest limit a client's SetBudget (gistctl budget) may set,\n"
        "                        the global one or a session's [--kv-budget: clients may lower it\n"
        "                        and raise it back, never past what gistd started with; without\n"
        "                        --kv-budget, the machine's physical memory]; no limit may pass\n"
        "                        physical memory, and the global one cannot be set to 0 (off)\n"
        "  --session-budget SIZE each session's hard limit unless it asks for one [none]; at\n"
        "                        least one KV block for each of the model's lanes (layers x\n"
        "                        kv-heads x --block-rows rows): 247 KiB for models/gistd-6m.gguf;\n"
        "                        `gistd --model FILE --help` prints it for FILE\n"
        "  --policy P            the policy of sessions that name none [auto]: auto, full,\n"
        "                        window, h2o, tova, trim, pool, gist\n"
        "  --snapshot-dir DIR    where sessions are snapshotted and restored from [none: no\n"
        "                        snapshots; a stop then loses every session]\n"
        "  --spill-dir DIR       where the transcript pages of a session that no KV row holds\n"
        "                        raw any more go (4 bytes a token on disk, files unlinked as\n"
        "                        they are made), so that a session's transcript stops counting\n"
        "                        against its budget; none: they stay in memory and a session\n"
        "                        under a budget B is refused after about B / 6 tokens\n"
        "                        [$TMPDIR, else /var/tmp]\n"
        "  --idle-timeout SECONDS  a session idle this long is closed, snapshotted first when\n"
        "                        there is a snapshot folder (gistctl restore brings it back);\n"
        "                        0: never [1800]\n"
        "  --threads N           forward-pass threads [0: every processor]\n"
        "  --max-sessions N      live sessions at most [64]\n"
        "  --max-request SIZE    largest request accepted [1M]; up to 4 times that is answered\n"
        "                        with an error, a larger frame drops the connection\n"
        "  --prefill-chunk N     prefill tokens per scheduler step, all sessions together [64]\n"
        "  --kv-type T           the payload of new KV rows: f32, f16 or q8_0 (head_dim a\n"
        "                        multiple of 32) [f16]\n"
        "  --block-rows N        rows per KV block [64]\n"
        "  --log-level L         error, warn, info or debug [warn]\n"
        "Access:\n"
        "  --curve-secret FILE   the daemon's CURVE secret key (z85 text, as gistd --keygen\n"
        "                        writes it) [none: no CURVE]\n"
        "  --allow-keys FILE     client public keys it accepts, one a line: KEY [admin]; '#'\n"
        "                        comments (admin keys may change budgets and snapshot every\n"
        "                        session; SIGHUP reloads the file, a key taken off it is refused)\n"
        "  --insecure            serve an address other than loopback or ipc:// without CURVE\n"
        "                        [off: such a --listen is refused]\n"
        "  --rate-limit N        requests/s per client key and address, 0: off [200 with CURVE,\n"
        "                        off without it, where every local client shares one credential]\n"
        "  --rate-burst N        requests a client may send at once [twice the rate]\n"
        "  --max-client-sessions N  sessions one client key may hold, 0: off [16 with CURVE,\n"
        "                        off without it]\n"
        "  --keygen PREFIX       writes a key pair, PREFIX.key (secret, mode 0600) and PREFIX.pub\n"
        "SIZE: bytes, or with a suffix K, M, G (powers of 1024): 64M, 1.5G.\n"
        "The first line on stdout is the endpoint gistd listens on. Exit status: 0 after a clean\n"
        "stop (SIGINT, SIGTERM), 2 for bad options or a model file that cannot be loaded, 1 when\n"
        "it cannot serve (the address is taken, out of memory).\n",
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

/* `--help` with a model: the smallest usable session budget for it (loads it, binds nothing). */
static int help_model(const dmn_cfg_t *given)
{
    dmn_cfg_t cfg = *given;
    cfg.listen = "inproc://gistd-help";
    cfg.snapshot_dir = NULL;
    cfg.kv_budget = cfg.session_budget = 0;
    cfg.curve_secret = cfg.allow_keys = NULL;
    cfg.log_level = DMN_LOG_ERROR;
    dmn_t *d = NULL;
    err_info_t e;
    err_clear(&e);
    if (dmn_new(&cfg, &d, &e)) {
        fprintf(stderr, "gistd: %s\n", err_msg(&e));
        return 2;
    }
    const size_t min = dmn_session_min_bytes(d);
    printf("For %s: the smallest usable session budget is %zu bytes (%.0f KiB).\n",
           given->model_path, min, min / 1024.0);
    dmn_destroy(&d);
    return 0;
}

int main(int argc, char **argv)
{
    dmn_cfg_t cfg;
    dmn_cfg_default(&cfg);
    bool help = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long u;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            help = true;
            continue;
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
        } else if (!strcmp(a, "--idle-timeout")) {
            char *end;
            errno = 0;
            const double t = strtod(v, &end);
            if (errno || end == v || *end || !(t >= 0) || t > 1e9)
                return usage_error("--idle-timeout: '%s' is not a number of seconds", v);
            cfg.idle_timeout = t;
        } else if (!strcmp(a, "--snapshot-dir")) {
            cfg.snapshot_dir = v;
        } else if (!strcmp(a, "--spill-dir")) {
            cfg.spill_dir = strcmp(v, "none") ? v : NULL;
            cfg.spill_default = false;
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
            else if (!strcmp(v, "q8_0"))
                cfg.kv_type = DT_Q8_0;
            else
                return usage_error("--kv-type: '%s' is not f32, f16 or q8_0", v);
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
    err_info_t e;
    err_clear(&e);
    if (help) {
        usage(stdout);
        if (cfg.model_path)
            return help_model(&cfg);
        return 0;
    }
    if (!cfg.model_path)
        return usage_error("no model: give --model FILE");
    if (dmn_listen_check(cfg.listen, &e) || dmn_auth_check(&cfg, &e)) {
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
        return rc == ERR_NOMEM || rc == ERR_IO ? 1 : 2; /* 2: the options or the model file */
    }
    printf("%s\n", dmn_endpoint(d));
    fflush(stdout);
    rc = dmn_run(d, stop_pipe[0]);
    dmn_destroy(&d);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
    return rc ? 1 : 0;
}
