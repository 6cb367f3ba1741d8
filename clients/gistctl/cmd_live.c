/*
 * clients/gistctl/cmd_live.c — the interactive commands: `chat` (turns in, a streamed reply
 * out, compactions shown as they happen) and `top` (a live view of the daemon's memory).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clients/gistctl/ctl.h"

/* ------------------------------------------------------------------ chat */

static int chat_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static void chat_compaction(void *ctx, uint32_t session, const gc_compaction_t *c)
{
    char b[32];
    fprintf(stderr,
            "\n[session %u: %s/%s positions %u-%u (%s): %" PRIu64 " -> %" PRIu64
            " rows, %s freed]\n",
            session, c->action, c->method, c->first, c->last, c->reason, c->rows_before,
            c->rows_after, ctl_size_signed(c->bytes_freed, b, sizeof b));
}

int ctl_chat(ctl_t *x, int argc, char **argv)
{
    uint32_t session = 0;
    unsigned long n = 256, v;
    const char *tmpl = "", *system = NULL, *policy = NULL; /* "": the model file's template */
    size_t budget = 0;
    ctl_params_t pp = {.n = 0};
    gc_sampling_t smp;
    gc_sampling_default(&smp);
    bool sampled = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val)
            return ctl_usage("chat: '%s' needs a value or is unknown", a);
        i++;
        int bad = 0;
        if (!strcmp(a, "--session")) {
            bad = ctl_uint(a, val, UINT32_MAX, &v);
            session = (uint32_t)v;
        } else if (!strcmp(a, "--template")) {
            tmpl = val;
        } else if (!strcmp(a, "--system")) {
            system = val;
        } else if (!strcmp(a, "-n")) {
            bad = ctl_uint(a, val, UINT32_MAX, &n);
        } else if (!strcmp(a, "--temp")) {
            bad = ctl_float(a, val, &smp.temp);
            sampled = true;
        } else if (!strcmp(a, "--budget")) {
            bad = gc_parse_size(val, &budget) ? ctl_usage("--budget: '%s' is not a size", val) : 0;
        } else if (!strcmp(a, "--policy")) {
            policy = val;
        } else if (!strcmp(a, "--param")) {
            bad = ctl_param(&pp, val);
        } else {
            return ctl_usage("chat: unknown option '%s'", a);
        }
        if (bad)
            return CTL_USAGE;
    }
    int st = CTL_OK;
    gc_client_t *c = ctl_client(x, &st);
    if (!c)
        return st;
    err_info_t e;
    err_clear(&e);
    const bool opened = session == 0;
    if (opened) {
        gc_open_opts_t o = {.chat_template = tmpl,
                            .budget_bytes = budget,
                            .name = "chat",
                            .policy = policy,
                            .param_keys = pp.key,
                            .param_values = pp.value,
                            .n_params = pp.n};
        if (gc_open(c, &o, &session, &e))
            return ctl_fail(&e);
    }
    const bool tty = isatty(0);
    fprintf(stderr, "session %u (%s); an empty line or end of input ends the chat\n", session,
            opened ? "new" : "resumed");
    if (system && gc_append(c, session, system, 0, GC_ROLE_SYSTEM, NULL, &e))
        return ctl_fail(&e);

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = CTL_OK;
    gc_callbacks_t cb = {.on_token = chat_token, .on_compaction = chat_compaction};
    for (;;) {
        if (tty)
            fputs("> ", stderr);
        if ((len = getline(&line, &cap, stdin)) <= 0)
            break;
        if (line[len - 1] == '\n')
            line[--len] = 0;
        if (len == 0)
            break;
        gc_gen_opts_t o = {.session = session,
                           .max_tokens = (uint32_t)n,
                           .prompt = line,
                           .prompt_len = (size_t)len,
                           .prompt_role = GC_ROLE_USER,
                           .role = GC_ROLE_ASSISTANT,
                           .sampling = sampled ? &smp : NULL};
        gc_result_t res = {0};
        int r = gc_generate(c, &o, &cb, &res, &e);
        fputc('\n', stdout);
        fflush(stdout);
        if (r) {
            rc = ctl_fail(&e);
            break;
        }
        if (tty) {
            char b[32];
            fprintf(stderr, "[%u tokens, %.0f ms to the first, kv %s]\n",
                    res.usage.generated_tokens, res.usage.first_token_ms,
                    gc_format_size(res.usage.kv_bytes, b, sizeof b));
        }
        gc_result_free(&res);
    }
    free(line);
    if (opened && rc == CTL_OK && gc_close(c, session, &e))
        rc = ctl_fail(&e);
    return rc;
}

