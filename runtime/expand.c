/*
 * runtime/expand.c — re-expansion: compressed spans brought back from the cold transcript.
 *
 * Choosing (rt_sess_expand_auto): the last `expand_query` tokens of the transcript (the turn
 * just appended) run once more, apart from the store, over the rows held before them; the
 * attention each stored row receives from their queries lands in a scratch accumulator
 * (Quest's query-aware selection, read from the softmax itself). A compressed span's
 * attention score is the attention its rows draw per token they stand for, over the same
 * figure for all the candidates' rows together (1: as much as the average compressed span;
 * sinks and recent rows, which draw most attention anyway, are left out). When the lexical
 * score counts (expand_lex > 0), each span is then cut into the sentences it was made of (the
 * policy's segmenter over its transcript's pieces; learned gist spans stay whole), and each
 * sentence is a candidate of its own: its span's attention score, and a lexical score, the
 * BM25 of the turn's last sentences against the sentence's tokens (runtime/lexical.h: rare
 * tokens weigh more, long sentences gain little from common ones) over the candidates'
 * mean. The score mixes them (expand_lex); a span with no rows left (evicted from every lane)
 * has no attention to show, and counts as drawing the average candidate's (1): scored on its
 * lexical score alone, a sentence evicted whole that shares a few words with the turn
 * outranked the fact the turn asks about whose pooled rows drew little attention (pass keys
 * two to eight contexts deep at 12.5% of a context: 0.71 of the tuning probes right, 0.92
 * counted so, bench/memory.py --dev). Candidates reaching expand_min are expanded best
 * first, within expand_tokens and expand_spans per turn: a fact stated once comes back as
 * its sentence, not as the hundreds of tokens a merged gist stands for.
 *
 * Bringing back (expand_one): the span's tokens (gist-token ids left out) are read from the
 * transcript and prefilled again, apart from the store, over the rows held before the span,
 * at the model positions that follow the last of those rows, every held row's model position
 * renumbered by its rank first (keys turned by the model's rotation, kv_session_remap), so
 * that the model reads the distances of the rows it holds, not of the transcript's gaps. Then
 * one kv_span_replace swaps the span's rows for the raw rows in every lane. Room is made first
 * by the policy (pol_expand_room: compaction of other rows, never of the span; the hard limits
 * are the store's and never crossed). A refused expansion moves the held rows back where they
 * were (their keys turned back: equal to within float rounding) and changes nothing else.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/lexical.h"
#include "runtime/rt_impl.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_float(const void *x, const void *y)
{
    const float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

static bool is_gist_token(const rt_t *rt, uint32_t t)
{
    return rt->pm.n_gist && t >= rt->pm.gist_first && t < rt->pm.gist_first + rt->pm.n_gist;
}

/* The text tokens of transcript positions [a, a + n), gist-token ids left out: *nt of them
 * into tok and, when pos is not NULL, their positions into pos; ids is room for n ids. */
static int text_tokens(rt_t *rt, const rt_sess_t *s, uint32_t a, uint32_t n, uint32_t *ids,
                       int32_t *tok, uint32_t *pos, uint32_t *nt, err_info_t *e)
{
    *nt = 0;
    int rc = kv_transcript_read(rt->st, s->kv, a, n, ids, NULL);
    if (rc)
        return err_set(e, rc, "cannot read transcript positions %u..%u", a, a + n - 1);
    for (uint32_t i = 0; i < n; i++)
        if (!is_gist_token(rt, ids[i])) {
            if (pos)
                pos[*nt] = a + i;
            tok[(*nt)++] = (int32_t)ids[i];
        }
    return 0;
}

