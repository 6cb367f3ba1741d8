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

/* One turn's reply on its way to the screen (gc_text: nothing of the template's end of turn,
 * which a model may write as plain text over several tokens, and whole characters), and its
 * compactions, printed in one line once the reply is whole. */
typedef struct chat_events {
    gc_text_t text;
    uint32_t n, gist, merge, evict, other;
    uint32_t first, last;
    int64_t freed;
    uint64_t session_bytes;
} chat_events_t;

static int chat_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    chat_events_t *ev = ctx;
    char *out;
    size_t n;
    if (gc_text_push(&ev->text, piece, len, &out, &n))
        return 1; /* no memory: stop the reply */
    fwrite(out, 1, n, stdout);
    fflush(stdout);
    free(out);
    return ctl_interrupted(); /* a signal that came while printing: stop there */
}

static void chat_compaction(void *ctx, uint32_t session, const gc_compaction_t *c)
{
    chat_events_t *ev = ctx;
    if (ev->n == 0 || c->first < ev->first)
        ev->first = c->first;
    if (ev->n == 0 || c->last > ev->last)
        ev->last = c->last;
    ev->n++;
    if (!strcmp(c->action, "gist"))
        ev->gist++;
    else if (!strcmp(c->action, "merge"))
        ev->merge++;
    else if (!strcmp(c->action, "evict"))
        ev->evict++;
    else
        ev->other++;
    ev->freed += c->bytes_freed;
    ev->session_bytes = c->session_bytes;
}

static void chat_events_print(uint32_t session, const chat_events_t *ev)
{
    if (ev->n == 0)
        return;
    char b[32], k[32];
    fprintf(stderr,
            "[session %u: %u compaction%s (%u gist, %u merge, %u evict%s) over positions %u-%u: "
            "%s freed, %s held]\n",
            session, ev->n, ev->n == 1 ? "" : "s", ev->gist, ev->merge, ev->evict,
            ev->other ? ", other" : "", ev->first, ev->last,
            ctl_size_signed(ev->freed, b, sizeof b),
            gc_format_size(ev->session_bytes, k, sizeof k));
}

/* One turn: the user's text in, the reply streamed out. Off a terminal the turn is marked on
 * stdout ("> " and the user's text), so a transcript of a piped chat reads turn by turn; the
 * turn's compactions follow the reply on stderr, in one line. */
static int chat_turn(gc_client_t *c, uint32_t session, const char *text, size_t len, bool tty,
                     uint32_t n, const ctl_gen_opts_t *g, const char *turn_stop, err_info_t *e)
{
    if (!tty) {
        fputs("> ", stdout);
        for (size_t i = 0; i < len; i++)
            fputc(text[i] == '\n' ? ' ' : text[i], stdout);
        fputc('\n', stdout);
    }
    chat_events_t ev = {0};
    const char *stops[1] = {turn_stop};
    gc_text_init(&ev.text, stops, *turn_stop ? 1 : 0);
    gc_callbacks_t cb = {.ctx = &ev, .on_token = chat_token, .on_compaction = chat_compaction};
    gc_gen_opts_t o = {.session = session,
                       .max_tokens = n,
                       .prompt = text,
                       .prompt_len = len,
                       .prompt_role = GC_ROLE_USER,
                       .role = GC_ROLE_ASSISTANT,
                       .sampling = g->sampled ? &g->smp : NULL};
    gc_result_t res = {0};
    int r = gc_generate(c, &o, &cb, &res, e);
    char *rest;
    size_t rest_len;
    if (!r && !gc_text_final(&ev.text, res.text, res.text_len, res.stop, res.stop_len, &rest,
                             &rest_len)) {
        fwrite(rest, 1, rest_len, stdout); /* what was held back, short of a stop string */
        free(rest);
    }
    gc_text_fini(&ev.text);
    fputs(tty ? "\n" : "\n\n", stdout);
    fflush(stdout);
    chat_events_print(session, &ev);
    if (!r && tty) {
        char b[32];
        fprintf(stderr, "[%u tokens, %.0f ms to the first, kv %s]\n", res.usage.generated_tokens,
                res.usage.first_token_ms, gc_format_size(res.usage.kv_bytes, b, sizeof b));
    }
    if (!r && res.reason == GC_STOP_CANCELLED)
        r = err_set(e, ERR_CANCELLED,
                    "the reply was cancelled (the daemon is stopping, or the session's request "
                    "was cancelled)");
    gc_result_free(&res);
    return r;
}

