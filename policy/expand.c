/*
 * policy/expand.c — the policy's side of re-expansion: its parameters, which spans are
 * compressed, room for an expansion, and the books after one (the spans split around it, the
 * range raw again and held for a while, the event). The model runs in runtime/expand.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "policy/pol_impl.h"

int pol_expand_param(pol_t *p, const char *key, const char *value, err_info_t *e)
{
    static const struct {
        const char *key;
        uint32_t lo, hi;
        size_t off;
    } u32[] = {{"expand_tokens", 1, 1u << 16, offsetof(pol_expand_cfg_t, tokens)},
               {"expand_spans", 1, 256, offsetof(pol_expand_cfg_t, spans)},
               {"expand_query", 1, 4096, offsetof(pol_expand_cfg_t, query)},
               {"expand_hold", 0, 1u << 24, offsetof(pol_expand_cfg_t, hold)}};
    const char *v = value ? value : "";
    char *end;
    if (!strcmp(key, "expand")) {
        if (strcmp(v, "0") && strcmp(v, "1"))
            return err_set(e, ERR_INVAL, "policy parameter expand: '%s' is not 0 or 1", v);
        p->xp.on = v[0] == '1';
        return 0;
    }
    for (size_t i = 0; i < sizeof u32 / sizeof u32[0]; i++) {
        if (strcmp(key, u32[i].key))
            continue;
        errno = 0;
        unsigned long x = strtoul(v, &end, 10);
        if (errno || end == v || *end || v[0] == '-' || x < u32[i].lo || x > u32[i].hi)
            return err_set(e, ERR_INVAL, "policy parameter %s: '%s' is not an integer in [%u, %u]",
                           key, v, u32[i].lo, u32[i].hi);
        *(uint32_t *)((char *)&p->xp + u32[i].off) = (uint32_t)x;
        return 0;
    }
    const bool lex = !strcmp(key, "expand_lex");
    if (lex || !strcmp(key, "expand_min")) {
        errno = 0;
        float x = strtof(v, &end);
        const float hi = lex ? 1.0f : 1e6f;
        if (errno || end == v || *end || !(x >= 0.0f && x <= hi))
            return err_set(e, ERR_INVAL, "policy parameter %s: '%s' is not a number in [0, %g]",
                           key, v, (double)hi);
        *(lex ? &p->xp.lex : &p->xp.min_score) = x;
        return 0;
    }
    return 1;
}

void pol_expand_config(const pol_t *p, pol_expand_cfg_t *out)
{
    *out = p->xp;
}

bool pol_held(const pol_t *p, uint32_t first, uint32_t last, uint32_t len)
{
    for (uint32_t i = 0; i < p->n_holds; i++)
        if (len < p->holds[i][2] && p->holds[i][0] <= last && first <= p->holds[i][1])
            return true;
    return false;
}

bool pol_holds_release(pol_t *p)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < p->n_holds; i++)
        if (p->holds[i][2] == UINT32_MAX) /* a span being expanded */
            memcpy(p->holds[k++], p->holds[i], sizeof p->holds[i]);
    const bool any = k < p->n_holds;
    p->n_holds = k;
    return any;
}

int pol_expand_spans(const pol_t *p, uint32_t lo, uint32_t hi, pol_cspan_t **out, uint32_t *n,
                     err_info_t *e)
{
    *out = NULL;
    *n = 0;
    lo = lo > p->sinks ? lo : p->sinks;
    pol_cspan_t *v = NULL;
    uint16_t *live = NULL;
    uint32_t m = 0, cap_live = 0;
    const uint32_t nl = kv_lane_count(p->st), len = pol_transcript_len(p);
    for (uint32_t i = 0; i < p->n_spans; i++) {
        const pol_span_t *s = &p->spans[i];
        const uint32_t end = pol_span_end(s);
        if (s->flags & (SPAN_BUSY | POL_SPAN_GISTED_RAW) || end < lo || s->first > hi ||
            pol_held(p, s->first, end, len))
            continue;
        if (s->level == 0) { /* raw: a candidate when eviction took rows of it from some lane */
            const uint32_t cnt = end - s->first + 1;
            if (cnt > cap_live) {
                uint16_t *t = realloc(live, sizeof *t * cnt);
                if (!t) {
                    free(live);
                    free(v);
                    return err_set(e, ERR_NOMEM, "policy: out of memory listing spans");
                }
                live = t;
                cap_live = cnt;
            }
            bool lost = false;
            if (kv_transcript_read(p->st, p->sid, s->first, cnt, NULL, live) == 0)
                for (uint32_t j = 0; j < cnt && !lost; j++)
                    lost = live[j] < nl;
            if (!lost)
                continue;
        }
        uint32_t a = s->first > lo ? s->first : lo, b = end < hi ? end : hi;
        if (s->gfirst != POL_NONE) { /* learned gists stand for their whole sentence */
            a = s->first > p->sinks ? s->first : p->sinks;
            b = end;
        }
        if (a > b || pol_pinned(p, a, b))
            continue;
        if (!v && !(v = malloc((p->n_spans - i) * sizeof *v))) {
            free(live);
            return err_set(e, ERR_NOMEM, "policy: out of memory listing spans");
        }
        const uint32_t whole = end - s->first + 1, part = b - a + 1;
        v[m++] = (pol_cspan_t){.first = a,
                               .last = b,
                               .tokens = part == whole ? s->tokens : part,
                               .level = s->level,
                               .whole = s->gfirst != POL_NONE};
    }
    free(live);
    *out = v;
    *n = m;
    return 0;
}