/* Every lane's rows: the largest lane, and metadata read into *meta ([n_lane][*stride]). */
static int read_meta(rt_t *rt, const rt_sess_t *s, kv_row_meta_t **meta, uint32_t *rows,
                     uint32_t *stride, err_info_t *e)
{
    uint32_t most = 0;
    for (uint32_t l = 0; l < rt->n_lane; l++) {
        kv_lane_size(rt->st, s->kv, l / rt->nkv, l % rt->nkv, &rows[l], NULL);
        most = rows[l] > most ? rows[l] : most;
    }
    *stride = most ? most : 1;
    *meta = malloc(sizeof **meta * rt->n_lane * *stride);
    if (!*meta)
        return err_set(e, ERR_NOMEM, "out of memory reading %u lanes", rt->n_lane);
    for (uint32_t l = 0; l < rt->n_lane; l++)
        if (rows[l])
            kv_lane_read(rt->st, s->kv, l / rt->nkv, l % rt->nkv, 0, rows[l],
                         *meta + (size_t)l * *stride, NULL, NULL);
    return 0;
}

/* The rows around [a, b]: the highest model position of the rows before it (-1: none), the
 * lowest of the rows after it (the next position: none), the rows inside it, and (when held is
 * not NULL) every distinct model position outside it, sorted, in *held ([*n_held], malloc'd). */
static int around(rt_t *rt, const rt_sess_t *s, uint32_t a, uint32_t b, float *m0, float *m1,
                  uint64_t *inside, float **held, uint32_t *n_held, err_info_t *e)
{
    uint32_t *rows = malloc(sizeof *rows * rt->n_lane), stride;
    kv_row_meta_t *meta = NULL;
    int rc =
        rows ? read_meta(rt, s, &meta, rows, &stride, e) : err_set(e, ERR_NOMEM, "out of memory");
    float *p = NULL;
    if (!rc && held && !(p = malloc(sizeof *p * ((size_t)rt->n_lane * stride + 1))))
        rc = err_set(e, ERR_NOMEM, "out of memory");
    if (rc) {
        free(rows);
        free(meta);
        return rc;
    }
    kv_session_next_mpos(rt->st, s->kv, m1);
    *m0 = -1.0f;
    *inside = 0;
    uint32_t k = 0;
    for (uint32_t l = 0; l < rt->n_lane; l++)
        for (uint32_t i = 0; i < rows[l]; i++) {
            const kv_row_meta_t *m = &meta[(size_t)l * stride + i];
            const float mp = m->pos - m->shift;
            if (m->pos < (float)a)
                *m0 = mp > *m0 ? mp : *m0;
            else if (m->pos > (float)b)
                *m1 = mp < *m1 ? mp : *m1;
            else
                (*inside)++;
            if (p && (m->pos < (float)a || m->pos > (float)b))
                p[k++] = mp;
        }
    if (p) {
        qsort(p, k, sizeof *p, cmp_float);
        uint32_t u = 0;
        for (uint32_t j = 0; j < k; j++)
            if (u == 0 || p[j] != p[u - 1])
                p[u++] = p[j];
        *held = p;
        *n_held = u;
    }
    free(meta);
    free(rows);
    return 0;
}

/* ERR_CONTEXT when the rows on both sides of [a, b] share one model position: the session
 * held more positions than the context and they were squeezed together, and no remap can
 * pull them apart. Checked before any room is made, so that a refusal changes nothing. */
static int squeezed(rt_t *rt, const rt_sess_t *s, uint32_t a, uint32_t b, err_info_t *e)
{
    float m0, m1;
    uint64_t inside;
    int rc = around(rt, s, a, b, &m0, &m1, &inside, NULL, NULL, e);
    if (!rc && m0 >= 0.0f && m0 >= m1)
        rc = err_set(e, ERR_CONTEXT,
                     "positions %u..%u: the rows before and after the span share model "
                     "position %g (squeezed to fit the model's context of %u); nothing expanded",
                     a, b, m0, rt->hp->n_ctx);
    return rc;
}

/* The knots of one kv_session_remap that renumbers every model position held outside [a, b] by
 * its rank, with n positions left out right after the rows held before the span (*k 0: they
 * are so already). Dense positions make the distances the model reads those of the rows it
 * holds: with the gaps compaction leaves, a sentence brought back two contexts deep sat some
 * 1,850 positions before the question with 400 rows between, past what the model recalls,
 * and it read the pass key wrong (bench/memory.py: pass keys 2 contexts deep at 25% of a
 * context, 0.12 with the gaps, 1.00 renumbered). The map is strictly increasing, so the knots
 * swapped undo it. ERR_CONTEXT when the held positions and the span's pass the context. */
