/*
 * clients/gistd-http/metrics.c — /metrics: the daemon's figures (its Stats reply) and the
 * gateway's own (requests and their durations), in Prometheus' text exposition format.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistd-http/http.h"

static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5,   1,      2.5,   5,    10,    30,   60};
#define N_BUCKETS (sizeof buckets / sizeof buckets[0])

static const char *const route_names[GH_N_ROUTES] = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "other"};

static const unsigned statuses[] = {200, 400, 404, 405, 409, 413, 500, 503};
#define N_STATUSES (sizeof statuses / sizeof statuses[0])

struct gh_metrics {
    pthread_mutex_t mu;
    uint64_t count[GH_N_ROUTES][N_BUCKETS + 1]; /* per bucket, not cumulative; last: +Inf */
    double sum[GH_N_ROUTES];
    uint64_t by_status[GH_N_ROUTES][N_STATUSES + 1]; /* last: any other status */
};

int gh_metrics_new(gh_metrics_t **out)
{
    gh_metrics_t *m = calloc(1, sizeof *m);
    if (!m)
        return ERR_NOMEM;
    pthread_mutex_init(&m->mu, NULL);
    *out = m;
    return 0;
}

void gh_metrics_destroy(gh_metrics_t **mp)
{
    if (!*mp)
        return;
    pthread_mutex_destroy(&(*mp)->mu);
    free(*mp);
    *mp = NULL;
}

void gh_metrics_request(gh_metrics_t *m, gh_route_t route, unsigned status, double seconds)
{
    size_t b = 0;
    while (b < N_BUCKETS && seconds > buckets[b])
        b++;
    size_t s = 0;
    while (s < N_STATUSES && statuses[s] != status)
        s++;
    pthread_mutex_lock(&m->mu);
    m->count[route][b]++;
    m->sum[route] += seconds;
    m->by_status[route][s]++;
    pthread_mutex_unlock(&m->mu);
}

/* A growing text buffer; a failed allocation sticks (NULL text at the end). */
typedef struct buf {
    char *s;
    size_t len, cap;
    bool failed;
} buf_t;

static void put(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf_t *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
}

