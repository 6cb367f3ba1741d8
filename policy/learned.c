/*
 * policy/learned.c — closing a sentence, and the learned gists made right after it: the
 * model's gist tokens run through the caller's runner under the sentence mask, their rows
 * committed as tokens at the positions the model was trained with, then one store edit that
 * drops the sentence's raw rows and relabels the gist rows as learned gists.
 */
#include <stdlib.h>
#include <string.h>

#include "policy/pol_impl.h"

/* Runs the learned gist tokens of span idx and replaces its raw rows with them. */
static int learned_gist(pol_t *p, uint32_t idx, err_info_t *e)
{
    const uint32_t ng = p->model.n_gist, nl = kv_lane_count(p->st), hd = kv_head_dim(p->st);
    const uint32_t nh = pol_n_head_kv(p);
    pol_event_t ev = {.action = POL_GIST,
                      .method = POL_M_LEARNED,
                      .reason = POL_R_SENTENCE,
                      .level = 1,
                      .first = p->spans[idx].first,
                      .last = p->spans[idx].last,
                      .tokens = p->spans[idx].tokens,
                      .bytes_before = pol_session_bytes(p)};
    int32_t tokens[64];
    for (uint32_t j = 0; j < ng; j++)
        tokens[j] = (int32_t)(p->model.gist_first + j);

    /* the mask: the sinks, the sentence, every earlier gist */
    uint32_t n_see = 0;
    for (uint32_t i = 0; i < idx; i++)
        n_see += (p->spans[i].flags & POL_SPAN_GISTED_RAW) != 0;
    float(*see)[2] = malloc((n_see + 2) * sizeof *see);
    if (!see)
        return err_set(e, ERR_NOMEM, "policy: out of memory");
    n_see = 0;
    uint32_t gs = p->model.gist_sinks;
    if (gs) {
        see[n_see][0] = 0.0f;
        see[n_see++][1] = (float)(gs - 1);
    }
    see[n_see][0] = (float)p->spans[idx].first;
    see[n_see++][1] = (float)p->spans[idx].last;
    for (uint32_t i = 0; i < idx; i++)
        if (p->spans[i].flags & POL_SPAN_GISTED_RAW) {
            see[n_see][0] = (float)p->spans[i].gfirst;
            see[n_see++][1] = (float)p->spans[i].glast;
        }
    pol_run_t run = {.n = ng,
                     .tokens = tokens,
                     .n_see = n_see,
                     .see = (const float(*)[2])see,
                     .see_gists = true};
    p->spans[idx].flags |= SPAN_BUSY;
    int rc;
    for (;;) {
        err_info_t e2;
        err_clear(&e2);
        rc = p->runner.run(p->runner.ctx, &run, &e2);
        if (rc != ERR_BUDGET) {
            if (rc && e)
                *e = e2;
            break;
        }
        size_t want = kv_block_bytes(p->st, kv_store_config(p->st)->hot_type);
        bool progress = false;
        rc = pol_step(p, want, POL_R_BUDGET, &progress, e);
        if (rc)
            break;
        if (!progress) {
            if (e)
                *e = e2;
            rc = err_prefix(e, "policy '%s': no room for the gist tokens: ", p->name);
            break;
        }
    }
    free(see);
    pol_span_t *s = &p->spans[idx];
    s->flags &= (uint8_t)~SPAN_BUSY;
    if (rc)
        return rc;
    uint32_t len = pol_transcript_len(p);
    s->gfirst = len - ng;
    s->glast = len - 1;
    s->level = 1;
    p->stats.gist_tokens += ng;
    if (pol_pinned(p, s->first, s->last) || s->last < p->sinks) {
        s->flags |= POL_SPAN_GISTED_RAW; /* pinned, or in the sinks: its raw rows stay */
        return 0;
    }

    /* one edit per lane: the sentence's raw rows and the raw-kind gist rows go, the gist
     * rows come back as learned gists */
    uint32_t lo = s->first > p->sinks ? s->first : p->sinks;
    kv_row_meta_t *meta = malloc((size_t)nl * ng * sizeof *meta);
    float *k = malloc((size_t)nl * ng * hd * sizeof *k),
          *v = malloc((size_t)nl * ng * hd * sizeof *v);
    const float **kp = malloc(nl * sizeof *kp), **vp = malloc(nl * sizeof *vp);
    const kv_row_meta_t **mp = malloc(nl * sizeof *mp);
    uint32_t *n = calloc(nl, sizeof *n), *at = calloc(nl, sizeof *at);
    float *acc = malloc((size_t)nl * ng * sizeof *acc);
    rc = meta && k && v && kp && vp && mp && n && at && acc ? 0 : ERR_NOMEM;
    if (rc)
        err_set(e, rc, "policy: out of memory");
    for (uint32_t l = 0; !rc && l < nl; l++) {
        uint32_t rows;
        rc = pol_lane_meta(p, l, &rows, e);
        if (rc)
            break;
        uint32_t a = pol_lower_pos(p->meta, rows, (float)lo),
                 g = pol_lower_pos(p->meta, rows, (float)s->gfirst);
        ev.rows_before += g - a;
        at[l] = a;
        n[l] = rows - g < ng ? rows - g : ng;
        kp[l] = k + (size_t)l * ng * hd;
        vp[l] = v + (size_t)l * ng * hd;
        mp[l] = meta + (size_t)l * ng;
        if (n[l] == 0)
            continue;
        rc = kv_lane_read(p->st, p->sid, l / nh, l % nh, g, n[l], meta + (size_t)l * ng,
                          k + (size_t)l * ng * hd, v + (size_t)l * ng * hd);
        for (uint32_t j = 0; !rc && j < n[l]; j++) {
            kv_row_meta_t *m = &meta[(size_t)l * ng + j];
            acc[(size_t)l * ng + j] = m->attn;
            m->attn = 0.0f;
            m->kind = KV_KIND_GIST;
            m->level = 1;
            m->first = s->first;
            m->last = s->last;
        }
        ev.rows_after += n[l];
        ev.lanes++;
    }
    if (!rc) {
        kv_rows_t rows = {.n = n, .k = kp, .v = vp, .meta = mp};
        err_info_t e2;
        err_clear(&e2);
        rc = kv_span_replace(p->st, p->sid, (float)lo, (float)s->glast, &rows, &e2);
        if (rc == 0 && p->acc) {
            for (uint32_t l = 0; l < nl; l++)
                if (n[l])
                    pol_acc_write(p, l, at[l], n[l], acc + (size_t)l * ng);
        } else if (rc == ERR_BUDGET) {
            /* no room to relabel: drop the raw rows only; the gist rows stay raw-kind */
            memset(n, 0, nl * sizeof *n);
            rc = lo <= s->last ? kv_span_replace(p->st, p->sid, (float)lo, (float)s->last, &rows, e)
                               : 0;
            s->flags |= POL_SPAN_GISTED_RAW;
        } else if (rc && e) {
            *e = e2;
        }
    }
    free(meta);
    free(k);
    free(v);
    free(kp);
    free(vp);
    free(mp);
    free(n);
    free(at);
    free(acc);
    if (rc)
        return rc;
    ev.bytes_after = pol_session_bytes(p);
    pol_emit_event(p, &ev);
    return 0;
}