static int plan_positions(rt_t *rt, const rt_sess_t *s, uint32_t a, uint32_t b, uint32_t n,
                          float **from, float **to, uint32_t *k, err_info_t *e)
{
    float m0, m1, next, *held = NULL;
    uint64_t inside;
    uint32_t nh = 0;
    *from = *to = NULL;
    *k = 0;
    int rc = around(rt, s, a, b, &m0, &m1, &inside, &held, &nh, e);
    if (rc)
        return rc;
    kv_session_next_mpos(rt->st, s->kv, &next);
    const uint32_t n_ctx = rt->hp->n_ctx;
    if (n_ctx && (uint64_t)nh + n + 1 > n_ctx) {
        free(held);
        return err_set(e, ERR_CONTEXT,
                       "no room in the model's context of %u: the session holds %u model "
                       "positions and the span needs %u more",
                       n_ctx, nh, n);
    }
    float *f = malloc(sizeof *f * (nh + 1)), *t = malloc(sizeof *t * (nh + 1));
    if (!f || !t) {
        free(held);
        free(f);
        free(t);
        return err_set(e, ERR_NOMEM, "out of memory for %u positions", nh);
    }
    uint32_t m = 0;
    bool moved = false;
    for (uint32_t j = 0; j < nh; j++) {
        f[m] = held[j];
        t[m] = (float)j + (held[j] > m0 ? (float)n : 0.0f);
        moved = moved || t[m] != f[m];
        m++;
    }
    if (m == 0 || next > f[m - 1]) { /* where the next token goes follows */
        f[m] = next;
        t[m] = (float)(nh + n);
        moved = moved || t[m] != f[m];
        m++;
    }
    free(held);
    if (!moved) {
        free(f);
        free(t);
        return 0;
    }
    *from = f;
    *to = t;
    *k = m;
    return 0;
}

/* Bytes the raw rows of n tokens may add: their blocks in every lane, one more for a split. */
static size_t expand_bytes(const rt_t *rt, const rt_sess_t *s, uint32_t n)
{
    const size_t B = kv_block_rows(rt->st);
    size_t blk = kv_block_bytes(rt->st, kv_store_config(rt->st)->hot_type);
    if (pol_wants_attn_acc(s->pol))
        blk += B * sizeof(float);
    return rt->n_lane * ((n + B - 1) / B + 1) * blk + 4096;
}

