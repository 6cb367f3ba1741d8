/*
 * clients/gistctl/cmd_basic.c — the one-shot commands: gen, open, close, cancel, stats,
 * sessions, budget, expand, transcript, snapshot, restore.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistctl/ctl.h"

#define CONNECT_OR_RETURN(x, c)                                                                    \
    int st_ = CTL_OK;                                                                              \
    gc_client_t *c = ctl_client(x, &st_);                                                          \
    if (!c)                                                                                        \
        return st_;

static int session_arg(const char *s, uint32_t *id)
{
    unsigned long v;
    if (ctl_uint("session", s, UINT32_MAX, &v) || v == 0)
        return v == 0 ? ctl_usage("'%s' is not a session id", s) : CTL_USAGE;
    *id = (uint32_t)v;
    return 0;
}

static int size_arg(const char *opt, const char *s, size_t *out)
{
    if (gc_parse_size(s, out))
        return ctl_usage("%s: '%s' is not a size (like 65536, 64K, 8M or 1.5G)", opt, s);
    return 0;
}

/* ------------------------------------------------------------------ gen */

static int print_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return ctl_interrupted(); /* a signal that came while printing: stop there */
}

/* What a failed or cut-short generation in session `session` ends with: the error's exit
 * status, or CTL_INTERRUPTED when a signal cut the wait (the session's request is cancelled
 * when the session is the client's own). */
static int gen_failed(gc_client_t *c, uint32_t session, bool temporary, const err_info_t *e)
{
    if (e->code == ERR_CANCELLED && ctl_interrupted()) {
        fputs("gistctl: interrupted\n", stderr);
        if (!temporary) {
            err_info_t ce;
            err_clear(&ce);
            gc_set_timeout(c, 2000);
            gc_cancel(c, session, &ce);
        }
        return CTL_INTERRUPTED;
    }
    return ctl_fail(e);
}

int ctl_gen(ctl_t *x, int argc, char **argv)
{
    const char *stop[16];
    uint32_t n_stop = 0, session = 0;
    unsigned long n = 0;
    bool have_n = false;
    ctl_gen_opts_t g;
    ctl_gen_opts_init(&g);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val)
            return ctl_usage("gen: '%s' needs a value or is unknown", a);
        i++;
        int bad = 0;
        if (ctl_gen_opt(a, val, &g, &bad)) {
            /* taken */
        } else if (!strcmp(a, "-n")) {
            bad = ctl_uint(a, val, UINT32_MAX, &n);
            have_n = true;
        } else if (!strcmp(a, "--session")) {
            bad = session_arg(val, &session);
        } else if (!strcmp(a, "--stop")) {
            if (n_stop == 16)
                return ctl_usage("gen: at most 16 --stop strings");
            stop[n_stop++] = val;
        } else {
            return ctl_usage("gen: unknown option '%s'", a);
        }
        if (bad)
            return CTL_USAGE;
    }
    if ((!g.prompt.text && !g.prompt.file) || !have_n)
        return ctl_usage("usage: gistctl gen (--prompt STR | --prompt-file F) -n N [--temp T] "
                         "[--session ID]");
    if (ctl_prompt_read(&g.prompt))
        return CTL_USAGE;
    if (g.prompt.file && g.prompt.len == 0) {
        ctl_prompt_free(&g.prompt);
        return ctl_usage("--prompt-file %s is empty", g.prompt.file);
    }
    int st = CTL_OK;
    gc_client_t *c = ctl_client(x, &st);
    if (!c) {
        ctl_prompt_free(&g.prompt);
        return st;
    }
    err_info_t e;
    err_clear(&e);
    /* a session opened here is closed on every path below */
    const bool temporary = session == 0;
    if (temporary && gc_open(c, NULL, &session, &e)) {
        ctl_prompt_free(&g.prompt);
        return gen_failed(c, 0, false, &e);
    }
    gc_gen_opts_t o = {.session = session,
                       .max_tokens = (uint32_t)n,
                       .prompt = g.prompt.text,
                       .prompt_len = g.prompt.len,
                       .sampling = g.sampled ? &g.smp : NULL,
                       .stop = stop,
                       .n_stop = n_stop};
    gc_callbacks_t cb = {.on_token = print_token};
    gc_result_t res = {0};
    int rc = gc_generate(c, &o, &cb, &res, &e);
    fputc('\n', stdout);
    fflush(stdout);
    if (rc) {
        st = gen_failed(c, session, temporary, &e);
    } else if (ctl_interrupted()) {
        fputs("gistctl: interrupted\n", stderr);
        st = CTL_INTERRUPTED;
    } else if (res.reason == GC_STOP_CANCELLED) {
        fputs("gistctl: the generation was cancelled (the daemon is stopping, or the session's "
              "request was cancelled)\n",
              stderr);
        st = CTL_DAEMON;
    }
    gc_result_free(&res);
    ctl_prompt_free(&g.prompt);
    if (temporary) {
        const int crc = ctl_close_quietly(c, session, x->timeout_ms);
        if (crc && st == CTL_OK) {
            fprintf(stderr, "gistctl: cannot close session %u: %s\n", session, err_str(crc));
            st = crc == ERR_TIMEOUT ? CTL_NO_ANSWER : CTL_DAEMON;
        }
    }
    return st;
}