uint32_t pol_sentence_cuts(const pol_t *p, const pol_text_t *pieces, uint32_t n, uint32_t *cuts)
{
    pol_seg_t g;
    pol_seg_init(&g, &p->seg.cfg);
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (pol_seg_push(&g, pieces[i].s, pieces[i].len) != POL_SEG_NONE && i > 0)
            cuts[m++] = i;
    return m;
}

/* Room for one more held range. */
static int holds_grow(pol_t *p, err_info_t *e)
{
    if (p->n_holds < p->cap_holds)
        return 0;
    uint32_t cap = p->cap_holds ? 2 * p->cap_holds : 8;
    uint32_t(*t)[3] = realloc(p->holds, cap * sizeof *t);
    if (!t)
        return err_set(e, ERR_NOMEM, "policy: out of memory");
    p->holds = t;
    p->cap_holds = cap;
    return 0;
}

/* Bytes to free so that `need` more fit: under the hard limits, and under the soft
 * watermarks when soft (session's and store's). */
static size_t short_of(pol_t *p, size_t need, bool soft)
{
    const size_t avail = pol_session_avail(p);
    size_t want = need > avail ? need - avail : 0;
    if (!soft)
        return want;
    size_t s_soft = 0, g_soft = 0;
    kv_session_limits(p->st, p->sid, NULL, &s_soft);
    kv_store_limits(p->st, NULL, &g_soft);
    const size_t b = pol_session_bytes(p), g = kv_store_bytes(p->st);
    if (s_soft && b + need > s_soft && b + need - s_soft > want)
        want = b + need - s_soft;
    if (g_soft && g + need > g_soft && g + need - g_soft > want)
        want = g + need - g_soft;
    return want;
}

int pol_expand_room(pol_t *p, uint32_t first, uint32_t last, size_t need, err_info_t *e)
{
    /* the span is held while room is made: neither merged nor evicted */
    int rc = holds_grow(p, e);
    if (rc)
        return rc;
    const uint32_t h = p->n_holds++;
    p->holds[h][0] = first;
    p->holds[h][1] = last;
    p->holds[h][2] = UINT32_MAX;
    for (int guard = 0; guard < 1 << 20; guard++) {
        const size_t want = short_of(p, need, true);
        if (want == 0)
            break;
        bool progress = false;
        rc = pol_step(p, want, POL_R_EXPAND, &progress, e);
        if (rc)
            break;
        /* spans expanded before for earlier turns give way to this one */
        if (!progress && !pol_holds_release(p))
            break;
    }
    p->n_holds--; /* the guard, last: steps add no holds and releases keep it */
    if (rc)
        return rc;
    if (short_of(p, need, false))
        return err_set(e, ERR_BUDGET,
                       "no room to expand positions %u..%u: %zu bytes needed, %zu left under the "
                       "hard limits after compacting (the rest is pinned or held)",
                       first, last, need, pol_session_avail(p));
    return 0;
}

int pol_expand_done(pol_t *p, pol_event_t *ev, err_info_t *e)
{
    const uint32_t a = ev->first, b = ev->last, len = pol_transcript_len(p);
    /* room first, so that nothing below can fail halfway */
    const uint32_t cap = p->n_spans + 2; /* a span split in three at most */
    pol_span_t *ns = malloc(cap * sizeof *ns);
    if (!ns)
        return err_set(e, ERR_NOMEM, "policy: out of memory");
    if (holds_grow(p, e)) {
        free(ns);
        return ERR_NOMEM;
    }
    uint32_t m = 0;
    bool placed = false;
    for (uint32_t i = 0; i < p->n_spans; i++) {
        const pol_span_t *s = &p->spans[i];
        const uint32_t end = pol_span_end(s);
        if (end < a || s->first > b) {
            ns[m++] = *s;
            continue;
        }
        if (s->first < a) { /* the part before keeps its level */
            ns[m] = *s;
            ns[m].last = a - 1;
            ns[m].gfirst = POL_NONE;
            ns[m].tokens = a - s->first;
            ns[m].thought_end = 0;
            m++;
        }
        if (!placed) {
            ns[m++] = (pol_span_t){.first = a,
                                   .last = b,
                                   .gfirst = POL_NONE,
                                   .tokens = (uint32_t)ev->tokens,
                                   .level = 0,
                                   .flags = POL_SPAN_EXPANDED};
            placed = true;
        }
        if (end > b) { /* the part after keeps its level */
            ns[m] = *s;
            ns[m].first = b + 1;
            ns[m].gfirst = POL_NONE;
            ns[m].tokens = end - b;
            m++;
        } else if (s->thought_end) {
            for (uint32_t j = m; j-- > 0;)
                if (ns[j].first == a) {
                    ns[j].thought_end = 1;
                    break;
                }
        }
    }
    free(p->spans);
    p->spans = ns;
    p->n_spans = m;
    p->cap_spans = cap;
    /* forget holds that ran out, then hold this one */
    uint32_t k = 0;
    for (uint32_t i = 0; i < p->n_holds; i++)
        if (len < p->holds[i][2])
            memcpy(p->holds[k++], p->holds[i], sizeof p->holds[i]);
    p->n_holds = k;
    p->holds[p->n_holds][0] = a;
    p->holds[p->n_holds][1] = b;
    p->holds[p->n_holds][2] = len + p->xp.hold;
    p->n_holds++;
    ev->action = POL_EXPAND;
    ev->method = POL_M_PREFILL;
    ev->level = 0;
    p->stats.expansions++;
    p->stats.expand_tokens += ev->tokens;
    p->stats.expand_bytes += (int64_t)ev->bytes_after - (int64_t)ev->bytes_before;
    pol_emit_event(p, ev);
    return 0;
}