/* Brings positions [a, b] back as raw rows (see the top of the file); ev gets the figures. */
static int expand_one(rt_t *rt, rt_sess_t *s, uint32_t a, uint32_t b, int reason, err_info_t *e)
{
    const uint32_t nl = rt->n_lane, hd = rt->hd, span = b - a + 1;
    if (!rt->pm.rope.rotate)
        return err_set(e, ERR_UNSUPPORTED, "expansion needs the model's rotation");
    uint32_t *ids = malloc(sizeof *ids * span);
    int32_t *tok = malloc(sizeof *tok * span);
    uint32_t *tpos = malloc(sizeof *tpos * span);
    kv_row_meta_t *meta = NULL;
    const float **kp = NULL;
    uint32_t *cnt = NULL;
    float *from = NULL, *to = NULL, m0 = 0, m1 = 0;
    uint32_t knots = 0;
    uint64_t inside = 0;
    bool moved = false;
    int rc = ids && tok && tpos ? 0 : err_set(e, ERR_NOMEM, "out of memory expanding %u", span);
    uint32_t n = 0;
    if (!rc)
        rc = text_tokens(rt, s, a, span, ids, tok, tpos, &n, e);
    if (!rc && n == 0)
        rc = err_set(e, ERR_NOTFOUND, "positions %u..%u hold no text tokens", a, b);
    if (!rc && n > rt->hp->n_ctx / 2)
        rc = err_set(e, ERR_RANGE, "positions %u..%u: %u tokens, more than half the context", a, b,
                     n);
    if (!rc)
        rc = squeezed(rt, s, a, b, e);
    if (!rc)
        rc = pol_expand_room(s->pol, a, b, expand_bytes(rt, s, n), e);
    rt_sess_sync(rt, s);
    if (rc)
        goto out;

    /* model positions: right after the rows held before the span */
    rc = plan_positions(rt, s, a, b, n, &from, &to, &knots, e);
    const size_t bytes_before = kv_session_bytes(rt->st, s->kv);
    if (!rc && knots)
        rc = kv_session_remap(rt->st, s->kv, knots, from, to, &rt->pm.rope, e);
    moved = !rc && knots;
    if (!rc)
        rc = around(rt, s, a, b, &m0, &m1, &inside, NULL, NULL, e);
    const int32_t pos0 = (int32_t)floorf(m0) + 1;
    if (!rc && (float)pos0 + (float)n > m1)
        rc =
            err_set(e, ERR_INTERNAL, "expand: %u positions planned after %g, the next row is at %g",
                    n, (double)m0, (double)m1);
    if (rc)
        goto undo;

    /* the tokens again, over the rows held before the span */
    const float see[1][2] = {{-1.0f, (float)a - 0.5f}};
    pol_run_t mask = {.n = n, .tokens = tok, .n_see = 1, .see = see};
    rc = rt_run_at(rt, s, tok, n, pos0, &mask, NULL, 0, e);
    meta = malloc(sizeof *meta * (size_t)nl * n);
    kp = malloc(sizeof *kp * 3 * nl);
    cnt = malloc(sizeof *cnt * nl);
    if (!rc && (!meta || !kp || !cnt))
        rc = err_set(e, ERR_NOMEM, "out of memory expanding %u tokens", n);
    if (!rc) {
        const rt_batch_t *bt = &rt->masked;
        const float **vp = kp + nl;
        const kv_row_meta_t **mp = (const kv_row_meta_t **)(kp + 2 * nl);
        for (uint32_t l = 0; l < nl; l++) {
            cnt[l] = n;
            kp[l] = bt->newk + (size_t)l * n * hd;
            vp[l] = bt->newv + (size_t)l * n * hd;
            mp[l] = meta + (size_t)l * n;
            for (uint32_t i = 0; i < n; i++)
                meta[(size_t)l * n + i] = (kv_row_meta_t){
                    .pos = (float)tpos[i],
                    .shift = (float)tpos[i] - (float)(pos0 + (int32_t)i),
                    .mass = 1.0f,
                    .logbeta = rt->pm.has_gates ? bt->newlb[(size_t)l * n + i] : 0.0f,
                    .first = tpos[i],
                    .last = tpos[i],
                    .kind = KV_KIND_RAW};
        }
        kv_rows_t rows = {.n = cnt, .k = kp, .v = vp, .meta = mp};
        rc = kv_span_replace(rt->st, s->kv, (float)a, (float)b, &rows, e);
    }
    if (rc)
        goto undo;
    pol_event_t ev = {.reason = (uint8_t)reason,
                      .first = a,
                      .last = b,
                      .lanes = nl,
                      .rows_before = inside,
                      .rows_after = (uint64_t)n * nl,
                      .tokens = n,
                      .model_first = (uint32_t)pos0,
                      .bytes_before = bytes_before,
                      .bytes_after = kv_session_bytes(rt->st, s->kv)};
    rc = pol_expand_done(s->pol, &ev, e);
    goto out;
undo:
    if (moved) { /* back where they were */
        err_info_t e2;
        err_clear(&e2);
        kv_session_remap(rt->st, s->kv, knots, to, from, &rt->pm.rope, &e2);
    }
out:
    free(from);
    free(to);
    free(ids);
    free(tok);
    free(tpos);
    free(meta);
    free(kp);
    free(cnt);
    return rc;
}

/* The session's prediction after its last token, again, now that the rows before it changed:
 * the last token runs apart at its model position over the rows before it. */
