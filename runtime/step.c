/*
 * runtime/step.c — one forward pass over the sessions of a step, and learned gist runs.
 *
 * Views are zero-copy: each lane's blocks become the model's chunks. Under a mask (learned
 * gist tokens see only the sinks, their sentence and earlier gists) a lane's view is the
 * runs of visible rows inside its blocks. New rows land in the batch's scratch and are
 * committed to the store after the pass.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "runtime/rt_impl.h"

/* ------------------------------------------------------------------ scratch */

#define GROW(ptr, need, elem_size, ok)                                                         \
    do {                                                                                       \
        void *t_ = realloc((ptr), (size_t)(need) * (elem_size));                               \
        if (t_)                                                                                \
            (ptr) = t_;                                                                        \
        else                                                                                   \
            (ok) = false;                                                                      \
    } while (0)

/* Room for n_items items over n_slots slots and n_want logits rows. */
static int batch_grow(rt_t *rt, rt_batch_t *b, uint32_t n_items, uint32_t n_slots, uint32_t n_want)
{
    bool ok = true;
    const size_t nl = rt->n_lane, hd = rt->hd;
    if (n_items > b->cap_items) {
        const uint32_t cap = n_items * 2;
        GROW(b->tok, cap, sizeof(int32_t), ok);
        GROW(b->pos, cap, sizeof(int32_t), ok);
        GROW(b->seq, cap, sizeof(int32_t), ok);
        GROW(b->utok, cap, sizeof(uint32_t), ok);
        GROW(b->want, cap, 1, ok);
        GROW(b->newk, (size_t)cap * nl * hd, sizeof(float), ok);
        GROW(b->newv, (size_t)cap * nl * hd, sizeof(float), ok);
        GROW(b->newlb, (size_t)cap * nl, sizeof(float), ok);
        GROW(b->newacc, (size_t)cap * nl, sizeof(float), ok);
        if (!ok)
            return ERR_NOMEM;
        b->cap_items = cap;
    }
    if (n_slots > b->cap_slots) {
        const uint32_t cap = n_slots * 2;
        GROW(b->slots, cap, sizeof *b->slots, ok);
        GROW(b->views, (size_t)cap * nl, sizeof *b->views, ok);
        if (!ok)
            return ERR_NOMEM;
        b->cap_slots = cap;
    }
    if (n_want > b->cap_want) {
        const uint32_t cap = n_want * 2;
        GROW(b->logits, (size_t)cap * rt->hp->n_vocab, sizeof(float), ok);
        if (!ok)
            return ERR_NOMEM;
        b->cap_want = cap;
    }
    return 0;
}