/* ------------------------------------------------------------------ sessions */

int ctl_open(ctl_t *x, int argc, char **argv)
{
    gc_open_opts_t o = {0};
    ctl_params_t pp = {.n = 0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val)
            return ctl_usage("open: '%s' needs a value or is unknown", a);
        i++;
        if (!strcmp(a, "--budget")) {
            if (size_arg(a, val, &o.budget_bytes))
                return CTL_USAGE;
        } else if (!strcmp(a, "--soft")) {
            if (size_arg(a, val, &o.soft_bytes))
                return CTL_USAGE;
        } else if (!strcmp(a, "--policy")) {
            o.policy = val;
        } else if (!strcmp(a, "--param")) {
            if (ctl_param(&pp, val))
                return CTL_USAGE;
        } else if (!strcmp(a, "--template")) {
            o.chat_template = val;
        } else if (!strcmp(a, "--name")) {
            o.name = val;
        } else {
            return ctl_usage("open: unknown option '%s'", a);
        }
    }
    o.param_keys = pp.key;
    o.param_values = pp.value;
    o.n_params = pp.n;
    CONNECT_OR_RETURN(x, c);
    uint32_t id;
    err_info_t e;
    err_clear(&e);
    if (gc_open(c, &o, &id, &e))
        return ctl_fail(&e);
    printf("%u\n", id);
    return CTL_OK;
}

static int one_session(ctl_t *x, int argc, char **argv, const char *cmd,
                       int (*fn)(gc_client_t *, uint32_t, err_info_t *), const char *done)
{
    uint32_t id;
    if (argc != 1)
        return ctl_usage("usage: gistctl %s ID", cmd);
    if (session_arg(argv[0], &id))
        return CTL_USAGE;
    CONNECT_OR_RETURN(x, c);
    err_info_t e;
    err_clear(&e);
    if (fn(c, id, &e))
        return ctl_fail(&e);
    printf("session %u %s\n", id, done);
    return CTL_OK;
}

int ctl_close(ctl_t *x, int argc, char **argv)
{
    uint32_t id = 0;
    bool forget = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--forget"))
            forget = true;
        else if (argv[i][0] == '-' || id || session_arg(argv[i], &id))
            return ctl_usage("usage: gistctl close ID [--forget]");
    }
    if (!id)
        return ctl_usage("usage: gistctl close ID [--forget]");
    CONNECT_OR_RETURN(x, c);
    err_info_t e;
    err_clear(&e);
    if (gc_close_opts(c, id, forget, &e))
        return ctl_fail(&e);
    printf("session %u closed\n", id);
    return CTL_OK;
}

int ctl_cancel(ctl_t *x, int argc, char **argv)
{
    return one_session(x, argc, argv, "cancel", gc_cancel, "cancelled");
}

int ctl_restore(ctl_t *x, int argc, char **argv)
{
    uint32_t id = 0, got = 0;
    bool as_new = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--as-new"))
            as_new = true;
        else if (argv[i][0] == '-' || id || session_arg(argv[i], &id))
            return ctl_usage("usage: gistctl restore ID [--as-new]");
    }
    if (!id)
        return ctl_usage("usage: gistctl restore ID [--as-new]");
    CONNECT_OR_RETURN(x, c);
    err_info_t e;
    err_clear(&e);
    if (gc_restore_opts(c, id, as_new, &got, &e))
        return ctl_fail(&e);
    if (as_new)
        printf("session %u restored as session %u\n", id, got);
    else
        printf("session %u restored\n", id);
    return CTL_OK;
}