/* ------------------------------------------------------------------ top */

static void bar(char *out, size_t width, uint64_t used, uint64_t soft, uint64_t hard)
{
    for (size_t i = 0; i < width; i++) {
        const double at = hard ? (double)(i + 1) / width * hard : 0;
        out[i] = hard && at <= (double)used ? '#' : (hard && at <= (double)soft ? '.' : ' ');
    }
    out[width] = 0;
}

static void top_frame(const gc_stats_t *s, bool tty)
{
    char a[32], b[32], c[32], br[64];
    if (tty)
        fputs("\033[H\033[2J", stdout);
    printf("gistd  %s  up %.0f s  %u session%s  %u threads\n", s->model, s->uptime_s, s->sessions,
           s->sessions == 1 ? "" : "s", s->threads);
    printf("decode %.1f tok/s  prefill %.1f tok/s  %.2f items/step  %" PRIu64 " steps\n",
           s->decode_tokens_per_s, s->prefill_tokens_per_s, s->avg_batch, s->steps);
    if (s->kv_budget_bytes) {
        bar(br, 50, s->kv_used_bytes, s->kv_soft_bytes, s->kv_budget_bytes);
        printf("budget [%s] %s / %s (%.1f%%, soft %s)\n", br,
               gc_format_size(s->kv_used_bytes, a, sizeof a),
               gc_format_size(s->kv_budget_bytes, b, sizeof b),
               100.0 * s->kv_used_bytes / s->kv_budget_bytes,
               gc_format_size(s->kv_soft_bytes, c, sizeof c));
    } else {
        printf("budget none; %s in use\n", gc_format_size(s->kv_used_bytes, a, sizeof a));
    }
    printf("peak %s  tiers: f32 %s  f16 %s  ", gc_format_size(s->kv_peak_bytes, a, sizeof a),
           gc_format_size(s->tier_f32, b, sizeof b), gc_format_size(s->tier_f16, c, sizeof c));
    printf("q8_0 %s  transcript %s\n", gc_format_size(s->tier_q8_0, a, sizeof a),
           gc_format_size(s->transcript_bytes, b, sizeof b));
    printf("compactions %" PRIu64 " (%s freed)  refusals %" PRIu64 "  dropped events %" PRIu64
           "\n\n",
           s->compactions, ctl_size_signed(s->bytes_freed, a, sizeof a), s->budget_refusals,
           s->events_dropped);
    printf("%6s %-12s %-9s %11s %11s %7s %8s %8s %9s\n", "ID", "NAME", "STATE", "BYTES", "BUDGET",
           "USED", "TOKENS", "RATIO", "TOK/S");
    for (uint32_t i = 0; i < s->n_session_list; i++) {
        const gc_session_info_t *ss = &s->session_list[i];
        printf("%6u %-12.12s %-9s %11s %11s %6.1f%% %8u %8.2f %9.1f\n", ss->id, ss->name, ss->state,
               gc_format_size(ss->bytes, a, sizeof a),
               ss->hard_bytes ? gc_format_size(ss->hard_bytes, b, sizeof b) : "-",
               ss->hard_bytes ? 100.0 * ss->bytes / ss->hard_bytes : 0.0, ss->tokens,
               ss->compression, ss->tokens_per_s);
    }
    fflush(stdout);
}

int ctl_top(ctl_t *x, int argc, char **argv)
{
    float interval = 1.0f;
    unsigned long count = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int bad;
        if (!strcmp(a, "--interval") && val)
            bad = ctl_float(a, argv[++i], &interval) ||
                  (interval <= 0 ? ctl_usage("--interval must be positive") : 0);
        else if (!strcmp(a, "--count") && val)
            bad = ctl_uint(a, argv[++i], UINT32_MAX, &count);
        else
            return ctl_usage("usage: gistctl top [--interval SECONDS] [--count N]");
        if (bad)
            return CTL_USAGE;
    }
    int st = CTL_OK;
    gc_client_t *c = ctl_client(x, &st);
    if (!c)
        return st;
    const bool tty = isatty(1);
    for (unsigned long k = 0; count == 0 || k < count; k++) {
        if (k > 0) {
            struct timespec ts = {(time_t)interval, (long)((interval - (time_t)interval) * 1e9)};
            nanosleep(&ts, NULL);
        }
        gc_stats_t s;
        err_info_t e;
        err_clear(&e);
        if (gc_stats(c, true, &s, &e))
            return ctl_fail(&e);
        top_frame(&s, tty);
        gc_stats_free(&s);
    }
    return CTL_OK;
}