int ctl_chat(ctl_t *x, int argc, char **argv)
{
    uint32_t session = 0;
    unsigned long n = 256, v;
    const char *tmpl = "", *system = NULL, *policy = NULL; /* "": the model file's template */
    size_t budget = 0;
    ctl_params_t pp = {.n = 0};
    ctl_gen_opts_t g;
    ctl_gen_opts_init(&g);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val)
            return ctl_usage("chat: '%s' needs a value or is unknown", a);
        i++;
        int bad = 0;
        if (strcmp(a, "--prompt") && ctl_gen_opt(a, val, &g, &bad)) {
            /* taken: --prompt-file (the first turn) and the sampler */
        } else if (!strcmp(a, "--session")) {
            bad = ctl_uint(a, val, UINT32_MAX, &v);
            session = (uint32_t)v;
        } else if (!strcmp(a, "--template")) {
            tmpl = val;
        } else if (!strcmp(a, "--system")) {
            system = val;
        } else if (!strcmp(a, "-n")) {
            bad = ctl_uint(a, val, UINT32_MAX, &n);
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
    if (ctl_prompt_read(&g.prompt))
        return CTL_USAGE;
    int st = CTL_OK;
    gc_client_t *c = ctl_client(x, &st);
    if (!c) {
        ctl_prompt_free(&g.prompt);
        return st;
    }
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
        if (gc_open(c, &o, &session, &e)) {
            ctl_prompt_free(&g.prompt);
            return ctl_fail(&e);
        }
    }
    /* a file's prompt is the first turn; the turns go on from stdin unless it was stdin */
    const bool from_stdin = g.prompt.file && !strcmp(g.prompt.file, "-");
    const bool tty = isatty(0) && !from_stdin;
    fprintf(stderr, "session %u (%s); %s\n", session, opened ? "new" : "resumed",
            from_stdin ? "standard input is the one turn"
                       : "an empty line or end of input ends the chat");
    /* the end of an assistant turn in the session's template, kept off the screen */
    gc_session_info_t info;
    int r = gc_session_info(c, session, &info, &e);
    if (!r && system)
        r = gc_append(c, session, system, 0, GC_ROLE_SYSTEM, NULL, &e);
    if (!r && g.prompt.text && g.prompt.len)
        r = chat_turn(c, session, g.prompt.text, g.prompt.len, tty, (uint32_t)n, &g,
                      info.turn_stop, &e);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (!r && !from_stdin) {
        if (tty)
            fputs("> ", stderr);
        if ((len = getline(&line, &cap, stdin)) <= 0)
            break;
        if (line[len - 1] == '\n')
            line[--len] = 0;
        if (len == 0)
            break;
        r = chat_turn(c, session, line, (size_t)len, tty, (uint32_t)n, &g, info.turn_stop, &e);
    }
    free(line);
    ctl_prompt_free(&g.prompt);
    if (ctl_interrupted()) {
        fputs("gistctl: interrupted\n", stderr);
        st = CTL_INTERRUPTED;
    } else if (r) {
        st = ctl_fail(&e);
    }
    /* a session opened here is closed on every path */
    if (opened) {
        const int crc = ctl_close_quietly(c, session, x->timeout_ms);
        if (crc && st == CTL_OK) {
            fprintf(stderr, "gistctl: cannot close session %u: %s\n", session, err_str(crc));
            st = crc == ERR_TIMEOUT ? CTL_NO_ANSWER : CTL_DAEMON;
        }
    } else if (st == CTL_INTERRUPTED) {
        gc_set_timeout(c, 2000);
        gc_cancel(c, session, &e);
    }
    return st;
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