int ctl_snapshot(ctl_t *x, int argc, char **argv)
{
    uint32_t id = 0, n = 0;
    if (argc > 1 || (argc == 1 && session_arg(argv[0], &id)))
        return ctl_usage("usage: gistctl snapshot [ID]");
    CONNECT_OR_RETURN(x, c);
    err_info_t e;
    err_clear(&e);
    if (gc_snapshot(c, id, &n, &e))
        return ctl_fail(&e);
    printf("%u session%s written\n", n, n == 1 ? "" : "s");
    return CTL_OK;
}

int ctl_sessions(ctl_t *x, int argc, char **argv)
{
    bool json = argc == 1 && !strcmp(argv[0], "--json");
    if (argc > 1 || (argc == 1 && !json))
        return ctl_usage("usage: gistctl sessions [--json]");
    CONNECT_OR_RETURN(x, c);
    gc_session_info_t *l;
    uint32_t n;
    err_info_t e;
    err_clear(&e);
    if (gc_sessions(c, &l, &n, &e))
        return ctl_fail(&e);
    if (json) {
        fputc('[', stdout);
        for (uint32_t i = 0; i < n; i++) {
            fputs(i ? ", " : "", stdout);
            ctl_json_session(stdout, &l[i]);
        }
        fputs("]\n", stdout);
    } else {
        printf("%6s  %-16s %-9s %-6s %8s %8s %12s %12s %7s %8s\n", "ID", "NAME", "STATE", "POLICY",
               "TOKENS", "PENDING", "BYTES", "BUDGET", "RATIO", "IDLE");
        for (uint32_t i = 0; i < n; i++) {
            char b1[32], b2[32], idle[32];
            const double t = l[i].idle_s;
            if (!strcmp(l[i].state, "closed") || t > 0)
                snprintf(idle, sizeof idle,
                         t < 120    ? "%.0fs"
                         : t < 7200 ? "%.0fm"
                                    : "%.1fh",
                         t < 120    ? t
                         : t < 7200 ? t / 60
                                    : t / 3600);
            else
                snprintf(idle, sizeof idle, "-");
            printf("%6u  %-16.16s %-9s %-6s %8u %8u %12s %12s %7.2f %8s\n", l[i].id, l[i].name,
                   l[i].state, *l[i].policy ? l[i].policy : "-", l[i].tokens, l[i].pending,
                   gc_format_size(l[i].bytes, b1, sizeof b1),
                   l[i].hard_bytes ? gc_format_size(l[i].hard_bytes, b2, sizeof b2) : "-",
                   l[i].compression, idle);
        }
    }
    free(l);
    return CTL_OK;
}

/* ------------------------------------------------------------------ stats */

