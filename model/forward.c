/*
 * model/forward.c — the layer loop of the forward pass (mdl_forward, model/llama.h) and
 * its scratch. Loading is in model/llama.c, attention in model/attention.c.
 *
 * One call is one OpenMP parallel region: every thread of the team runs the layer loop,
 * the products share out their rows (kern_matmul_multi_team) and the threads meet at a
 * barrier where a step needs what another thread made (the forward's own: see
 * team_barrier). Per layer:
 *
 *   thread 0: this layer's KV views       | all: norm, Q K V (+ gate input) and RoPE
 *   -- barrier --  attention, new rows into the views
 *   -- barrier --  output projection and residual
 *   -- barrier --  norm, gate and up, SwiGLU
 *   -- barrier --  down projection and residual
 *   -- barrier --
 *
 * Element-wise work rides on the products: SwiGLU and the residual run on the rows a
 * thread has just made (the done callbacks); the bias, norm and RoPE of a Q or K head on
 * the thread that completes the head. The activations of a product of a few
 * items (decode) are normalised and quantised by every thread for itself, which costs
 * less than one more barrier; larger batches share that work out (one more barrier). A
 * call too small to gain from threads (a tiny model) runs on the caller's thread alone:
 * see work_ns.
 */
#include <assert.h>
#include <linux/futex.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/dtype.h"
#include "model/attn_ops.h"
#include "model/kernels.h"
#include "model/llama_impl.h"

/* Estimated speeds of one thread, for work_ns: weight bytes streamed per ns, flops per ns
 * of the products, and of attention. Rough on purpose: they only tell a tiny model from
 * a real one. */
#define EST_BYTES_PER_NS     20.0
#define EST_FLOPS_PER_NS     40.0
#define EST_ATT_FLOPS_PER_NS 20.0

/* How long a thread that reaches a barrier first spins before it sleeps. Barriers of a
 * decode step wait a few microseconds on an idle machine; on a busy one the thread waited
 * for may not be running, and spinning on would take the core it needs (libgomp's default
 * spins some 300000 rounds: 2-thread decode ran 10x slower than 1 thread while one core
 * was busy with other work). */
#define BARRIER_SPIN_NS 20000

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* ------------------------------------------------------------------ scratch */

static int grow(void *pp, size_t elem, size_t n)
{
    void *p = realloc(*(void **)pp, elem * (n ? n : 1));
    if (!p)
        return ERR_NOMEM;
    *(void **)pp = p;
    return 0;
}

static int grow_aligned(uint8_t **p, size_t bytes)
{
    uint8_t *q = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!q)
        return ERR_NOMEM;
    free(*p);
    *p = q;
    return 0;
}

/* Widest input of a product: its quantised rows are the largest. */
static int max_cols(const mdl_t *m)
{
    const mdl_hparams_t *hp = &m->hp;
    uint32_t c = hp->n_embd;
    c = hp->n_head * hp->head_dim > c ? hp->n_head * hp->head_dim : c;
    c = hp->n_ff > c ? hp->n_ff : c;
    c = m->ret_hidden > c ? m->ret_hidden : c;
    return (int)c;
}

