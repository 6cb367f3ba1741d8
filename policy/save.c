/*
 * policy/save.c — the policy's state as bytes, for session snapshots.
 *
 * Layout (little-endian): "GPOL", u32 version, the name (16 bytes), the parameters, the
 * segmenter, the open sentence, the spans, the pins, the figures, then the FNV-1a 64 hash of
 * everything before it. Version 2 adds the re-expansion parameters after the others, the held
 * expanded ranges after the pins, and the expansion figures; version 1 still loads (no holds,
 * the parameters of the policy it is loaded into).
 */
#include <stdlib.h>
#include <string.h>

#include "policy/pol_impl.h"

#define SAVE_VERSION 2u

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool bad;
} wbuf_t;

static void put(wbuf_t *w, const void *x, size_t n)
{
    if (w->bad)
        return;
    if (w->n + n > w->cap) {
        size_t cap = (w->cap ? 2 * w->cap : 256) + n;
        uint8_t *t = realloc(w->p, cap);
        if (!t) {
            w->bad = true;
            return;
        }
        w->p = t;
        w->cap = cap;
    }
    memcpy(w->p + w->n, x, n);
    w->n += n;
}

static void put32(wbuf_t *w, uint32_t x)
{
    put(w, &x, 4);
}

static void put64(wbuf_t *w, uint64_t x)
{
    put(w, &x, 8);
}

typedef struct rbuf {
    const uint8_t *p;
    size_t n, at;
    bool bad;
} rbuf_t;

static void get(rbuf_t *r, void *x, size_t n)
{
    if (r->bad || r->n - r->at < n) {
        r->bad = true;
        memset(x, 0, n);
        return;
    }
    memcpy(x, r->p + r->at, n);
    r->at += n;
}

static uint32_t get32(rbuf_t *r)
{
    uint32_t x;
    get(r, &x, 4);
    return x;
}