static void stats_json(const gc_stats_t *s, bool sessions)
{
    FILE *f = stdout;
    fprintf(f,
            "{\"kv_budget_bytes\": %" PRIu64 ", \"kv_soft_bytes\": %" PRIu64
            ", \"kv_used_bytes\": %" PRIu64 ", \"kv_peak_bytes\": %" PRIu64
            ", \"sessions\": %u, \"max_sessions\": %u, \"session_budget_bytes\": %" PRIu64
            ", \"tier_bytes\": {\"f32\": %" PRIu64 ", \"f16\": %" PRIu64 ", \"q8_0\": %" PRIu64
            "}, \"rows\": %" PRIu64 ", \"blocks\": %" PRIu64 ", \"fragmentation\": %.6g"
            ", \"transcript_bytes\": %" PRIu64 ", \"transcript_disk_bytes\": %" PRIu64
            ", \"tokens\": %" PRIu64 ", \"je_allocated\": %" PRIu64 ", \"je_active\": %" PRIu64
            ", \"je_resident\": %" PRIu64 ", \"steps\": %" PRIu64 ", \"tokens_generated\": %" PRIu64
            ", \"tokens_prefilled\": %" PRIu64
            ", \"decode_tokens_per_s\": %.6g, \"prefill_tokens_per_s\": %.6g"
            ", \"avg_batch\": %.6g, \"decode_steps\": %" PRIu64 ", \"decode_items\": %" PRIu64
            ", \"requests\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"events_dropped\": %" PRIu64
            ", \"clients_gone\": %" PRIu64 ", \"budget_refusals\": %" PRIu64
            ", \"compactions\": %" PRIu64 ", \"bytes_freed\": %" PRId64
            ", \"kv_bytes_per_token\": %" PRIu64 ", \"rate_refusals\": %" PRIu64
            ", \"permission_refusals\": %" PRIu64 ", \"session_min_bytes\": %" PRIu64
            ", \"idle_timeout_s\": %.6g"
            ", \"expansions\": %" PRIu64 ", \"expand_tokens\": %" PRIu64
            ", \"expand_bytes\": %" PRId64 ", \"expand_ms\": %.6g"
            ", \"curve\": %s, \"uptime_s\": %.3f, \"threads\": %u, \"model\": ",
            s->kv_budget_bytes, s->kv_soft_bytes, s->kv_used_bytes, s->kv_peak_bytes, s->sessions,
            s->max_sessions, s->session_budget_bytes, s->tier_f32, s->tier_f16, s->tier_q8_0,
            s->rows, s->blocks, s->fragmentation, s->transcript_bytes, s->transcript_disk_bytes,
            s->tokens, s->je_allocated, s->je_active, s->je_resident, s->steps, s->tokens_generated,
            s->tokens_prefilled, s->decode_tokens_per_s, s->prefill_tokens_per_s, s->avg_batch,
            s->decode_steps, s->decode_items, s->requests, s->errors, s->events_dropped,
            s->clients_gone, s->budget_refusals, s->compactions, s->bytes_freed,
            s->kv_bytes_per_token, s->rate_refusals, s->permission_refusals, s->session_min_bytes,
            s->idle_timeout_s, s->expansions, s->expand_tokens, s->expand_bytes, s->expand_ms,
            s->curve ? "true" : "false", s->uptime_s, s->threads);
    ctl_json_str(f, s->model);
    fputs(", \"compactions_by_method\": {", f);
    for (uint32_t i = 0; i < s->n_compactions_by_method; i++) {
        fputs(i ? ", " : "", f);
        ctl_json_str(f, s->compactions_by_method[i].method);
        fprintf(f, ": %" PRIu64, s->compactions_by_method[i].count);
    }
    fputc('}', f);
    if (sessions) {
        fputs(", \"session_list\": [", f);
        for (uint32_t i = 0; i < s->n_session_list; i++) {
            fputs(i ? ", " : "", f);
            ctl_json_session(f, &s->session_list[i]);
        }
        fputc(']', f);
    }
    fputs("}\n", f);
}