/* Per-item buffers for n items, per-thread buffers for the model's thread count. */
static int scratch_reserve(mdl_t *m, uint32_t n)
{
    mdl_scratch_t *s = &m->s;
    const mdl_hparams_t *hp = &m->hp;
    /* the quantised layout belongs to the kernel path, which tests may change */
    const size_t qx_row = kern_qx_bytes(max_cols(m));
    if (n > s->cap || qx_row > s->qx_row) {
        const uint32_t cap = n > s->cap ? n : s->cap;
        const size_t q_dim = (size_t)hp->n_head * hp->head_dim;
        const size_t kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
        int rc = 0;
        rc |= grow(&s->x, sizeof(float) * hp->n_embd, cap);
        rc |= grow(&s->xb, sizeof(float) * hp->n_embd, cap);
        rc |= grow(&s->q, sizeof(float) * q_dim, cap);
        rc |= grow(&s->k, sizeof(float) * kv_dim, cap);
        rc |= grow(&s->v, sizeof(float) * kv_dim, cap);
        rc |= grow(&s->att, sizeof(float) * q_dim, cap);
        rc |= grow(&s->hb, sizeof(float) * hp->n_ff, cap);
        rc |= grow(&s->hb2, sizeof(float) * hp->n_ff, cap);
        rc |= grow(&s->rh, sizeof(float) * (m->ret_hidden ? m->ret_hidden : 1), cap);
        rc |= grow(&s->rope, sizeof(float) * (hp->n_rot ? hp->n_rot : 1), cap);
        rc |= grow(&s->want, sizeof(int32_t), cap);
        rc |= grow(&s->item_slot, sizeof(int32_t), cap);
        rc |= grow(&s->item_j, sizeof(int32_t), cap);
        rc |= grow(&s->slot_items, sizeof(int32_t), cap);
        rc |= grow(&s->slot_first, sizeof(uint32_t), cap);
        rc |= grow(&s->slot_n, sizeof(uint32_t), cap);
        rc |= grow(&s->slot_seq, sizeof(int32_t), cap);
        rc |= grow(&s->views, sizeof(mdl_kv_view_t) * hp->n_head_kv, cap);
        rc |= grow_aligned(&s->qx, qx_row * cap);
        if (rc)
            return ERR_NOMEM;
        s->cap = cap;
        s->qx_row = qx_row;
        s->n_prv = 0; /* the private rows follow qx_row */
    }
    if (s->n_prv < m->n_threads) {
        const size_t nt = (size_t)m->n_threads;
        if (grow(&s->prv_x, sizeof(float) * MDL_PRV_ROWS * hp->n_embd, nt) ||
            grow_aligned(&s->prv_qx, nt * MDL_PRV_ROWS * s->qx_row))
            return ERR_NOMEM;
        s->n_prv = m->n_threads;
    }
    return kern_scratch_reserve(m->ks, m->n_threads);
}

/* Per-thread attention buffers for views of up to n_rows rows. */
static int scratch_reserve_attention(mdl_t *m, size_t n_rows)
{
    mdl_scratch_t *s = &m->s;
    size_t need = mdl_attention_scratch(m, n_rows);
    if (need <= s->thr_floats && s->n_thr >= m->n_threads)
        return 0;
    if (need > s->thr_floats) /* amortise decode, keep 64-byte multiples */
        need = need > s->thr_floats * 3 / 2 ? need : (s->thr_floats * 3 / 2 + 15) & ~(size_t)15;
    else
        need = s->thr_floats;
    float *p = aligned_alloc(64, sizeof(float) * need * (size_t)m->n_threads);
    if (!p)
        return ERR_NOMEM;
    free(s->thr);
    s->thr = p;
    s->thr_floats = need;
    s->n_thr = m->n_threads;
    return 0;
}

void mdl_scratch_free(mdl_scratch_t *s)
{
    float *fs[] = {s->x,  s->xb,  s->q,  s->k,    s->v,   s->att,
                   s->hb, s->hb2, s->rh, s->rope, s->thr, s->prv_x};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        free(fs[i]);
    free(s->qx);
    free(s->prv_qx);
    free(s->want);
    free(s->item_slot);
    free(s->item_j);
    free(s->slot_items);
    free(s->slot_first);
    free(s->slot_n);
    free(s->slot_seq);
    free(s->seq_slot);
    free(s->views);
    free((void *)s->head_rows);
    mdl_attention_plan_free(&s->plan);
}

/* ------------------------------------------------------------------ batch and views */