static int refresh_logits(rt_t *rt, rt_sess_t *s, err_info_t *e)
{
    uint32_t len = 0, last;
    kv_transcript_len(rt->st, s->kv, &len);
    if (len < 2 || kv_transcript_read(rt->st, s->kv, len - 1, 1, &last, NULL))
        return 0;
    const int32_t t = (int32_t)last, pos = rt_positions_next(rt, s) - 1;
    const float see[1][2] = {{-1.0f, (float)(len - 1) - 0.5f}};
    pol_run_t mask = {.n = 1, .tokens = &t, .n_see = 1, .see = see};
    int rc = rt_run_at(rt, s, &t, 1, pos, &mask, NULL, 0, e);
    if (rc)
        return rc;
    memcpy(s->logits, rt->masked.logits, sizeof(float) * rt->hp->n_vocab);
    s->have_logits = true;
    return 0;
}

static void note(rt_expand_result_t *r, const char *what, const err_info_t *e)
{
    if (!r->note[0])
        snprintf(r->note, sizeof r->note, "%s%s%s", what, e ? ": " : "", e ? err_msg(e) : "");
}

/* Expands [a, b] and adds it to r; a refusal is noted (and returned). */
static int expand_into(rt_t *rt, rt_sess_t *s, uint32_t a, uint32_t b, int reason,
                       rt_expand_result_t *r, err_info_t *e)
{
    pol_stats_t before, after;
    pol_stats(s->pol, &before);
    int rc = expand_one(rt, s, a, b, reason, e);
    rt_sess_sync(rt, s);
    if (rc) {
        char what[64];
        snprintf(what, sizeof what, "positions %u..%u not expanded", a, b);
        note(r, what, e);
        return rc;
    }
    pol_stats(s->pol, &after);
    r->spans++;
    r->tokens += (uint32_t)(after.expand_tokens - before.expand_tokens);
    return 0;
}

/* Ends an expansion: the logits follow what came back (a failure to refresh them leaves
 * the old ones, which a later step replaces), and out gets the bytes and time it took. */
static int finish(rt_t *rt, rt_sess_t *s, rt_expand_result_t *out, size_t b0, double t0, int rc)
{
    if (out->spans) {
        err_info_t e2;
        refresh_logits(rt, s, &e2);
    }
    out->bytes = (int64_t)kv_session_bytes(rt->st, s->kv) - (int64_t)b0;
    out->ms = now_ms() - t0;
    return rc;
}

/* ------------------------------------------------------------------ on request */

int rt_sess_expand_span(rt_t *rt, rt_sess_t *s, uint32_t first, uint32_t last,
                        rt_expand_result_t *out, err_info_t *e)
{
    memset(out, 0, sizeof *out);
    const double t0 = now_ms();
    const size_t b0 = kv_session_bytes(rt->st, s->kv);
    uint32_t len = 0;
    kv_transcript_len(rt->st, s->kv, &len);
    if (first > last || last >= len)
        return err_set(e, ERR_RANGE, "expand: span %u..%u outside the %u positions", first, last,
                       len);
    pol_cspan_t *c = NULL;
    uint32_t nc = 0;
    int rc = pol_expand_spans(s->pol, first, last, &c, &nc, e);
    if (rc)
        return rc;
    if (nc == 0)
        rc = err_set(e, ERR_NOTFOUND,
                     "expand: nothing compressed in positions %u..%u (outside "
                     "the sinks and pins)",
                     first, last);
    out->candidates = nc;
    for (uint32_t i = 0; !rc && i < nc; i++) {
        err_info_t e2;
        err_clear(&e2);
        int r2 = expand_into(rt, s, c[i].first, c[i].last, POL_R_REQUEST, out, &e2);
        if (r2 && out->spans == 0) {
            if (e)
                *e = e2;
            rc = r2;
        } else if (r2) {
            break; /* what went stays; the note says what did not */
        }
    }
    free(c);
    return finish(rt, s, out, b0, t0, rc);
}

/* ------------------------------------------------------------------ on each turn */

typedef struct cand {
    pol_cspan_t c;
    double acc, mass; /* attention from the turn's queries, and the tokens its rows stand for */
    double lex;       /* BM25 of the turn's tokens against its transcript tokens */
    double score;
} cand_t;

static int cmp_score(const void *x, const void *y)
{
    const cand_t *a = x, *b = y;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->c.first > b->c.first ? -1 : a->c.first < b->c.first; /* the newer first */
}