void rt_batch_free(rt_batch_t *b)
{
    free(b->tok);
    free(b->pos);
    free(b->seq);
    free(b->utok);
    free(b->want);
    free(b->slots);
    free(b->views);
    free(b->chunks);
    free(b->kvch);
    free(b->meta);
    free(b->newk);
    free(b->newv);
    free(b->newlb);
    free(b->newacc);
    free(b->logits);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------ views */

/* Chunks every slot's lanes need (rows too, under a mask: it may cut every row apart). */
static int size_views(rt_t *rt, rt_batch_t *b, const pol_run_t *mask, err_info_t *e)
{
    uint32_t total = 0, max_nc = 0, max_rows = 0;
    for (uint32_t k = 0; k < b->n_slots; k++)
        for (uint32_t l = 0; l < rt->n_lane; l++) {
            uint32_t rows, nc;
            int rc = kv_lane_size(rt->st, b->slots[k].s->kv, l / rt->nkv, l % rt->nkv, &rows, &nc);
            if (rc)
                return err_set(e, rc, "cannot size lane %u", l);
            total += mask ? (rows > nc ? rows : nc) : nc;
            max_nc = nc > max_nc ? nc : max_nc;
            max_rows = rows > max_rows ? rows : max_rows;
        }
    bool ok = true;
    if (max_nc > b->cap_kvch) {
        GROW(b->kvch, max_nc * 2, sizeof *b->kvch, ok);
        if (ok)
            b->cap_kvch = max_nc * 2;
    }
    if (ok && total > b->cap_chunks) {
        GROW(b->chunks, total * 2, sizeof *b->chunks, ok);
        if (ok)
            b->cap_chunks = total * 2;
    }
    if (ok && mask && max_rows > b->cap_meta) {
        GROW(b->meta, max_rows * 2, sizeof *b->meta, ok);
        if (ok)
            b->cap_meta = max_rows * 2;
    }
    return ok ? 0 : err_set(e, ERR_NOMEM, "out of memory for %u chunks", total);
}

/* Lane l of slot k's session as the model's chunks at b->chunks + *off (under mask: only
 * the visible rows), and where its new rows go. */
static int lane_view(rt_t *rt, rt_batch_t *b, uint32_t k, uint32_t l, const pol_run_t *mask,
                     bool want_acc, uint32_t *off)
{
    const rt_slot_t *sl = &b->slots[k];
    const uint32_t layer = l / rt->nkv, head = l % rt->nkv;
    uint32_t nc, rows = 0;
    int rc = kv_lane_view(rt->st, sl->s->kv, layer, head, b->kvch, b->cap_kvch, &nc);
    if (!rc && mask)
        rc = kv_lane_size(rt->st, sl->s->kv, layer, head, &rows, NULL);
    if (!rc && mask && rows)
        rc = kv_lane_read(rt->st, sl->s->kv, layer, head, 0, rows, b->meta, NULL, NULL);
    if (rc)
        return rc;
    mdl_kv_chunk_t *out = b->chunks + *off;
    uint32_t n_out = 0;
    for (uint32_t c = 0, base = 0; c < nc; base += b->kvch[c].n, c++) {
        const kv_chunk_t *kc = &b->kvch[c];
        /* a pass apart from the store scores into its own scratch, or not at all */
        float *acc = b->apart ? (b->score ? b->score + (size_t)l * b->score_stride + base : NULL)
                              : kc->attn_acc;
        if (!mask) {
            out[n_out++] = (mdl_kv_chunk_t){.n = kc->n,
                                            .type = kc->type,
                                            .k = kc->k,
                                            .v = kc->v,
                                            .bias = kc->bias,
                                            .attn_acc = acc};
            continue;
        }
        const size_t rb = ggml_row_bytes(kc->type, rt->hd);
        for (uint32_t i = 0; i < kc->n;) {
            if (!pol_run_sees(mask, &b->meta[base + i])) {
                i++;
                continue;
            }
            uint32_t j = i + 1;
            while (j < kc->n && pol_run_sees(mask, &b->meta[base + j]))
                j++;
            out[n_out++] = (mdl_kv_chunk_t){
                .n = j - i,
                .type = kc->type,
                .k = (const uint8_t *)kc->k + i * rb,
                .v = (const uint8_t *)kc->v + i * rb,
                .bias = kc->bias ? kc->bias + i : NULL,
                .attn_acc = acc ? acc + i : NULL,
            };
            i = j;
        }
    }
    const size_t rbase = (size_t)sl->first * rt->n_lane + (size_t)l * sl->n;
    mdl_kv_view_t *v = &b->views[(size_t)k * rt->n_lane + l];
    v->n_chunks = n_out;
    v->chunks = n_out ? out : NULL;
    v->new_k = b->newk + rbase * rt->hd;
    v->new_v = b->newv + rbase * rt->hd;
    v->new_logbeta = rt->pm.has_gates ? b->newlb + rbase : NULL;
    v->new_attn_acc = want_acc && !b->apart ? b->newacc + rbase : NULL;
    if (v->new_attn_acc)
        memset(v->new_attn_acc, 0, sizeof(float) * sl->n);
    *off += n_out;
    return 0;
}

typedef struct view_ctx {
    const rt_t *rt;
    const rt_batch_t *b;
} view_ctx_t;

static int view_cb(void *ctx, int seq, int layer, int kv_head, uint32_t n_new, mdl_kv_view_t *out)
{
    const view_ctx_t *vc = ctx;
    if (seq < 0 || (uint32_t)seq >= vc->b->n_slots || n_new != vc->b->slots[seq].n)
        return ERR_INTERNAL;
    *out = vc->b->views[(size_t)seq * vc->rt->n_lane + (size_t)layer * vc->rt->nkv + kv_head];
    return 0;
}

/* Items, views and one forward pass over batch b (its slots reserved already). */
static int forward(rt_t *rt, rt_batch_t *b, const pol_run_t *mask, err_info_t *e)
{
    int rc = size_views(rt, b, mask, e);
    if (rc)
        return rc;
    uint32_t off = 0;
    for (uint32_t k = 0; k < b->n_slots; k++) {
        const rt_slot_t *sl = &b->slots[k];
        for (uint32_t i = 0; i < sl->n; i++) {
            const uint32_t it = sl->first + i;
            b->tok[it] = sl->tok[i];
            b->utok[it] = (uint32_t)sl->tok[i];
            b->pos[it] = (sl->at_pos0 ? sl->pos0 : rt_positions_next(rt, sl->s)) + (int32_t)i;
            b->seq[it] = (int32_t)k;
            b->want[it] = sl->want_all || i + 1 == sl->n;
        }
        const bool acc = pol_wants_attn_acc(sl->s->pol);
        for (uint32_t l = 0; l < rt->n_lane; l++)
            if ((rc = lane_view(rt, b, k, l, mask, acc, &off)))
                return err_set(e, rc, "cannot view lane %u of a session", l);
    }
    mdl_batch_t mb = {
        .n = b->n_items, .token = b->tok, .pos = b->pos, .seq = b->seq, .want = b->want};
    view_ctx_t vc = {.rt = rt, .b = b};
    mdl_kv_io_t io = {.ctx = &vc, .view = view_cb};
    return mdl_forward(rt->m, &mb, &io, b->logits, e);
}

/* Stores slot k of b: its new rows, its tokens in the transcript; n_past and logits follow. */
static int commit(rt_t *rt, rt_batch_t *b, uint32_t k, err_info_t *e)
{
    const rt_slot_t *sl = &b->slots[k];
    rt_sess_t *s = sl->s;
    const uint32_t nl = rt->n_lane;
    const float **kp = rt->lptr, **vp = kp + nl, **lb = vp + nl, **acc = lb + nl;
    for (uint32_t l = 0; l < nl; l++) {
        const size_t rbase = (size_t)sl->first * nl + (size_t)l * sl->n;
        kp[l] = b->newk + rbase * rt->hd;
        vp[l] = b->newv + rbase * rt->hd;
        lb[l] = b->newlb + rbase;
        acc[l] = b->newacc + rbase;
    }
    kv_append_t ap = {.n = sl->n,
                      .tokens = b->utok + sl->first,
                      .k = kp,
                      .v = vp,
                      .logbeta = rt->pm.has_gates ? lb : NULL,
                      .attn_acc = pol_wants_attn_acc(s->pol) ? acc : NULL};
    int rc = kv_commit(rt->st, s->kv, &ap, e);
    if (rc) {
        kv_reserve_cancel(rt->st, s->kv);
        return rc;
    }
    s->n_past += sl->n;
    const uint32_t last = sl->want_all ? sl->want0 + sl->n - 1 : sl->want0;
    memcpy(s->logits, b->logits + (size_t)last * rt->hp->n_vocab,
           sizeof(float) * rt->hp->n_vocab);
    s->have_logits = true;
    return 0;
}

/* Appends a slot of n items to b (room made by the caller). */
static void slot_push(rt_batch_t *b, rt_sess_t *s, const int32_t *tok, uint32_t n, bool want_all)
{
    rt_slot_t *sl = &b->slots[b->n_slots++];
    *sl = (rt_slot_t){.s = s,
                      .tok = tok,
                      .first = b->n_items,
                      .n = n,
                      .want0 = b->n_want,
                      .want_all = want_all};
    b->n_items += n;
    b->n_want += want_all ? n : 1;
}

/* ------------------------------------------------------------------ learned gists */

int rt_run_masked(void *ctx, const pol_run_t *run, err_info_t *e)
{
    rt_sess_t *s = ctx;
    rt_t *rt = s->rt;
    rt_batch_t *b = &rt->masked;
    uint32_t n = run->n;
    int rc = rt_positions_fit(rt, s, &n, false, e);
    if (!rc)
        rc = kv_reserve(rt->st, s->kv, run->n, e);
    if (rc)
        return rc; /* ERR_BUDGET: the policy frees room and calls again */
    b->n_slots = b->n_items = b->n_want = 0;
    b->apart = false;
    if (batch_grow(rt, b, run->n, 1, 1)) {
        kv_reserve_cancel(rt->st, s->kv);
        return err_set(e, ERR_NOMEM, "out of memory for %u gist tokens", run->n);
    }
    slot_push(b, s, run->tokens, run->n, false); /* the prediction after the last of them */
    rc = forward(rt, b, run, e);
    if (rc) {
        kv_reserve_cancel(rt->st, s->kv);
        return rc;
    }
    rc = commit(rt, b, 0, e);
    if (!rc)
        s->gists_ran = true;
    return rc;
}

int rt_run_at(rt_t *rt, rt_sess_t *s, const int32_t *tok, uint32_t n, int32_t pos0,
              const pol_run_t *mask, float *score, uint32_t stride, err_info_t *e)
{
    rt_batch_t *b = &rt->masked;
    b->n_slots = b->n_items = b->n_want = 0;
    if (batch_grow(rt, b, n, 1, 1))
        return err_set(e, ERR_NOMEM, "out of memory for a pass of %u tokens", n);
    slot_push(b, s, tok, n, false);
    b->slots[0].at_pos0 = true;
    b->slots[0].pos0 = pos0;
    b->apart = true;
    b->score = score;
    b->score_stride = stride;
    int rc = forward(rt, b, mask, e);
    b->apart = false;
    b->score = NULL;
    return rc;
}

/* ------------------------------------------------------------------ the step */

void rt_step_begin(rt_t *rt)
{
    rt_batch_t *b = &rt->step;
    b->n_slots = b->n_items = b->n_want = 0;
}

uint32_t rt_step_slots(const rt_t *rt)
{
    return rt->step.n_slots;
}

uint32_t rt_step_taken(const rt_t *rt, uint32_t k)
{
    return rt->step.slots[k].n;
}

int rt_step_add(rt_t *rt, rt_sess_t *s, const int32_t *tok, uint32_t n, bool want_all,
                uint32_t *taken, err_info_t *e)
{
    rt_batch_t *b = &rt->step;
    *taken = 0;
    if (n == 0)
        return err_set(e, ERR_INVAL, "a slot of no tokens");
    /* the policy may close a sentence first (learned gists run), and may want fewer tokens */
    s->gists_ran = false;
    int rc = rt_pieces(rt, tok, n, e);
    uint32_t k = n;
    if (!rc)
        rc = pol_next(s->pol, rt->pieces, n, &k, e);
    rt_sess_sync(rt, s);
    if (rc)
        return rc;
    if (k == 0 || k > n)
        k = n;
    rc = rt_positions_fit(rt, s, &k, true, e);
    if (rc)
        return rc;
    if (batch_grow(rt, b, b->n_items + k, b->n_slots + 1, b->n_want + (want_all ? k : 1)))
        return err_set(e, ERR_NOMEM, "out of memory for a step of %u tokens", b->n_items + k);
    /* a chunk the budget cannot hold goes in smaller pieces, down to one token */
    err_info_t pe;
    for (;;) {
        err_clear(&pe);
        rc = pol_reserve(s->pol, k, &pe);
        rt_sess_sync(rt, s);
        if (rc != ERR_BUDGET || k == 1)
            break;
        k /= 2;
    }
    if (rc)
        return err_set(e, rc, "%s", err_msg(&pe));
    slot_push(b, s, tok, k, want_all);
    *taken = k;
    return 0;
}

int rt_step_run(rt_t *rt, err_info_t *e)
{
    rt_batch_t *b = &rt->step;
    if (b->n_slots == 0)
        return 0;
    int rc = forward(rt, b, NULL, e);
    if (rc)
        for (uint32_t k = 0; k < b->n_slots; k++)
            kv_reserve_cancel(rt->st, b->slots[k].s->kv);
    return rc;
}

int rt_step_commit(rt_t *rt, uint32_t k, err_info_t *e)
{
    return commit(rt, &rt->step, k, e);
}

const float *rt_step_logits(const rt_t *rt, uint32_t k, uint32_t i)
{
    const rt_slot_t *sl = &rt->step.slots[k];
    const uint32_t row = sl->want_all ? sl->want0 + i : sl->want0;
    return rt->step.logits + (size_t)row * rt->hp->n_vocab;
}

int rt_step_policy(rt_t *rt, uint32_t k, err_info_t *e)
{
    const rt_slot_t *sl = &rt->step.slots[k];
    const int32_t *tok = rt->step.tok + sl->first; /* the step's copy: the caller's may move */
    int rc = rt_pieces(rt, tok, sl->n, e);
    if (!rc)
        rc = pol_commit(sl->s->pol, rt->pieces, sl->n, e);
    rt_sess_sync(rt, sl->s);
    return rc;
}