/* Checks the batch and groups its items by sequence; lists the items that want logits. */
static int batch_prepare(mdl_t *m, const mdl_batch_t *b, uint32_t *n_want, err_info_t *e)
{
    mdl_scratch_t *s = &m->s;
    const uint32_t n = b->n;
    uint32_t nw = 0;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t seq = b->seq ? b->seq[i] : 0;
        if (b->token[i] < 0 || (uint32_t)b->token[i] >= m->hp.n_vocab)
            return err_set(e, ERR_RANGE,
                           "batch item %u: token %d is outside the vocabulary "
                           "(%u)",
                           i, b->token[i], m->hp.n_vocab);
        if (b->pos[i] < 0)
            return err_set(e, ERR_RANGE, "batch item %u: position %d is negative", i, b->pos[i]);
        if (seq < 0 || seq >= MDL_MAX_SEQ)
            return err_set(e, ERR_RANGE, "batch item %u: sequence %d is outside [0, %d)", i, seq,
                           MDL_MAX_SEQ);
        if (b->want ? b->want[i] != 0 : i + 1 == n)
            s->want[nw++] = (int32_t)i;
    }
    /* slots in order of first appearance; counts, then offsets, then the lists */
    s->n_slots = 0;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t seq = b->seq ? b->seq[i] : 0;
        int32_t slot = s->seq_slot[seq];
        if (slot < 0) {
            slot = (int32_t)s->n_slots++;
            s->seq_slot[seq] = slot;
            s->slot_seq[slot] = seq;
            s->slot_n[slot] = 0;
        }
        s->item_slot[i] = slot;
        s->item_j[i] = (int32_t)s->slot_n[slot]++;
    }
    uint32_t first = 0;
    for (uint32_t sl = 0; sl < s->n_slots; sl++) {
        s->slot_first[sl] = first;
        first += s->slot_n[sl];
        s->seq_slot[s->slot_seq[sl]] = -1; /* leave the table clean for the next batch */
    }
    for (uint32_t i = 0; i < n; i++)
        s->slot_items[s->slot_first[s->item_slot[i]] + (uint32_t)s->item_j[i]] = (int32_t)i;
    *n_want = nw;
    return 0;
}

/* Calls the views of one layer, checks them and makes room for attention over them (the
 * new rows are written into them by mdl_attention). */
static int layer_views(mdl_t *m, int layer, const mdl_kv_io_t *io, err_info_t *e)
{
    mdl_scratch_t *s = &m->s;
    const int n_kv = (int)m->hp.n_head_kv, hd = (int)m->hp.head_dim;
    size_t max_rows = 0;
    for (uint32_t sl = 0; sl < s->n_slots; sl++) {
        const uint32_t n_new = s->slot_n[sl];
        for (int h = 0; h < n_kv; h++) {
            mdl_kv_view_t *v = &s->views[sl * (size_t)n_kv + h];
            memset(v, 0, sizeof *v);
            if (io && io->view) {
                int rc = io->view(io->ctx, s->slot_seq[sl], layer, h, n_new, v);
                if (rc)
                    return err_set(e, rc, "KV view of sequence %d, layer %d, kv-head %d: %s",
                                   s->slot_seq[sl], layer, h, err_str(rc));
            }
            size_t rows = n_new;
            for (uint32_t c = 0; c < v->n_chunks; c++) {
                const mdl_kv_chunk_t *ch = &v->chunks[c];
                if (ch->n == 0)
                    continue;
                if (ch->type != DT_F32 && ch->type != DT_F16 &&
                    !(ch->type == DT_Q8_0 && hd % QK8_0 == 0))
                    return err_set(e, ERR_UNSUPPORTED,
                                   "KV view of sequence %d, layer %d, "
                                   "kv-head %d: chunk %u has payload type %u (f32, f16 and, "
                                   "for head_dim a multiple of 32, q8_0 are read)",
                                   s->slot_seq[sl], layer, h, c, ch->type);
                if (!ch->k || !ch->v)
                    return err_set(e, ERR_INVAL,
                                   "KV view of sequence %d, layer %d, kv-head "
                                   "%d: chunk %u has no payload",
                                   s->slot_seq[sl], layer, h, c);
                rows += ch->n;
            }
            max_rows = rows > max_rows ? rows : max_rows;
        }
    }
    if (scratch_reserve_attention(m, max_rows) || mdl_attention_plan(m))
        return err_set(e, ERR_NOMEM, "out of memory for attention over %zu rows", max_rows);
    return 0;
}