/* The candidate holding position pos (candidates in position order), or NULL. */
static cand_t *find_cand(cand_t *c, uint32_t n, float pos)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if ((float)c[mid].c.last < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && (float)c[lo].c.first <= pos ? &c[lo] : NULL;
}

/* Attention scores: the queries of positions [q0, len) over the rows before q0. */
static int score_attention(rt_t *rt, rt_sess_t *s, uint32_t q0, uint32_t len, cand_t *c,
                           uint32_t nc, err_info_t *e)
{
    const uint32_t nq = len - q0;
    uint32_t *rows = malloc(sizeof *rows * rt->n_lane), stride = 0;
    int32_t *tok = malloc(sizeof *tok * nq);
    kv_row_meta_t *meta = NULL;
    float *acc = NULL;
    int rc = rows && tok ? read_meta(rt, s, &meta, rows, &stride, e)
                         : err_set(e, ERR_NOMEM, "out of memory scoring spans");
    if (!rc && !(acc = calloc((size_t)rt->n_lane * stride, sizeof *acc)))
        rc = err_set(e, ERR_NOMEM, "out of memory scoring spans");
    if (!rc)
        rc = kv_transcript_read(rt->st, s->kv, q0, nq, (uint32_t *)tok, NULL);
    if (!rc) {
        const float see[1][2] = {{-1.0f, (float)q0 - 0.5f}};
        pol_run_t mask = {.n = nq, .tokens = tok, .n_see = 1, .see = see};
        const int32_t pos0 = rt_positions_next(rt, s) - (int32_t)nq;
        rc = rt_run_at(rt, s, tok, nq, pos0 > 0 ? pos0 : 0, &mask, acc, stride, e);
    }
    if (!rc) {
        double all_acc = 0.0, all_mass = 0.0; /* over the candidates' rows */
        for (uint32_t l = 0; l < rt->n_lane; l++)
            for (uint32_t i = 0; i < rows[l]; i++) {
                const kv_row_meta_t *m = &meta[(size_t)l * stride + i];
                cand_t *k = m->pos < (float)q0 ? find_cand(c, nc, m->pos) : NULL;
                if (k) {
                    const float a = acc[(size_t)l * stride + i];
                    k->acc += a;
                    k->mass += m->mass;
                    all_acc += a;
                    all_mass += m->mass;
                }
            }
        const double mean = all_mass > 0 ? all_acc / all_mass : 0.0;
        for (uint32_t i = 0; i < nc; i++)
            c[i].acc = c[i].mass > 0 && mean > 0 ? c[i].acc / c[i].mass / mean : 0.0;
    }
    free(rows);
    free(tok);
    free(meta);
    free(acc);
    return rc;
}

/* Lexical scores: BM25 of the turn's distinct tokens (its last sentences) against each
 * candidate's text tokens, words[off[i] .. off[i + 1]) (runtime/lexical.h; gist-token ids left
 * out of both), over the candidates' mean. */