static uint64_t get64(rbuf_t *r)
{
    uint64_t x;
    get(r, &x, 8);
    return x;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void put_stats(wbuf_t *w, const pol_stats_t *s)
{
    for (int a = 0; a < POL_N_ACTIONS; a++)
        for (int m = 0; m < POL_N_METHODS; m++)
            put64(w, s->events[a][m]);
    put64(w, s->rows_removed);
    put64(w, (uint64_t)s->bytes_freed);
    put64(w, s->text_tokens);
    put64(w, s->gist_tokens);
    put64(w, s->sentences);
    put64(w, s->thoughts);
    put64(w, s->expansions);
    put64(w, s->expand_tokens);
    put64(w, (uint64_t)s->expand_bytes);
}

/* Version 1 had 3 actions and 7 methods, and no expansion figures. */
static void get_stats(rbuf_t *r, uint32_t version, pol_stats_t *s)
{
    memset(s, 0, sizeof *s);
    const int na = version == 1 ? 3 : POL_N_ACTIONS, nm = version == 1 ? 7 : POL_N_METHODS;
    for (int a = 0; a < na; a++)
        for (int m = 0; m < nm; m++)
            s->events[a][m] = get64(r);
    s->rows_removed = get64(r);
    s->bytes_freed = (int64_t)get64(r);
    s->text_tokens = get64(r);
    s->gist_tokens = get64(r);
    s->sentences = get64(r);
    s->thoughts = get64(r);
    if (version >= 2) {
        s->expansions = get64(r);
        s->expand_tokens = get64(r);
        s->expand_bytes = (int64_t)get64(r);
    }
}

int pol_save(const pol_t *p, uint8_t **buf, size_t *len)
{
    wbuf_t w = {0};
    put(&w, "GPOL", 4);
    put32(&w, SAVE_VERSION);
    put(&w, p->name, sizeof p->name);
    uint32_t frac_bits;
    memcpy(&frac_bits, &p->recent_frac, 4);
    uint32_t params[] = {p->sinks,
                         p->recent,
                         p->gist_rows,
                         p->merge_k,
                         p->levels,
                         p->min_gist,
                         (uint32_t)p->gist_mode,
                         (uint32_t)p->evict,
                         p->acc,
                         p->seg.cfg.train_rule,
                         p->seg.cfg.max_len,
                         frac_bits,
                         (uint32_t)p->no_mass_bias | (uint32_t)p->by_thought << 1};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        put32(&w, params[i]);
    uint32_t min_bits, lex_bits;
    memcpy(&min_bits, &p->xp.min_score, 4);
    memcpy(&lex_bits, &p->xp.lex, 4);
    const uint32_t xp[] = {p->xp.on,   p->xp.tokens, p->xp.spans, p->xp.query,
                           p->xp.hold, min_bits,     lex_bits};
    for (size_t i = 0; i < sizeof xp / sizeof xp[0]; i++)
        put32(&w, xp[i]);
    const pol_seg_t *g = &p->seg;
    uint32_t seg[] = {g->len,     g->has_text | (uint32_t)g->closed_text << 1,
                      g->term,    g->nl_run,
                      g->last_nl, g->prev_nl,
                      g->tail_len};
    for (size_t i = 0; i < sizeof seg / sizeof seg[0]; i++)
        put32(&w, seg[i]);
    put(&w, g->tail, POL_SEG_TAIL);
    put32(&w, p->open_first);
    put32(&w, p->n_spans);
    for (uint32_t i = 0; i < p->n_spans; i++) {
        const pol_span_t *s = &p->spans[i];
        put32(&w, s->first);
        put32(&w, s->last);
        put32(&w, s->gfirst);
        put32(&w, s->glast);
        put32(&w, s->tokens);
        put32(&w, s->level | (uint32_t)s->flags << 8 | (uint32_t)s->thought_end << 16);
    }
    put32(&w, p->n_pins);
    for (uint32_t i = 0; i < p->n_pins; i++) {
        put32(&w, p->pins[i][0]);
        put32(&w, p->pins[i][1]);
    }
    put32(&w, p->n_holds);
    for (uint32_t i = 0; i < p->n_holds; i++)
        for (int j = 0; j < 3; j++)
            put32(&w, p->holds[i][j]);
    put_stats(&w, &p->stats);
    if (!w.bad)
        put64(&w, fnv1a(w.p, w.n));
    if (w.bad) {
        free(w.p);
        return ERR_NOMEM;
    }
    *buf = w.p;
    *len = w.n;
    return 0;
}

int pol_load(pol_t *p, const uint8_t *buf, size_t len, err_info_t *e)
{
    if (!buf || len < 16)
        return err_set(e, ERR_FORMAT, "policy state: %zu bytes is too short", len);
    uint64_t sum;
    memcpy(&sum, buf + len - 8, 8);
    if (fnv1a(buf, len - 8) != sum)
        return err_set(e, ERR_CORRUPT, "policy state: checksum mismatch");
    rbuf_t r = {.p = buf, .n = len - 8};
    char magic[4], name[16];
    get(&r, magic, 4);
    uint32_t version = get32(&r);
    get(&r, name, sizeof name);
    if (memcmp(magic, "GPOL", 4) || version < 1 || version > SAVE_VERSION)
        return err_set(e, ERR_FORMAT, "policy state: not version 1 to %u policy state",
                       SAVE_VERSION);
    name[sizeof name - 1] = 0;
    if (strcmp(name, p->name))
        return err_set(e, ERR_FORMAT, "policy state: saved by policy '%s', restoring into '%s'",
                       name, p->name);
    uint32_t params[13];
    for (int i = 0; i < 13; i++)
        params[i] = get32(&r);
    uint32_t xp[7] = {0};
    for (int i = 0; version >= 2 && i < 7; i++)
        xp[i] = get32(&r);
    pol_seg_t g;
    pol_seg_cfg_t sc = {.train_rule = params[9] != 0, .max_len = params[10]};
    pol_seg_init(&g, &sc);
    g.len = get32(&r);
    uint32_t text_bits = get32(&r);
    g.has_text = (text_bits & 1u) != 0;
    g.closed_text = (text_bits & 2u) != 0;
    g.term = get32(&r) != 0;
    g.nl_run = get32(&r);
    g.last_nl = get32(&r) != 0;
    g.prev_nl = get32(&r) != 0;
    g.tail_len = (uint8_t)get32(&r);
    get(&r, g.tail, POL_SEG_TAIL);
    uint32_t open_first = get32(&r), n_spans = get32(&r);
    if (r.bad || g.tail_len > POL_SEG_TAIL || n_spans > (r.n - r.at) / 24)
        return err_set(e, ERR_FORMAT, "policy state: truncated or inconsistent header");
    pol_span_t *spans = n_spans ? malloc(n_spans * sizeof *spans) : NULL;
    if (n_spans && !spans)
        return err_set(e, ERR_NOMEM, "policy state: out of memory");
    for (uint32_t i = 0; i < n_spans; i++) {
        pol_span_t *s = &spans[i];
        s->first = get32(&r);
        s->last = get32(&r);
        s->gfirst = get32(&r);
        s->glast = get32(&r);
        s->tokens = get32(&r);
        uint32_t x = get32(&r);
        s->level = (uint8_t)x;
        s->flags = (uint8_t)(x >> 8);
        s->thought_end = (uint8_t)(x >> 16);
        s->pad = 0;
    }
    uint32_t n_pins = get32(&r);
    if (r.bad || n_pins > (r.n - r.at) / 8) {
        free(spans);
        return err_set(e, ERR_FORMAT, "policy state: truncated spans or pins");
    }
    uint32_t(*pins)[2] = n_pins ? malloc(n_pins * sizeof *pins) : NULL;
    if (n_pins && !pins) {
        free(spans);
        return err_set(e, ERR_NOMEM, "policy state: out of memory");
    }
    for (uint32_t i = 0; i < n_pins; i++) {
        pins[i][0] = get32(&r);
        pins[i][1] = get32(&r);
    }
    uint32_t n_holds = version >= 2 ? get32(&r) : 0;
    if (r.bad || n_holds > (r.n - r.at) / 12) {
        free(spans);
        free(pins);
        return err_set(e, ERR_FORMAT, "policy state: truncated holds");
    }
    uint32_t(*holds)[3] = n_holds ? malloc(n_holds * sizeof *holds) : NULL;
    if (n_holds && !holds) {
        free(spans);
        free(pins);
        return err_set(e, ERR_NOMEM, "policy state: out of memory");
    }
    for (uint32_t i = 0; i < n_holds; i++)
        for (int j = 0; j < 3; j++)
            holds[i][j] = get32(&r);
    pol_stats_t st;
    get_stats(&r, version, &st);
    if (r.bad || r.at != r.n) {
        free(spans);
        free(pins);
        free(holds);
        return err_set(e, ERR_FORMAT, "policy state: %s", r.bad ? "truncated" : "trailing bytes");
    }
    p->sinks = params[0];
    p->recent = params[1];
    p->gist_rows = params[2];
    p->merge_k = params[3];
    p->levels = params[4];
    p->min_gist = params[5];
    p->gist_mode = (int)params[6];
    p->evict = (int)params[7];
    p->acc = params[8] != 0;
    memcpy(&p->recent_frac, &params[11], 4);
    p->no_mass_bias = (params[12] & 1u) != 0;
    p->by_thought = (params[12] & 2u) != 0;
    if (version >= 2) {
        p->xp.on = xp[0] != 0;
        p->xp.tokens = xp[1];
        p->xp.spans = xp[2];
        p->xp.query = xp[3];
        p->xp.hold = xp[4];
        memcpy(&p->xp.min_score, &xp[5], 4);
        memcpy(&p->xp.lex, &xp[6], 4);
    }
    p->seg = g;
    p->open_first = open_first;
    free(p->spans);
    p->spans = spans;
    p->n_spans = p->cap_spans = n_spans;
    free(p->pins);
    p->pins = pins;
    p->n_pins = p->cap_pins = n_pins;
    free(p->holds);
    p->holds = holds;
    p->n_holds = p->cap_holds = n_holds;
    p->stats = st;
    return 0;
}