/* ------------------------------------------------------------------ steps */

/* A barrier for a team of n threads: the last to arrive starts the next generation. */
typedef struct team_bar {
    atomic_uint arrived;  /* threads at the current barrier */
    atomic_uint gen;      /* barriers passed; the futex word */
    atomic_uint sleepers; /* threads asleep on gen */
    atomic_uint n;        /* team size: each thread stores it before its first barrier */
} team_bar_t;

/* The state of one call, shared by its team. */
typedef struct fwd {
    mdl_t *m;
    const mdl_kv_io_t *io;
    err_info_t *e;
    uint32_t n, n_want;
    float *logits;
    int rc; /* written by thread 0 before a barrier, read by all after it */
    team_bar_t bar;
} fwd_t;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Team. Waits until every thread of the team has called it; what each wrote before is
 * then visible to all. Spins for up to BARRIER_SPIN_NS, then sleeps on a futex. */
static void team_barrier(fwd_t *f)
{
    team_bar_t *b = &f->bar;
    const unsigned n = atomic_load_explicit(&b->n, memory_order_relaxed);
    if (n <= 1)
        return;
    const unsigned gen = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->arrived, 1) + 1 == n) {
        atomic_store(&b->arrived, 0);
        atomic_fetch_add(&b->gen, 1);
        if (atomic_load(&b->sleepers))
            syscall(SYS_futex, (unsigned *)&b->gen, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
        return;
    }
    const double t0 = now_ns();
    for (unsigned i = 1; atomic_load_explicit(&b->gen, memory_order_acquire) == gen; i++) {
        cpu_relax();
        if (i % 64 == 0 && now_ns() - t0 > BARRIER_SPIN_NS) {
            atomic_fetch_add(&b->sleepers, 1);
            while (atomic_load(&b->gen) == gen)
                syscall(SYS_futex, (unsigned *)&b->gen, FUTEX_WAIT_PRIVATE, gen, NULL, NULL, 0);
            atomic_fetch_sub(&b->sleepers, 1);
            return;
        }
    }
}

/* What the done callbacks of a product need; each thread passes its own. */
typedef struct step {
    fwd_t *f;
    const mdl_layer_t *L;
} step_t;

/* out = x / rms(x) * w for one row of d. Sum of squares in double, as ggml. */
static void rms_norm_row(const float *x, const float *w, float *out, int d, float eps)
{
    double ss = 0.0;
    for (int c = 0; c < d; c++)
        ss += (double)x[c] * x[c];
    const float scale = (float)(1.0 / sqrt(ss / d + eps));
    for (int c = 0; c < d; c++)
        out[c] = x[c] * scale * w[c];
}

/* The quantised layouts the products of these matrices read (kern_type_qx), 0 for none. */
static unsigned any_quant(const kern_mat_t *mats, int n_mats)
{
    unsigned layouts = 0;
    for (int i = 0; i < n_mats; i++)
        layouts |= kern_type_qx(mats[i].type);
    return layouts;
}

/*
 * Team. The activations of a product for the calling thread: rows idx[0..n) of X [.][d]
 * (rows 0..n when idx is NULL), normalised with w when w is set (d is n_embd then),
 * quantised into the layouts `quant` (kern_type_qx) when it is not 0.
 * Up to MDL_PRV_ROWS rows, each thread makes its own copy; more rows are shared out into
 * s.xb (normalised rows; must not be an input) and s.qx, and the team meets at the
 * barrier of that omp for.
 */