static int score_lexical(rt_t *rt, rt_sess_t *s, uint32_t q0, uint32_t len, cand_t *c, uint32_t nc,
                         const int32_t *words, const uint32_t *off, err_info_t *e)
{
    const uint32_t nq = len - q0;
    uint32_t *ids = malloc(sizeof *ids * nq), *cuts = malloc(sizeof *cuts * nq), nu = 0;
    int32_t *q = malloc(sizeof *q * nq);
    double *sc = malloc(sizeof *sc * nc);
    int rc = ids && cuts && q && sc ? text_tokens(rt, s, q0, nq, ids, q, NULL, &nu, e)
                                    : err_set(e, ERR_NOMEM, "out of memory scoring spans");
    /* the query: the window's last RT_EXPAND_QUERY_SENTENCES sentences (a question, and the
     * answer it opens), leaving out its first sentence, which the window may have caught
     * halfway (text before the question), and an open last one that ends in a line break or
     * a control token (a chat template's header for the reply: "<|im_start|>assistant\n"),
     * whose markers would match every turn of the chat but the one asked about */
    if (!rc && nu > 1)
        rc = rt_pieces(rt, q, nu, e);
    if (!rc && nu > 1) {
        const uint32_t nk = pol_sentence_cuts(s->pol, rt->pieces, nu, cuts);
        const pol_text_t *end = &rt->pieces[nu - 1];
        bool scaffold = true; /* the last piece: nothing but whitespace, or no text at all */
        for (uint32_t b = 0; scaffold && b < end->len; b++)
            scaffold = end->s[b] == '\n' || end->s[b] == ' ' || end->s[b] == '\t';
        /* sentence j is [S_j, S_j+1) with S = 0, cuts[0 .. nk), nu: keep [first, last] */
        const uint32_t last = nk && scaffold ? nk - 1 : nk;
        uint32_t first =
            last + 1 > RT_EXPAND_QUERY_SENTENCES ? last + 1 - RT_EXPAND_QUERY_SENTENCES : 0;
        first = first ? first : (last ? 1 : 0);
        const uint32_t from = first ? cuts[first - 1] : 0, to = last < nk ? cuts[last] : nu;
        memmove(q, q + from, sizeof *q * (to - from));
        nu = to - from;
    }
    /* (token ids are not negative: the same words read as unsigned) */
    if (!rc)
        rc = rt_bm25((const uint32_t *)q, nu, (const uint32_t *)words, off, nc, sc, e);
    if (!rc) {
        double sum = 0.0;
        for (uint32_t i = 0; i < nc; i++)
            sum += sc[i];
        for (uint32_t i = 0; i < nc; i++)
            c[i].lex = sum > 0 ? sc[i] / (sum / nc) : 0.0;
    }
    free(ids);
    free(cuts);
    free(q);
    free(sc);
    return rc;
}

/* The sentences of the candidates, each a candidate of its own with its span's attention
 * score: a merged span stands for many sentences, and the one the turn asks about is worth
 * re-prefilling without the rest (learned gist spans stay whole). *u (malloc'd) and *nu; the
 * text tokens of sentence i in (*words)[(*off)[i] .. (*off)[i + 1]) (both malloc'd), for the
 * lexical score. */
static int split_sentences(rt_t *rt, rt_sess_t *s, const cand_t *c, uint32_t nc, cand_t **u,
                           uint32_t *nu, int32_t **words, uint32_t **off, err_info_t *e)
{
    *u = NULL;
    *nu = 0;
    *words = NULL;
    *off = NULL;
    uint32_t most = 1, total = 0;
    for (uint32_t i = 0; i < nc; i++) {
        const uint32_t n = c[i].c.last - c[i].c.first + 1;
        most = n > most ? n : most;
        total += n;
    }
    uint32_t *ids = malloc(sizeof *ids * most), *tpos = malloc(sizeof *tpos * most);
    uint32_t *cuts = malloc(sizeof *cuts * most), *o = malloc(sizeof *o * (total + 1));
    int32_t *w = malloc(sizeof *w * (total ? total : 1));
    cand_t *v = malloc(sizeof *v * (total ? total : 1));
    int rc = ids && tpos && cuts && o && w && v
                 ? 0
                 : err_set(e, ERR_NOMEM, "out of memory scoring spans");
    uint32_t m = 0, base = 0; /* sentences so far, and their words */
    if (o)
        o[0] = 0;
    for (uint32_t i = 0; !rc && i < nc; i++) {
        const uint32_t n = c[i].c.last - c[i].c.first + 1;
        uint32_t nt = 0;
        rc = text_tokens(rt, s, c[i].c.first, n, ids, w + base, tpos, &nt, e);
        if (!rc && nt)
            rc = rt_pieces(rt, w + base, nt, e);
        if (rc)
            break;
        const uint32_t nk =
            c[i].c.whole || nt < 2 ? 0 : pol_sentence_cuts(s->pol, rt->pieces, nt, cuts);
        for (uint32_t k = 0; k <= nk; k++) { /* sentence k: text tokens [t0, t1) */
            const uint32_t t0 = k ? cuts[k - 1] : 0, t1 = k < nk ? cuts[k] : nt;
            v[m] = c[i];
            v[m].c.first = k ? tpos[t0] : c[i].c.first;
            v[m].c.last = k < nk ? tpos[t1] - 1 : c[i].c.last;
            if (nk)
                v[m].c.tokens = t1 - t0;
            o[++m] = base + t1;
        }
        base += nt;
    }
    free(ids);
    free(tpos);
    free(cuts);
    if (rc) {
        free(o);
        free(w);
        free(v);
        return rc;
    }
    *u = v;
    *nu = m;
    *words = w;
    *off = o;
    return 0;
}