static void stats_text(const gc_stats_t *s)
{
    char a[32], b[32], c[32];
    printf("model            %s\n", s->model);
    printf("uptime           %.1f s, %u threads\n", s->uptime_s, s->threads);
    printf("sessions         %u of %u, closed after %s idle\n", s->sessions, s->max_sessions,
           s->idle_timeout_s > 0 ? (snprintf(c, sizeof c, "%.0f s", s->idle_timeout_s), c)
                                 : "never");
    printf("session budget   %s by default, at least %s\n",
           s->session_budget_bytes ? gc_format_size(s->session_budget_bytes, a, sizeof a) : "none",
           gc_format_size(s->session_min_bytes, b, sizeof b));
    if (s->kv_budget_bytes)
        printf("kv budget        %s (soft %s)\n", gc_format_size(s->kv_budget_bytes, a, sizeof a),
               gc_format_size(s->kv_soft_bytes, b, sizeof b));
    else
        printf("kv budget        none\n");
    printf("kv used          %s (peak %s)\n", gc_format_size(s->kv_used_bytes, a, sizeof a),
           gc_format_size(s->kv_peak_bytes, b, sizeof b));
    printf("tiers            f32 %s, f16 %s, q8_0 %s\n", gc_format_size(s->tier_f32, a, sizeof a),
           gc_format_size(s->tier_f16, b, sizeof b), gc_format_size(s->tier_q8_0, c, sizeof c));
    printf("rows             %" PRIu64 " in %" PRIu64 " blocks (%.1f%% free), %" PRIu64
           " tokens, transcript %s (%s more on disk)\n",
           s->rows, s->blocks, 100.0 * s->fragmentation, s->tokens,
           gc_format_size(s->transcript_bytes, a, sizeof a),
           gc_format_size(s->transcript_disk_bytes, b, sizeof b));
    printf("allocator        allocated %s, active %s, resident %s\n",
           gc_format_size(s->je_allocated, a, sizeof a), gc_format_size(s->je_active, b, sizeof b),
           gc_format_size(s->je_resident, c, sizeof c));
    printf("throughput       decode %.1f tokens/s, prefill %.1f tokens/s, %.2f items/step, "
           "%.2f decoded/decode step\n",
           s->decode_tokens_per_s, s->prefill_tokens_per_s, s->avg_batch,
           s->decode_steps ? (double)s->decode_items / (double)s->decode_steps : 0.0);
    printf("totals           %" PRIu64 " steps, %" PRIu64 " generated, %" PRIu64
           " prefilled, %" PRIu64 " requests, %" PRIu64 " errors\n",
           s->steps, s->tokens_generated, s->tokens_prefilled, s->requests, s->errors);
    printf("compaction       %" PRIu64 " events, %s freed, %" PRIu64 " budget refusals\n",
           s->compactions, ctl_size_signed(s->bytes_freed, a, sizeof a), s->budget_refusals);
    printf("expansion        %" PRIu64 " spans, %" PRIu64 " tokens re-prefilled, %s, %.1f ms\n",
           s->expansions, s->expand_tokens, ctl_size_signed(-s->expand_bytes, a, sizeof a),
           s->expand_ms);
    printf("clients          %" PRIu64 " events dropped (slow clients), %" PRIu64
           " streams ended by clients gone\n",
           s->events_dropped, s->clients_gone);
    printf("access           %s, %" PRIu64 " requests over the rate limit, %" PRIu64
           " refused by ownership or admin rights\n",
           s->curve ? "CURVE keys" : "local (no CURVE)", s->rate_refusals, s->permission_refusals);
}

int ctl_stats(ctl_t *x, int argc, char **argv)
{
    bool json = false, sessions = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--sessions"))
            sessions = true;
        else
            return ctl_usage("usage: gistctl stats [--json] [--sessions]");
    }
    CONNECT_OR_RETURN(x, c);
    gc_stats_t s;
    err_info_t e;
    err_clear(&e);
    if (gc_stats(c, sessions, &s, &e))
        return ctl_fail(&e);
    if (json)
        stats_json(&s, sessions);
    else
        stats_text(&s);
    gc_stats_free(&s);
    return CTL_OK;
}

/* ------------------------------------------------------------------ budget, transcript */

int ctl_budget(ctl_t *x, int argc, char **argv)
{
    size_t hard = 0, soft = 0;
    uint32_t session = 0;
    bool have = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--session") && val) {
            if (session_arg(val, &session))
                return CTL_USAGE;
            i++;
        } else if (!strcmp(a, "--soft") && val) {
            if (size_arg(a, val, &soft))
                return CTL_USAGE;
            i++;
        } else if (a[0] != '-' && !have) {
            if (size_arg("budget", a, &hard))
                return CTL_USAGE;
            have = true;
        } else {
            return ctl_usage("usage: gistctl budget SIZE [--soft SIZE] [--session ID]");
        }
    }
    if (!have)
        return ctl_usage("usage: gistctl budget SIZE [--soft SIZE] [--session ID]");
    CONNECT_OR_RETURN(x, c);
    gc_budget_t b;
    err_info_t e;
    err_clear(&e);
    if (gc_set_budget(c, session, hard, soft, &b, &e))
        return ctl_fail(&e);
    char h[32], s[32], u[32], f[32];
    printf("%s budget %s (soft %s), %s in use, %s freed\n", session ? "session" : "global",
           gc_format_size(b.hard_bytes, h, sizeof h), gc_format_size(b.soft_bytes, s, sizeof s),
           gc_format_size(b.used_bytes, u, sizeof u), ctl_size_signed(b.bytes_freed, f, sizeof f));
    return CTL_OK;
}

