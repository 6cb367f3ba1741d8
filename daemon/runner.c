/*
 * daemon/runner.c — the policies' runner: learned gist tokens through the model under the
 * sentence mask.
 *
 * When a sentence closes, a policy with learned gists (policy/policy.h) asks the daemon to
 * run the model's gist tokens at the session's next positions, each seeing only some stored
 * rows: the sinks, the sentence, and every earlier gist. The mask is made by narrowing each
 * lane's view to the runs of visible rows inside the store's blocks (zero-copy); the gist
 * tokens' rows are committed like any others, and the session's logits follow the last of
 * them (the next text token is predicted from it, as the model was trained).
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_impl.h"

/* One masked run's views: for each lane, the runs of visible rows of its chunks. */
typedef struct masked {
    const dmn_t *d;
    mdl_kv_view_t *views; /* [n_lane] */
} masked_t;

static int masked_view(void *ctx, int seq, int layer, int kv_head, uint32_t n_new,
                       mdl_kv_view_t *out)
{
    const masked_t *m = ctx;
    if (seq != 0)
        return ERR_INTERNAL;
    *out = m->views[(size_t)layer * m->d->hp->n_head_kv + kv_head];
    return 0;
}

int dmn_sched_run_masked(dmn_t *d, dmn_session_t *s, const pol_run_t *run, err_info_t *e)
{
    const uint32_t nl = d->n_lane, nhk = d->hp->n_head_kv, hd = d->hp->head_dim, n = run->n;
    int rc = kv_reserve(d->store, s->kv, n, e);
    if (rc)
        return rc; /* ERR_BUDGET: the policy frees room and calls again */
    uint32_t max_rows = 0, max_nc = 0, total = 0;
    for (uint32_t l = 0; l < nl && !rc; l++) {
        uint32_t rows, nc;
        rc = kv_lane_size(d->store, s->kv, l / nhk, l % nhk, &rows, &nc);
        max_rows = rows > max_rows ? rows : max_rows;
        max_nc = nc > max_nc ? nc : max_nc;
        total += rows > nc ? rows : nc; /* a mask may cut every row apart */
    }
    masked_t m = {.d = d, .views = calloc(nl, sizeof *m.views)};
    mdl_kv_chunk_t *chunks = malloc(sizeof *chunks * (total ? total : 1));
    kv_chunk_t *kc = malloc(sizeof *kc * (max_nc ? max_nc : 1));
    kv_row_meta_t *meta = malloc(sizeof *meta * (max_rows ? max_rows : 1));
    float *nk = malloc(sizeof(float) * nl * n * hd), *nv = malloc(sizeof(float) * nl * n * hd);
    float *lb = malloc(sizeof(float) * nl * n), *acc = calloc((size_t)nl * n, sizeof(float));
    const float **ptr = malloc(sizeof *ptr * 4 * nl);
    int32_t *pos = malloc(sizeof(int32_t) * n);
    uint32_t *utok = malloc(sizeof(uint32_t) * n);
    if (!rc &&
        (!m.views || !chunks || !kc || !meta || !nk || !nv || !lb || !acc || !ptr || !pos || !utok))
        rc = err_set(e, ERR_NOMEM, "out of memory for %u gist tokens", n);
    const bool want_acc = pol_wants_attn_acc(s->pol);
    uint32_t off = 0;
    for (uint32_t l = 0; l < nl && !rc; l++) {
        uint32_t rows, nc;
        rc = kv_lane_size(d->store, s->kv, l / nhk, l % nhk, &rows, &nc);
        if (!rc)
            rc = kv_lane_view(d->store, s->kv, l / nhk, l % nhk, kc, max_nc ? max_nc : 1, &nc);
        if (!rc && rows)
            rc = kv_lane_read(d->store, s->kv, l / nhk, l % nhk, 0, rows, meta, NULL, NULL);
        if (rc)
            break;
        mdl_kv_view_t *v = &m.views[l];
        v->chunks = chunks + off;
        for (uint32_t c = 0, base = 0; c < nc; base += kc[c].n, c++) {
            const size_t rb = ggml_row_bytes(kc[c].type, hd);
            for (uint32_t i = 0; i < kc[c].n;) {
                if (!pol_run_sees(run, &meta[base + i])) {
                    i++;
                    continue;
                }
                uint32_t j = i + 1;
                while (j < kc[c].n && pol_run_sees(run, &meta[base + j]))
                    j++;
                chunks[off++] = (mdl_kv_chunk_t){
                    .n = j - i,
                    .type = kc[c].type,
                    .k = (const uint8_t *)kc[c].k + i * rb,
                    .v = (const uint8_t *)kc[c].v + i * rb,
                    .bias = kc[c].bias ? kc[c].bias + i : NULL,
                    .attn_acc = kc[c].attn_acc ? kc[c].attn_acc + i : NULL,
                };
                i = j;
            }
        }
        v->n_chunks = (uint32_t)(chunks + off - v->chunks);
        v->new_k = nk + (size_t)l * n * hd;
        v->new_v = nv + (size_t)l * n * hd;
        v->new_logbeta = d->pm.has_gates ? lb + (size_t)l * n : NULL;
        v->new_attn_acc = want_acc ? acc + (size_t)l * n : NULL;
    }
    if (!rc) {
        for (uint32_t i = 0; i < n; i++) {
            pos[i] = (int32_t)(s->n_past + i);
            utok[i] = (uint32_t)run->tokens[i];
        }
        mdl_batch_t mb = {.n = n, .token = run->tokens, .pos = pos}; /* logits of the last */
        mdl_kv_io_t io = {.ctx = &m, .view = masked_view};
        rc = mdl_forward(d->model, &mb, &io, s->logits, e);
    }
    if (!rc) {
        const float **k = ptr, **v = ptr + nl, **l_b = ptr + 2 * nl, **a = ptr + 3 * nl;
        for (uint32_t l = 0; l < nl; l++) {
            k[l] = nk + (size_t)l * n * hd;
            v[l] = nv + (size_t)l * n * hd;
            l_b[l] = lb + (size_t)l * n;
            a[l] = acc + (size_t)l * n;
        }
        kv_append_t ap = {.n = n,
                          .tokens = utok,
                          .k = k,
                          .v = v,
                          .logbeta = d->pm.has_gates ? l_b : NULL,
                          .attn_acc = want_acc ? a : NULL};
        rc = kv_commit(d->store, s->kv, &ap, e);
    }
    if (rc) {
        kv_reserve_cancel(d->store, s->kv);
    } else {
        s->n_past += n;
        s->have_logits = true;
    }
    free(m.views);
    free(chunks);
    free(kc);
    free(meta);
    free(nk);
    free(nv);
    free(lb);
    free(acc);
    free(ptr);
    free(pos);
    free(utok);
    return rc;
}