static kern_act_t prepare(fwd_t *f, const float *X, const int32_t *idx, uint32_t n, int d,
                          const float *w, unsigned quant)
{
    mdl_t *m = f->m;
    mdl_scratch_t *s = &m->s;
    const float eps = m->hp.rms_eps;
    const size_t qxb = quant ? kern_qx_bytes(d) : 0; /* <= s.qx_row */
    kern_act_t a = {.x = X, .qx = NULL, .n_cols = d, .n_b = (int)n};
    if (!w && !idx && !quant)
        return a; /* the rows as they are */
    assert(!(w || idx) || d == (int)m->hp.n_embd);
    if (n <= MDL_PRV_ROWS) {
        const int t = omp_get_thread_num();
        float *xo = s->prv_x + (size_t)t * MDL_PRV_ROWS * m->hp.n_embd;
        uint8_t *qo = s->prv_qx + (size_t)t * MDL_PRV_ROWS * s->qx_row;
        for (uint32_t i = 0; i < n; i++) {
            const float *xi = X + (size_t)(idx ? (uint32_t)idx[i] : i) * d;
            if (w || idx) {
                if (w)
                    rms_norm_row(xi, w, xo + (size_t)i * d, d, eps);
                else
                    memcpy(xo + (size_t)i * d, xi, sizeof(float) * d);
                xi = xo + (size_t)i * d;
            }
            if (quant)
                kern_qx_make_some(xi, d, qo + i * qxb, quant);
        }
        if (w || idx)
            a.x = xo;
        a.qx = quant ? qo : NULL;
        return a;
    }
#pragma omp for schedule(static) nowait
    for (uint32_t i = 0; i < n; i++) {
        const float *xi = X + (size_t)(idx ? (uint32_t)idx[i] : i) * d;
        if (w || idx) {
            if (w)
                rms_norm_row(xi, w, s->xb + (size_t)i * d, d, eps);
            else
                memcpy(s->xb + (size_t)i * d, xi, sizeof(float) * d);
            xi = s->xb + (size_t)i * d;
        }
        if (quant)
            kern_qx_make_some(xi, d, s->qx + i * qxb, quant);
    }
    team_barrier(f);
    if (w || idx)
        a.x = s->xb;
    a.qx = quant ? s->qx : NULL;
    return a;
}

static inline float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* Finishes head h of every item's rows of dim (Q or K): adds the bias (qwen2), normalises
 * the head (qwen3), rotates it at the item's angles in the model's pairing. */
static void head_finish(const mdl_t *m, uint32_t n, float *x, int dim, int h, const float *bias,
                        const float *norm)
{
    const int hd = (int)m->hp.head_dim, n_rot = (int)m->hp.n_rot;
    for (uint32_t i = 0; i < n; i++) {
        float *v = x + (size_t)i * dim + (size_t)h * hd;
        if (bias)
            for (int d = 0; d < hd; d++)
                v[d] += bias[h * hd + d];
        if (norm)
            rms_norm_row(v, norm, v, hd, m->hp.rms_eps);
        mdl_rope_apply(&m->rope, m->s.rope + (size_t)i * n_rot, v);
    }
}

/* Rows [r0, r1) of the Q (kv == false) or K rows are made: counts them per head and finishes
 * the heads this completes. A head's pairs may lie in rows other threads make (the halves
 * of a NEOX pair are head_dim/2 apart), so a head is finished by the thread that makes its
 * last rows; the count's acquire-release makes the others' rows visible to it. */
static void heads_done(const fwd_t *f, const mdl_layer_t *L, bool kv, int r0, int r1)
{
    const mdl_t *m = f->m;
    const int hd = (int)m->hp.head_dim;
    const int n_h = (int)(kv ? m->hp.n_head_kv : m->hp.n_head), dim = n_h * hd;
    _Atomic int *cnt = m->s.head_rows + (kv ? m->hp.n_head : 0);
    for (int h = r0 / hd; r0 < r1 && h <= (r1 - 1) / hd; h++) {
        const int a = r0 > h * hd ? r0 : h * hd, b = r1 < (h + 1) * hd ? r1 : (h + 1) * hd;
        if (atomic_fetch_add_explicit(&cnt[h], b - a, memory_order_acq_rel) + (b - a) < hd)
            continue;
        atomic_store_explicit(&cnt[h], 0, memory_order_relaxed);
        head_finish(m, f->n, kv ? m->s.k : m->s.q, dim, h, kv ? L->bk : L->bq,
                    kv ? L->k_norm : L->q_norm);
    }
}