int pol_close_sentence(pol_t *p, uint32_t last, bool thought, err_info_t *e)
{
    if (p->open_first == POL_NONE || last < p->open_first || last == POL_NONE) {
        if (thought && p->n_spans && !p->spans[p->n_spans - 1].thought_end) {
            p->spans[p->n_spans - 1].thought_end = 1;
            p->stats.thoughts++;
        }
        return 0;
    }
    pol_span_t s = {.first = p->open_first,
                    .last = last,
                    .gfirst = POL_NONE,
                    .tokens = last - p->open_first + 1,
                    .thought_end = thought};
    if (pol_span_push(p, &s))
        return err_set(e, ERR_NOMEM, "policy: out of memory");
    p->open_first = POL_NONE;
    p->stats.sentences++;
    p->stats.thoughts += thought;
    if (p->gist_mode != POL_GIST_LEARNED)
        return 0;
    if (!p->model.gist_thought)
        return learned_gist(p, p->n_spans - 1, e);
    if (!thought)
        return 0; /* thought gists: the thought's sentences stay raw until it closes */
    /* the thought's raw sentences become one span, gisted as a whole */
    uint32_t i0 = p->n_spans - 1;
    while (i0 > 0 && !p->spans[i0 - 1].thought_end && p->spans[i0 - 1].level == 0 &&
           p->spans[i0 - 1].gfirst == POL_NONE && !(p->spans[i0 - 1].flags & SPAN_BUSY))
        i0--;
    pol_span_t *a = &p->spans[i0];
    for (uint32_t i = i0 + 1; i < p->n_spans; i++)
        a->tokens += p->spans[i].tokens;
    a->last = p->spans[p->n_spans - 1].last;
    a->thought_end = 1;
    p->n_spans = i0 + 1;
    return learned_gist(p, i0, e);
}

bool pol_run_sees(const pol_run_t *r, const kv_row_meta_t *m)
{
    if (r->see_gists && m->kind != KV_KIND_RAW)
        return true;
    for (uint32_t i = 0; i < r->n_see; i++)
        if (m->pos >= r->see[i][0] && m->pos <= r->see[i][1])
            return true;
    return false;
}