static void head(buf_t *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(buf_t *b, const char *name, const char *help, double v)
{
    head(b, name, "gauge", help);
    put(b, "%s %.17g\n", name, v);
}

static void counter(buf_t *b, const char *name, const char *help, double v)
{
    head(b, name, "counter", help);
    put(b, "%s %.17g\n", name, v);
}

char *gh_metrics_render(gh_metrics_t *m, const gc_stats_t *st, unsigned conversations)
{
    buf_t b = {.s = malloc(8192), .cap = 8192};
    if (!b.s)
        return NULL;
    b.s[0] = 0;
    gauge(&b, "gistd_up", "1 when gistd answered the gateway's stats request", st ? 1 : 0);
    if (st) {
        gauge(&b, "gistd_kv_bytes", "Bytes the KV store holds (payload and metadata)",
              (double)st->kv_used_bytes);
        gauge(&b, "gistd_kv_budget_bytes", "The KV store's hard limit in bytes (0: none)",
              (double)st->kv_budget_bytes);
        gauge(&b, "gistd_kv_soft_bytes", "The KV store's soft watermark in bytes",
              (double)st->kv_soft_bytes);
        gauge(&b, "gistd_kv_peak_bytes", "The most bytes the KV store has held",
              (double)st->kv_peak_bytes);
        head(&b, "gistd_kv_tier_bytes", "gauge", "KV payload bytes by storage tier");
        put(&b, "gistd_kv_tier_bytes{tier=\"f32\"} %llu\n", (unsigned long long)st->tier_f32);
        put(&b, "gistd_kv_tier_bytes{tier=\"f16\"} %llu\n", (unsigned long long)st->tier_f16);
        put(&b, "gistd_kv_tier_bytes{tier=\"q8_0\"} %llu\n", (unsigned long long)st->tier_q8_0);
        gauge(&b, "gistd_kv_rows", "KV rows held, every lane", (double)st->rows);
        gauge(&b, "gistd_kv_transcript_bytes", "Bytes of the sessions' cold transcripts",
              (double)st->transcript_bytes);
        gauge(&b, "gistd_sessions", "Sessions the daemon holds", st->sessions);
        gauge(&b, "gistd_max_sessions", "Sessions the daemon may hold", st->max_sessions);
        head(&b, "gistd_compactions_total", "counter",
             "Compactions the daemon made (every session), by method");
        for (uint32_t i = 0; i < st->n_compactions_by_method; i++)
            put(&b, "gistd_compactions_total{method=\"%s\"} %llu\n",
                st->compactions_by_method[i].method,
                (unsigned long long)st->compactions_by_method[i].count);
        gauge(&b, "gistd_compaction_bytes_freed",
              "Bytes compactions have freed, every session (negative: they stored more)",
              (double)st->bytes_freed);
        counter(&b, "gistd_expansions_total",
                "Compressed spans re-expanded from the cold transcript, every session",
                (double)st->expansions);
        counter(&b, "gistd_expand_tokens_total", "Tokens re-prefilled by expansions",
                (double)st->expand_tokens);
        counter(&b, "gistd_expand_seconds_total", "Time spent choosing and re-prefilling spans",
                st->expand_ms / 1e3);
        counter(&b, "gistd_tokens_prompt_total", "Prompt tokens the daemon prefilled",
                (double)st->tokens_prefilled);
        counter(&b, "gistd_tokens_generated_total", "Tokens the daemon generated",
                (double)st->tokens_generated);
        counter(&b, "gistd_steps_total", "Batched forward passes the daemon ran",
                (double)st->steps);
        counter(&b, "gistd_decode_steps_total",
                "Forward passes that decoded a token of a generating session",
                (double)st->decode_steps);
        counter(&b, "gistd_decode_items_total", "Tokens decoded by those passes",
                (double)st->decode_items);
        counter(&b, "gistd_daemon_requests_total", "Requests the daemon received",
                (double)st->requests);
        counter(&b, "gistd_daemon_errors_total", "Requests the daemon answered with an error",
                (double)st->errors);
        counter(&b, "gistd_budget_refusals_total",
                "Reservations the KV budget refused after compaction", (double)st->budget_refusals);
        gauge(&b, "gistd_decode_tokens_per_second", "Decode speed over the last few seconds",
              st->decode_tokens_per_s);
        gauge(&b, "gistd_prefill_tokens_per_second", "Prefill speed over the last few seconds",
              st->prefill_tokens_per_s);
        gauge(&b, "gistd_uptime_seconds", "Seconds since gistd started", st->uptime_s);
    }
    gauge(&b, "gistd_http_conversations", "Conversations the gateway holds in gistd sessions",
          conversations);

    pthread_mutex_lock(&m->mu);
    head(&b, "gistd_http_requests_total", "counter", "HTTP requests answered, by route and status");
    for (int r = 0; r < GH_N_ROUTES; r++)
        for (size_t s = 0; s <= N_STATUSES; s++)
            if (m->by_status[r][s]) {
                if (s < N_STATUSES)
                    put(&b, "gistd_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n",
                        route_names[r], statuses[s], (unsigned long long)m->by_status[r][s]);
                else
                    put(&b, "gistd_http_requests_total{route=\"%s\",code=\"other\"} %llu\n",
                        route_names[r], (unsigned long long)m->by_status[r][s]);
            }
    head(&b, "gistd_request_duration_seconds", "histogram",
         "Time from an HTTP request's arrival to the last byte of its reply, by route");
    for (int r = 0; r < GH_N_ROUTES; r++) {
        uint64_t cum = 0;
        for (size_t k = 0; k < N_BUCKETS; k++) {
            cum += m->count[r][k];
            put(&b, "gistd_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                route_names[r], buckets[k], (unsigned long long)cum);
        }
        cum += m->count[r][N_BUCKETS];
        put(&b, "gistd_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
            route_names[r], (unsigned long long)cum);
        put(&b, "gistd_request_duration_seconds_sum{route=\"%s\"} %.9g\n", route_names[r],
            m->sum[r]);
        put(&b, "gistd_request_duration_seconds_count{route=\"%s\"} %llu\n", route_names[r],
            (unsigned long long)cum);
    }
    pthread_mutex_unlock(&m->mu);
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