/* Q, K, V (and the retention gate's hidden layer) of rows that are ready. */
static void qkv_done(void *ctx, const int *r0, const int *r1)
{
    const step_t *st = ctx;
    const fwd_t *f = st->f;
    const mdl_t *m = f->m;
    const mdl_hparams_t *hp = &m->hp;
    const mdl_scratch_t *s = &m->s;
    heads_done(f, st->L, false, r0[0], r1[0]);
    heads_done(f, st->L, true, r0[1], r1[1]);
    if (st->L->bv) {
        const size_t kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
        for (uint32_t i = 0; i < f->n; i++)
            for (int r = r0[2]; r < r1[2]; r++)
                s->v[i * kv_dim + r] += st->L->bv[r];
    }
    if (!m->has_retention)
        return;
    const int nh = (int)m->ret_hidden;
    for (uint32_t i = 0; i < f->n; i++)
        for (int r = r0[3]; r < r1[3]; r++)
            s->rh[(size_t)i * nh + r] = silu(s->rh[(size_t)i * nh + r] + st->L->ret_in_b[r]);
}

/* x += xb on rows that are ready (output and down projections). */
static void residual_done(void *ctx, const int *r0, const int *r1)
{
    const fwd_t *f = ((const step_t *)ctx)->f;
    const mdl_scratch_t *s = &f->m->s;
    const size_t d = f->m->hp.n_embd;
    for (uint32_t i = 0; i < f->n; i++)
        for (int r = r0[0]; r < r1[0]; r++)
            s->x[i * d + r] += s->xb[i * d + r];
}

/* hb = silu(gate) * up on rows that are ready (the same rows of both). */
static void swiglu_done(void *ctx, const int *r0, const int *r1)
{
    const fwd_t *f = ((const step_t *)ctx)->f;
    const mdl_scratch_t *s = &f->m->s;
    const size_t d = f->m->hp.n_ff;
    for (uint32_t i = 0; i < f->n; i++)
        kern_swiglu(s->hb + i * d + r0[0], s->hb2 + i * d + r0[0], r1[0] - r0[0]);
}

static kern_mat_t mat(const mdl_mat_t *w, float *y)
{
    return (kern_mat_t){.type = w->type, .W = w->data, .n_rows = w->n_rows, .Y = y};
}

/* Team. One product of prepared activations, then the team meets. */
static void product(step_t *st, int n_mats, const kern_mat_t *mats, const kern_act_t *a,
                    kern_done_fn done)
{
    kern_matmul_multi_team(n_mats, mats, a, st->f->m->ks, done, st);
    team_barrier(st->f);
}

/* Team. Layer l; 0, or the error every thread of the team returns. */
static int layer_run(fwd_t *f, uint32_t l)
{
    mdl_t *m = f->m;
    mdl_scratch_t *s = &m->s;
    const mdl_layer_t *L = &m->layers[l];
    const uint32_t n = f->n;
    const int n_embd = (int)m->hp.n_embd, q_dim = (int)(m->hp.n_head * m->hp.head_dim);
    step_t st = {.f = f, .L = L};

    /* attention block: the views come while the others start on Q, K and V */
    if (omp_get_thread_num() == 0) {
        int rc = layer_views(m, (int)l, f->io, f->e);
        if (rc)
            f->rc = rc;
    }
    kern_mat_t qkv[4] = {mat(&L->wq, s->q), mat(&L->wk, s->k), mat(&L->wv, s->v),
                         mat(&L->ret_in, s->rh)};
    const int n_qkv = m->has_retention ? 4 : 3;
    kern_act_t a = prepare(f, s->x, NULL, n, n_embd, L->attn_norm, any_quant(qkv, n_qkv));
    product(&st, n_qkv, qkv, &a, qkv_done);
    const int rc = f->rc;
    if (rc)
        return rc;
    mdl_attention(m, (int)l);
    team_barrier(f);
    kern_mat_t o = mat(&L->wo, s->xb);
    a = prepare(f, s->att, NULL, n, q_dim, NULL, any_quant(&o, 1));
    product(&st, 1, &o, &a, residual_done);

    /* feed-forward block */
    kern_mat_t gu[2] = {mat(&L->w_gate, s->hb), mat(&L->w_up, s->hb2)};
    a = prepare(f, s->x, NULL, n, n_embd, L->ffn_norm, any_quant(gu, 2));
    product(&st, 2, gu, &a, swiglu_done);
    kern_mat_t d = mat(&L->w_down, s->xb);
    a = prepare(f, s->hb, NULL, n, (int)m->hp.n_ff, NULL, any_quant(&d, 1));
    product(&st, 1, &d, &a, residual_done);
    return 0;
}