/* ------------------------------------------------------------------ expand */

static void print_expand_event(void *ctx, uint32_t session, const gc_compaction_t *c)
{
    char f[32];
    if (!strcmp(c->action, "expand"))
        printf("expand   positions %u..%u at model position %u: %" PRIu64
               " tokens re-prefilled, %s\n",
               c->first, c->last, c->model_pos, c->tokens,
               ctl_size_signed(-c->bytes_freed, f, sizeof f));
    else
        printf("compact  %s/%s (%s) positions %u..%u: %s freed\n", c->action, c->method, c->reason,
               c->first, c->last, ctl_size_signed(c->bytes_freed, f, sizeof f));
}

int ctl_expand(ctl_t *x, int argc, char **argv)
{
    static const char use[] = "usage: gistctl expand ID [--span A:B] [--max-tokens N]";
    uint32_t session = 0;
    unsigned long first = 0, last = 0, max_tokens = 0;
    bool span = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--span") && val) {
            char *end;
            first = strtoul(val, &end, 10);
            if (end == val || *end != ':' || val[0] == '-')
                return ctl_usage("--span: '%s' is not FIRST:LAST", val);
            const char *b = end + 1;
            last = strtoul(b, &end, 10);
            if (end == b || *end || b[0] == '-' || first > last || last > UINT32_MAX)
                return ctl_usage("--span: '%s' is not FIRST:LAST with FIRST <= LAST", val);
            span = true;
            i++;
        } else if (!strcmp(a, "--max-tokens") && val) {
            if (ctl_uint(a, argv[++i], UINT32_MAX, &max_tokens))
                return CTL_USAGE;
        } else if (a[0] != '-' && !session) {
            if (session_arg(a, &session))
                return CTL_USAGE;
        } else {
            return ctl_usage("%s", use);
        }
    }
    if (!session)
        return ctl_usage("%s", use);
    CONNECT_OR_RETURN(x, c);
    gc_callbacks_t cb = {.on_compaction = print_expand_event};
    gc_expand_result_t r;
    err_info_t e;
    err_clear(&e);
    if (gc_expand(c, session, span, (uint32_t)first, (uint32_t)last, (uint32_t)max_tokens, &cb, &r,
                  &e))
        return ctl_fail(&e);
    char b[32], s[32];
    printf("expanded %u of %u compressed spans: %" PRIu64 " tokens re-prefilled, %s (session %s), "
           "%.1f ms%s%s\n",
           r.spans, r.candidates, r.tokens, ctl_size_signed(r.bytes, b, sizeof b),
           gc_format_size(r.session_bytes, s, sizeof s), r.ms, r.note[0] ? "; " : "", r.note);
    return CTL_OK;
}

int ctl_transcript(ctl_t *x, int argc, char **argv)
{
    uint32_t session = 0;
    unsigned long first = 0, count = 0;
    bool tokens = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tokens")) {
            tokens = true;
        } else if (!strcmp(a, "--first") && val) {
            if (ctl_uint(a, argv[++i], UINT32_MAX, &first))
                return CTL_USAGE;
        } else if (!strcmp(a, "--count") && val) {
            if (ctl_uint(a, argv[++i], UINT32_MAX, &count))
                return CTL_USAGE;
        } else if (a[0] != '-' && !session) {
            if (session_arg(a, &session))
                return CTL_USAGE;
        } else {
            return ctl_usage("usage: gistctl transcript ID [--tokens] [--first N] [--count N]");
        }
    }
    if (!session)
        return ctl_usage("usage: gistctl transcript ID [--tokens] [--first N] [--count N]");
    CONNECT_OR_RETURN(x, c);
    char *text = NULL;
    size_t len = 0;
    int32_t *ids = NULL;
    uint32_t n = 0, total = 0;
    err_info_t e;
    err_clear(&e);
    if (gc_transcript(c, session, (uint32_t)first, (uint32_t)count, &text, &len, &ids, &n, &total,
                      &e))
        return ctl_fail(&e);
    if (tokens) {
        for (uint32_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    } else {
        fwrite(text, 1, len, stdout);
        putchar('\n');
    }
    free(text);
    free(ids);
    return CTL_OK;
}