int rt_sess_expand_auto(rt_t *rt, rt_sess_t *s, uint32_t max_tokens, int reason,
                        rt_expand_result_t *out, err_info_t *e)
{
    memset(out, 0, sizeof *out);
    const double t0 = now_ms();
    const size_t b0 = kv_session_bytes(rt->st, s->kv);
    pol_expand_cfg_t xc;
    pol_expand_config(s->pol, &xc);
    const uint32_t budget = max_tokens ? max_tokens : xc.tokens;
    uint32_t len = 0;
    kv_transcript_len(rt->st, s->kv, &len);
    const uint32_t nq = len < xc.query ? len : xc.query, q0 = len - nq;
    if (nq == 0 || q0 == 0) {
        note(out, "nothing before the turn", NULL);
        return 0;
    }
    pol_cspan_t *cs = NULL;
    uint32_t nc = 0;
    int rc = pol_expand_spans(s->pol, 0, q0 - 1, &cs, &nc, e);
    if (rc)
        return rc;
    /* a bounded number of candidates: the newest RT_EXPAND_CANDIDATES */
    const uint32_t skip = nc > RT_EXPAND_CANDIDATES ? nc - RT_EXPAND_CANDIDATES : 0;
    nc -= skip;
    cand_t *c = nc ? calloc(nc, sizeof *c) : NULL;
    if (nc && !c)
        rc = err_set(e, ERR_NOMEM, "out of memory scoring %u spans", nc);
    for (uint32_t i = 0; !rc && i < nc; i++)
        c[i].c = cs[skip + i];
    free(cs);
    out->candidates = nc;
    if (!rc && nc == 0)
        note(out, "nothing compressed", NULL);
    if (!rc && nc)
        rc = score_attention(rt, s, q0, len, c, nc, e);
    int32_t *words = NULL;
    uint32_t *off = NULL;
    if (!rc && nc && xc.lex > 0.0f) { /* (without the words, a span's sentences would tie) */
        cand_t *spans = c;
        rc = split_sentences(rt, s, spans, nc, &c, &nc, &words, &off, e);
        free(spans);
        if (!rc)
            rc = score_lexical(rt, s, q0, len, c, nc, words, off, e);
        free(words);
        free(off);
    }
    if (!rc && nc) {
        for (uint32_t i = 0; i < nc; i++) {
            const double acc = c[i].mass > 0 ? c[i].acc : 1.0; /* no rows: the average */
            c[i].score = (1.0 - xc.lex) * acc + xc.lex * c[i].lex;
        }
        qsort(c, nc, sizeof *c, cmp_score);
        uint32_t left = budget;
        bool too_long = false;
        for (uint32_t i = 0; i < nc && out->spans < xc.spans && left > 0; i++) {
            if (c[i].score < xc.min_score) {
                if (out->spans == 0 && !too_long)
                    note(out, "no compressed span scored high enough", NULL);
                break;
            }
            const uint32_t n = c[i].c.tokens ? c[i].c.tokens : c[i].c.last - c[i].c.first + 1;
            if (n > left) {
                too_long = true; /* too long for what is left of this turn's tokens */
                continue;
            }
            err_info_t e2;
            err_clear(&e2);
            const uint32_t before = out->tokens;
            if (expand_into(rt, s, c[i].c.first, c[i].c.last, reason, out, &e2) == 0)
                left = left > out->tokens - before ? left - (out->tokens - before) : 0;
            else if (e2.code == ERR_BUDGET || e2.code == ERR_CONTEXT)
                break; /* no room: the rest would not fit either */
        }
        if (out->spans == 0 && !out->note[0])
            note(out, "the relevant spans are longer than the tokens allowed per turn", NULL);
    }
    free(c);
    return finish(rt, s, out, b0, t0, rc);
}