/* Team. Logits of the rows that want them (final norm on the way). */
static void output_run(fwd_t *f)
{
    mdl_t *m = f->m;
    kern_mat_t o = mat(&m->out, f->logits);
    kern_act_t a =
        prepare(f, m->s.x, m->s.want, f->n_want, (int)m->hp.n_embd, m->out_norm, any_quant(&o, 1));
    kern_matmul_multi_team(1, &o, &a, m->ks, NULL, NULL);
}

/* ------------------------------------------------------------------ forward */

/* Estimated one-thread nanoseconds of one layer of batch b: weights streamed, product
 * flops, attention over the rows before each item (its position, at most). */
static double work_ns(const mdl_t *m, const mdl_batch_t *b)
{
    const mdl_hparams_t *hp = &m->hp;
    double att = 0;
    for (uint32_t i = 0; i < b->n; i++)
        att += (double)b->pos[i] + 1;
    att *= 4.0 * hp->n_head * hp->head_dim;
    return m->layer_bytes / EST_BYTES_PER_NS + b->n * 2.0 * m->layer_params / EST_FLOPS_PER_NS +
           att / EST_ATT_FLOPS_PER_NS;
}

int mdl_forward(mdl_t *m, const mdl_batch_t *b, const mdl_kv_io_t *io, float *logits, err_info_t *e)
{
    const uint32_t n = b->n;
    if (n == 0)
        return 0;
    if (!b->token || !b->pos)
        return err_set(e, ERR_INVAL, "batch of %u items without tokens or positions", n);
    if (scratch_reserve(m, n))
        return err_set(e, ERR_NOMEM, "out of memory for a batch of %u items", n);
    uint32_t n_want = 0;
    int rc = batch_prepare(m, b, &n_want, e);
    if (rc)
        return rc;
    if (n_want && !logits)
        return err_set(e, ERR_INVAL, "%u items want logits but no logits buffer was given", n_want);

    mdl_scratch_t *s = &m->s;
    const mdl_hparams_t *hp = &m->hp;
    const int n_embd = (int)hp->n_embd;

    /* cos/sin of every item's angles, computed in double */
    for (uint32_t i = 0; i < n; i++)
        mdl_rope_angles(&m->rope, (double)b->pos[i], s->rope + (size_t)i * hp->n_rot);
    for (uint32_t i = 0; i < n; i++)
        kern_get_row(m->tok_embd_type, m->tok_embd, n_embd, b->token[i], s->x + (size_t)i * n_embd);

    fwd_t f = {.m = m, .io = io, .e = e, .n = n, .n_want = n_want, .logits = logits};
    const bool par = m->n_threads > 1 && work_ns(m, b) >= m->par_min_ns;
#pragma omp parallel num_threads(m->n_threads) if (par)
    {
        /* OpenBLAS, called inside, must not start threads of its own: it does not when
         * the region is active, and with this when the team is the caller alone */
        omp_set_num_threads(1);
        atomic_store_explicit(&f.bar.n, (unsigned)omp_get_num_threads(), memory_order_relaxed);
        int trc = 0;
        for (uint32_t l = 0; l < hp->n_layer && !trc; l++)
            trc = layer_run(&f, l);
        if (!trc && n_want)
            output_run(&f);
    }
    return f.rc;
}
