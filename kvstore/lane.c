/*
 * kvstore/lane.c — blocks, rows and the lane edit: the one way rows are removed, inserted
 * or converted inside a lane.
 *
 * An edit deletes old rows and inserts groups of rows (new f32 data, or old rows converted
 * to another type) before given old rows. It runs in two steps so that several lanes can be
 * edited all-or-nothing:
 *   plan + prepare: everything that can fail. New blocks for the inserted groups; "split"
 *     blocks for the live rows of a block that come after an insertion point inside it
 *     (they must follow the inserted rows); private copies of shared blocks the edit may
 *     write; a larger block array when the lane needs one. The lane is not touched.
 *   commit: cannot fail. Swaps in the private copies, marks deleted and split-off rows
 *     dead, splices the new blocks into the block list, then repacks: blocks left with no
 *     live row are freed, and every run of same-type blocks from the first touched one is
 *     packed (rows moved forward to fill holes, order kept), freeing the blocks emptied.
 * So an edit allocates at most the inserted rows plus one block per insertion point, and
 * the memory freed rows held goes back to the arena when the call returns (a block carved
 * from a payload run gives its slot back to the run, which goes when it empties: kv_impl.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kvstore/kv_impl.h"

static size_t align8(size_t x)
{
    return (x + 7) & ~(size_t)7;
}

static size_t row_bytes(const kv_store_t *st, uint32_t type)
{
    return st->row_bytes[kv_tier(type)];
}

size_t kv_acc_bytes(const kv_store_t *st)
{
    return kv_charge(st->B * sizeof(float));
}

/* Lays out a block's header and metadata arrays around payload pl. */
static kv_block_t *block_init(const kv_store_t *st, kv_block_t *b, uint32_t type, uint8_t *pl,
                              kv_run_t *run)
{
    memset(b, 0, sizeof *b);
    b->refs = 1;
    b->type = type;
    b->run = run;
    b->k = pl;
    b->v = pl + st->payload_bytes[kv_tier(type)] / 2;
    size_t B = st->B;
    uint8_t *m = (uint8_t *)b + align8(sizeof *b);
    b->pos = (float *)m;
    b->mass = b->pos + B;
    b->bias = b->mass + B;
    b->logbeta = b->bias + B;
    b->shift = b->logbeta + B;
    b->first = (uint32_t *)(b->shift + B);
    b->last = b->first + B;
    b->kind = (uint8_t *)(b->last + B);
    b->level = b->kind + B;
    return b;
}

kv_block_t *kv_block_new(kv_store_t *st, kv_session_t *s, uint32_t type)
{
    int t = kv_tier(type);
    kv_block_t *b = kv_mem_alloc(st, s, st->hdr_bytes);
    if (!b)
        return NULL;
    uint8_t *pl = kv_mem_alloc_aligned(st, s, st->payload_bytes[t]);
    if (!pl) {
        kv_mem_free(st, s, b, st->hdr_bytes);
        return NULL;
    }
    return block_init(st, b, type, pl, NULL);
}

/* ---- payload runs (kv_impl.h) ---- */

static size_t slot_charge(const kv_store_t *st, uint32_t tier)
{
    return kv_charge_aligned(st->payload_bytes[tier]);
}

static size_t run_charge(const kv_store_t *st, uint32_t tier, uint32_t slots)
{
    return kv_charge(sizeof(kv_run_t)) + kv_charge_aligned(slots * st->payload_bytes[tier]);
}

size_t kv_run_free_bytes(const kv_store_t *st, const kv_run_t *r, bool owner)
{
    /* never negative: slots is a power of two, so slots x a size class is a size class */
    uint32_t held = r->used + (owner ? (uint32_t)__builtin_popcount(r->lent) : 0);
    return run_charge(st, r->tier, r->n_slot) - held * slot_charge(st, r->tier);
}

/* A limit holds s: its own or the store's, hard or soft. */
static bool limited(const kv_store_t *st, const kv_session_t *s)
{
    return s->hard || s->soft || st->hard || st->soft;
}

uint32_t kv_run_slots(const kv_store_t *st, const kv_session_t *s, const kv_lane_t *ln,
                      uint32_t want)
{
    if (limited(st, s))
        return 1;
    uint32_t n = ln->n_blk / 2 > want ? ln->n_blk / 2 : want, p = 1;
    while (2 * p <= n && p < KV_RUN_MAX)
        p *= 2;
    return p;
}

static bool open_room(const kv_lane_t *ln, int tier)
{
    return ln->open && ln->open->tier == (uint32_t)tier && ln->open->next < ln->open->n_slot;
}

void kv_lane_set_open(kv_lane_t *ln, kv_run_t *r)
{
    if (ln->open && ln->open != r)
        ln->open->lane = NULL;
    ln->open = r;
    if (r)
        r->lane = ln;
}

size_t kv_carve_need(const kv_store_t *st, const kv_lane_t *ln, uint32_t type, uint32_t k,
                     uint32_t slots)
{
    int t = kv_tier(type);
    uint32_t room = open_room(ln, t) ? ln->open->n_slot - ln->open->next : 0;
    uint32_t rest = k > room ? k - room : 0;
    size_t hdr = kv_charge(st->hdr_bytes);
    if (slots < 2)
        return (k - rest) * hdr + rest * st->block_charge[t];
    return k * hdr + (rest + slots - 1) / slots * run_charge(st, t, slots);
}

static kv_run_t *run_new(kv_store_t *st, kv_session_t *s, int tier, uint32_t slots)
{
    kv_run_t *r = kv_mem_alloc(st, s, sizeof *r);
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    r->mem = kv_mem_alloc_aligned(st, s, slots * st->payload_bytes[tier]);
    if (!r->mem) {
        kv_mem_free(st, s, r, sizeof *r);
        return NULL;
    }
    r->tier = (uint32_t)tier;
    r->n_slot = slots;
    r->owner = s;
    r->nxt = s->runs;
    if (s->runs)
        s->runs->prev = r;
    s->runs = r;
    return r;
}

static void run_free(kv_store_t *st, kv_run_t *r)
{
    kv_session_t *o = r->owner;
    if (o) {
        kv_uncharge_session(o, kv_run_free_bytes(st, r, true));
        if (r->prev)
            r->prev->nxt = r->nxt;
        else
            o->runs = r->nxt;
        if (r->nxt)
            r->nxt->prev = r->prev;
    }
    if (r->lane)
        kv_lane_set_open(r->lane, NULL);
    kv_mem_free_aligned(st, NULL, r->mem, r->n_slot * st->payload_bytes[r->tier]);
    kv_mem_free(st, NULL, r, sizeof *r);
}

void kv_runs_orphan(kv_session_t *s)
{
    for (kv_run_t *r = s->runs; r; r = r->nxt) {
        r->owner = NULL;
        if (r->lane)
            kv_lane_set_open(r->lane, NULL);
    }
    s->runs = NULL;
}

kv_block_t *kv_block_carve(kv_store_t *st, kv_session_t *s, kv_lane_t *ln, uint32_t type,
                           uint32_t slots)
{
    int t = kv_tier(type);
    kv_run_t *r = open_room(ln, t) ? ln->open : NULL;
    if (!r && slots < 2)
        return kv_block_new(st, s, type);
    kv_block_t *b = kv_mem_alloc(st, s, st->hdr_bytes);
    if (!b)
        return NULL;
    if (!r) {
        r = run_new(st, s, t, slots);
        if (!r) {
            kv_mem_free(st, s, b, st->hdr_bytes);
            return NULL;
        }
        kv_lane_set_open(ln, r);
    }
    /* the slot's bytes move from the run's free slots to the block's charge, both s's */
    uint8_t *pl = r->mem + (size_t)r->next++ * st->payload_bytes[t];
    r->used++;
    return block_init(st, b, type, pl, r);
}

/* Moves the blocks of run r (all in lane ln, none shared) into allocations of their own
 * and frees the run; all or nothing. */
static void run_dissolve(kv_store_t *st, kv_lane_t *ln, kv_run_t *r)
{
    const size_t pay = st->payload_bytes[r->tier];
    uint8_t *mem[KV_RUN_MAX] = {0};
    uint32_t n = 0;
    for (; n < r->used; n++)
        if (!(mem[n] = kv_mem_alloc_aligned(st, NULL, pay))) {
            while (n-- > 0)
                kv_mem_free_aligned(st, NULL, mem[n], pay);
            return;
        }
    n = 0;
    for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++) {
        kv_block_t *b = ln->b[i].blk;
        if (b->run != r)
            continue;
        memcpy(mem[n], b->k, pay);
        b->k = mem[n++];
        b->v = b->k + pay / 2;
        b->run = NULL;
    }
    /* the blocks' charges stay (their payloads now count in the store as their own); the
     * run's free slots and record go with it */
    run_free(st, r);
}

/* ERR_BUDGET when dissolving r would take the store over its hard limit: the blocks' new
 * payloads are allocated before the run goes, so the store holds both a moment (the
 * session's charge only falls). */
static int dissolve_room(kv_store_t *st, kv_session_t *s, const kv_run_t *r)
{
    return kv_budget_check(st, s, 0, r->used * slot_charge(st, r->tier), "a run's blocks", NULL);
}

void kv_runs_dissolve(kv_store_t *st, kv_session_t *s)
{
    if (!s->runs)
        return;
    for (kv_run_t *r = s->runs; r; r = r->nxt)
        r->movable = 0;
    for (uint32_t l = 0; l < st->n_lane; l++) {
        kv_lane_t *ln = &s->lanes[l];
        kv_lane_set_open(ln, NULL);
        for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++) {
            const kv_block_t *b = ln->b[i].blk;
            if (b->run && b->run->owner == s && b->refs == 1)
                b->run->movable++;
        }
    }
    /* a run with a slot that holds no block goes, where its every block is s's alone and in
     * one lane (a block a fork still holds keeps its run); a full run has nothing to give back
     * and stays */
    for (uint32_t l = 0; l < st->n_lane; l++) {
        kv_lane_t *ln = &s->lanes[l];
        for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++) {
            kv_run_t *r = ln->b[i].blk->run;
            if (r && r->owner == s && r->movable == r->used && r->used < r->n_slot &&
                !dissolve_room(st, s, r))
                run_dissolve(st, ln, r);
        }
    }
}

/* Moves the payloads of blocks ln->b[i .. i+n) (one tier, s's alone, in no run; n a power of
 * two) into a new run that they fill, in lane order. The run is allocated before the old
 * payloads are freed: false, changing nothing, when that would cross a hard limit or the
 * allocation fails. */
static bool run_gather(kv_store_t *st, kv_session_t *s, kv_lane_t *ln, uint32_t i, uint32_t n)
{
    const int t = kv_tier(ln->b[i].blk->type);
    const size_t pay = st->payload_bytes[t], need = run_charge(st, (uint32_t)t, n);
    if (kv_budget_check(st, s, need, need, "a run", NULL))
        return false;
    kv_run_t *r = run_new(st, s, t, n);
    if (!r)
        return false;
    for (uint32_t k = 0; k < n; k++) {
        kv_block_t *b = ln->b[i + k].blk;
        uint8_t *pl = r->mem + (size_t)k * pay;
        memcpy(pl, b->k, pay);
        /* the block's charge stays; its own payload goes, and the run's slot with it */
        kv_mem_free_aligned(st, s, b->k, pay);
        b->k = pl;
        b->v = pl + pay / 2;
        b->run = r;
    }
    r->next = r->used = n;
    return true;
}

void kv_lane_settle(kv_store_t *st, kv_session_t *s, kv_lane_t *ln)
{
    if (!limited(st, s))
        return;
    /* runs that lost a block: the rest move out, so the free slot's bytes go back */
    for (uint32_t i = 0; i < ln->n_blk; i++) {
        kv_run_t *r = ln->b[i].blk->run;
        if (!r || r->used == r->n_slot || r->owner != s || r->lane)
            continue;
        uint32_t mine = 0;
        for (uint32_t j = 0; j < ln->n_blk; j++)
            mine += ln->b[j].blk->run == r && ln->b[j].blk->refs == 1;
        if (mine == r->used && !dissolve_room(st, s, r))
            run_dissolve(st, ln, r);
    }
    /* stretches of blocks of one type in no run that s alone holds, before the lane's end */
    const uint32_t end = ln->n_blk > KV_SETTLE_TAIL ? ln->n_blk - KV_SETTLE_TAIL : 0;
    for (uint32_t i = 0; i < end;) {
        const uint32_t type = ln->b[i].blk->type;
        uint32_t j = i;
        while (j < end && !ln->b[j].blk->run && ln->b[j].blk->refs == 1 &&
               ln->b[j].blk->type == type)
            j++;
        while (j - i >= 2) {
            const uint32_t n = j - i >= KV_RUN_MAX ? KV_RUN_MAX : 2;
            if (!run_gather(st, s, ln, i, n))
                return;
            i += n;
        }
        i = j > i ? j : i + 1;
    }
}

void kv_block_ref(kv_store_t *st, kv_session_t *s, kv_block_t *b)
{
    b->refs++;
    kv_charge_session(st, s, st->block_charge[kv_tier(b->type)]);
}

void kv_block_unref(kv_store_t *st, kv_session_t *s, kv_block_t *b)
{
    int t = kv_tier(b->type);
    if (s)
        kv_uncharge_session(s, st->block_charge[t]);
    if (--b->refs > 0)
        return;
    kv_run_t *r = b->run;
    if (!r) {
        kv_mem_free_aligned(st, NULL, b->k, st->payload_bytes[t]);
        kv_mem_free(st, NULL, b, st->hdr_bytes);
        return;
    }
    /* the slot goes back to the run. Freed by its owner, the owner is charged it again
     * (its bytes still fall by the header), and the last one carved comes back in order (an
     * append freed again at once, a reservation undone); freed by a fork, it is lent for
     * good: charged to nobody but the store */
    uint32_t slot = (uint32_t)((size_t)(b->k - r->mem) / st->payload_bytes[t]);
    kv_mem_free(st, NULL, b, st->hdr_bytes);
    r->used--;
    if (r->owner && s == r->owner) {
        kv_charge_session(st, r->owner, slot_charge(st, r->tier));
        if (slot + 1 == r->next)
            r->next--;
    } else if (r->owner) {
        r->lent |= 1u << slot;
    }
    if (r->used == 0)
        run_free(st, r);
}

void kv_bref_release(kv_store_t *st, kv_session_t *s, kv_bref_t *r)
{
    if (r->blk)
        kv_block_unref(st, s, r->blk);
    if (r->acc)
        kv_mem_free(st, s, r->acc, st->B * sizeof(float));
    r->blk = NULL;
    r->acc = NULL;
}

void kv_row_copy(const kv_store_t *st, kv_block_t *db, float *dacc, uint32_t di,
                 const kv_block_t *sb, const float *sacc, uint32_t si)
{
    size_t rb = row_bytes(st, db->type);
    memcpy(db->k + di * rb, sb->k + si * rb, rb);
    memcpy(db->v + di * rb, sb->v + si * rb, rb);
    db->pos[di] = sb->pos[si];
    db->mass[di] = sb->mass[si];
    db->bias[di] = sb->bias[si];
    db->logbeta[di] = sb->logbeta[si];
    db->shift[di] = sb->shift[si];
    db->first[di] = sb->first[si];
    db->last[di] = sb->last[si];
    db->kind[di] = sb->kind[si];
    db->level[di] = sb->level[si];
    if (dacc)
        dacc[di] = sacc ? sacc[si] : 0.0f;
}

void kv_row_put(kv_store_t *st, kv_block_t *b, uint32_t i, const float *k, const float *v,
                const kv_row_meta_t *m)
{
    size_t rb = row_bytes(st, b->type), hd = st->cfg.head_dim;
    dt_from_f32(b->type, k, b->k + i * rb, hd);
    dt_from_f32(b->type, v, b->v + i * rb, hd);
    b->pos[i] = m->pos;
    b->mass[i] = m->mass;
    b->bias[i] = logf(m->mass);
    b->logbeta[i] = m->logbeta;
    b->shift[i] = m->shift;
    b->first[i] = m->first;
    b->last[i] = m->last;
    b->kind[i] = m->kind;
    b->level[i] = m->level;
}

void kv_row_get_meta(const kv_block_t *b, uint32_t i, kv_row_meta_t *m)
{
    m->pos = b->pos[i];
    m->mass = b->mass[i];
    m->logbeta = b->logbeta[i];
    m->shift = b->shift[i];
    m->attn = 0.0f;
    m->first = b->first[i];
    m->last = b->last[i];
    m->kind = b->kind[i];
    m->level = b->level[i];
    m->type = (uint8_t)b->type;
}

kv_lane_t *kv_lane_at(const kv_store_t *st, kv_session_t *s, uint32_t layer, uint32_t head)
{
    if (layer >= st->cfg.n_layer || head >= st->cfg.n_head_kv)
        return NULL;
    return &s->lanes[layer * st->cfg.n_head_kv + head];
}

/* ---- the edit ---- */

/* Rows of block i that an interior insertion point cuts off: [lo, hi) go to a new block. */
typedef struct kv_split {
    uint32_t blk, lo, hi;
} kv_split_t;

static uint32_t lower_bound_u32(const uint32_t *a, uint32_t n, uint32_t x)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool ed_is_del(const kv_edit_t *ed, uint32_t i)
{
    if (ed->del) {
        uint32_t j = lower_bound_u32(ed->del, ed->n_del, i);
        return j < ed->n_del && ed->del[j] == i;
    }
    return i >= ed->del_lo && i < ed->del_hi;
}

/* Rows in [lo, hi) that the edit keeps. */
static uint32_t ed_live(const kv_edit_t *ed, uint32_t lo, uint32_t hi)
{
    if (ed->del)
        return (hi - lo) -
               (lower_bound_u32(ed->del, ed->n_del, hi) - lower_bound_u32(ed->del, ed->n_del, lo));
    uint32_t a = lo > ed->del_lo ? lo : ed->del_lo, b = hi < ed->del_hi ? hi : ed->del_hi;
    return (hi - lo) - (b > a ? b - a : 0);
}

/* The block holding row r (r < n_rows). */
static uint32_t block_of(const uint32_t *starts, uint32_t n_blk, uint32_t r)
{
    uint32_t lo = 0, hi = n_blk; /* largest i with starts[i] <= r */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (starts[mid] <= r)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Finds the splits (fills out when not NULL); returns how many. */
static uint32_t ed_splits(const kv_lane_t *ln, const kv_edit_t *ed, kv_split_t *out)
{
    uint32_t n = 0, gi = 0;
    for (uint32_t i = ed->fb; i < ln->n_blk; i++) {
        uint32_t s0 = ed->starts[i], s1 = ed->starts[i + 1];
        while (gi < ed->n_ins && ed->ins[gi].at <= s0)
            gi++;
        while (gi < ed->n_ins && ed->ins[gi].at < s1) {
            uint32_t p = ed->ins[gi].at;
            while (gi < ed->n_ins && ed->ins[gi].at == p)
                gi++;
            uint32_t next = gi < ed->n_ins && ed->ins[gi].at < s1 ? ed->ins[gi].at : s1;
            if (ed_live(ed, p, next) > 0) {
                if (out)
                    out[n] = (kv_split_t){i, p, next};
                n++;
            }
        }
    }
    return n;
}

static uint32_t group_blocks(const kv_store_t *st, const kv_ins_t *g)
{
    return (g->n + st->B - 1) / st->B;
}

/* Whether a group of new rows can overwrite the rows it replaces: they are all deleted and
 * sit in blocks of the group's type (a gist of a hot span, the usual case, allocates
 * nothing then). Needs ed->starts. */
static bool fits_in_place(const kv_lane_t *ln, const kv_edit_t *ed, const kv_ins_t *g)
{
    if (!g->k || (uint64_t)g->at + g->n > ln->n_rows)
        return false;
    for (uint32_t j = 0; j < g->n; j++) {
        uint32_t o = g->at + j;
        if (!ed_is_del(ed, o) || ln->b[block_of(ed->starts, ln->n_blk, o)].blk->type != g->type)
            return false;
    }
    return true;
}

/* Plans an edit: finds what it touches and allocates its scratch. Sets *need to the bytes
 * kv_edit_prepare will charge. ERR_NOMEM when the scratch cannot be had. */
int kv_edit_plan(kv_store_t *st, kv_session_t *s, const kv_lane_t *ln, kv_edit_t *ed, size_t *need)
{
    *need = 0;
    ed->active = false;
    ed->scratch = NULL;
    uint32_t first_del = ed->del ? (ed->n_del ? ed->del[0] : UINT32_MAX)
                                 : (ed->del_lo < ed->del_hi ? ed->del_lo : UINT32_MAX);
    uint32_t ft = first_del;
    if (ed->n_ins && ed->ins[0].at < ft)
        ft = ed->ins[0].at;
    if (ft == UINT32_MAX)
        return 0;
    uint32_t nb = ln->n_blk;
    uint32_t *starts = kv_scratch_alloc(st, (nb + 1) * sizeof *starts);
    if (!starts)
        return ERR_NOMEM;
    starts[0] = 0;
    for (uint32_t i = 0; i < nb; i++)
        starts[i + 1] = starts[i] + ln->b[i].blk->n;
    ed->starts = starts;
    ed->fb = ft >= ln->n_rows ? nb : block_of(starts, nb, ft);
    ed->rb = ed->fb;
    if (ed->rb > 0 && ln->b[ed->rb - 1].blk->n < st->B)
        ed->rb--;
    ed->inplace = NULL;
    if (ed->n_ins == 1 && fits_in_place(ln, ed, &ed->ins[0])) {
        ed->inplace = &ed->ins[0];
        ed->n_ins = 0; /* no insertion point left: no new block, no split */
    }

    size_t bytes = 0;
    for (uint32_t i = ed->rb; i < nb; i++)
        if (ln->b[i].blk->refs > 1)
            bytes += st->block_charge[kv_tier(ln->b[i].blk->type)];
    uint32_t n_fresh = 0;
    for (uint32_t g = 0; g < ed->n_ins; g++) {
        uint32_t k = group_blocks(st, &ed->ins[g]);
        n_fresh += k;
        bytes += k * st->block_charge[kv_tier(ed->ins[g].type)];
    }
    uint32_t n_split = ed_splits(ln, ed, NULL);
    uint32_t n_list = nb + n_fresh + n_split;

    size_t sz = (nb - ed->rb) * sizeof(kv_block_t *) +
                (n_fresh + n_split + n_list) * sizeof(kv_bref_t) + n_split * sizeof(kv_split_t);
    uint8_t *m = kv_scratch_alloc(st, sz);
    if (!m) {
        free(starts);
        ed->starts = NULL;
        return ERR_NOMEM;
    }
    ed->scratch = m;
    ed->fresh = (kv_bref_t *)m;
    ed->split = ed->fresh + n_fresh;
    ed->list = ed->split + n_split;
    ed->priv = (kv_block_t **)(ed->list + n_list);
    kv_split_t *sp = (kv_split_t *)(ed->priv + (nb - ed->rb));
    ed_splits(ln, ed, sp);
    for (uint32_t k = 0; k < n_split; k++)
        bytes += st->block_charge[kv_tier(ln->b[sp[k].blk].blk->type)];
    ed->n_fresh = n_fresh;
    ed->n_split = n_split;
    ed->n_list = n_list;
    if (s->attn_acc)
        bytes += (n_fresh + n_split) * kv_acc_bytes(st);
    ed->arr_cap = n_list > ln->cap ? n_list : 0;
    if (ed->arr_cap)
        bytes += kv_charge(ed->arr_cap * sizeof(kv_bref_t));
    ed->arr = NULL;
    ed->active = true;
    *need = bytes;
    return 0;
}

static kv_split_t *ed_split_info(const kv_lane_t *ln, const kv_edit_t *ed)
{
    return (kv_split_t *)(ed->priv + (ln->n_blk - ed->rb));
}

void kv_edit_abort(kv_store_t *st, kv_session_t *s, kv_edit_t *ed)
{
    if (ed->active) {
        uint32_t n_priv = ed->n_list - ed->n_fresh - ed->n_split - ed->rb;
        for (uint32_t k = 0; k < n_priv; k++)
            if (ed->priv[k])
                kv_block_unref(st, s, ed->priv[k]);
        for (uint32_t k = 0; k < ed->n_fresh; k++)
            kv_bref_release(st, s, &ed->fresh[k]);
        for (uint32_t k = 0; k < ed->n_split; k++)
            kv_bref_release(st, s, &ed->split[k]);
        if (ed->arr)
            kv_mem_free(st, s, ed->arr, ed->arr_cap * sizeof *ed->arr);
    }
    free(ed->scratch);
    free(ed->starts);
    ed->scratch = NULL;
    ed->starts = NULL;
    ed->arr = NULL;
    ed->active = false;
}

static int bref_new(kv_store_t *st, kv_session_t *s, uint32_t type, kv_bref_t *r)
{
    r->blk = kv_block_new(st, s, type);
    if (!r->blk)
        return ERR_NOMEM;
    if (s->attn_acc) {
        r->acc = kv_mem_alloc(st, s, st->B * sizeof(float));
        if (!r->acc) {
            kv_bref_release(st, s, r);
            return ERR_NOMEM;
        }
        memset(r->acc, 0, st->B * sizeof(float));
    }
    return 0;
}

/* Writes inserted row j of group g into r's block at slot i. */
static void fill_row(kv_store_t *st, const kv_lane_t *ln, const kv_edit_t *ed, const kv_ins_t *g,
                     uint32_t j, kv_bref_t *r, uint32_t i)
{
    size_t hd = st->cfg.head_dim;
    if (g->k) {
        kv_row_put(st, r->blk, i, g->k + j * hd, g->v + j * hd, &g->meta[j]);
        return;
    }
    uint32_t o = g->old0 + j, bi = block_of(ed->starts, ln->n_blk, o);
    const kv_bref_t *src = &ln->b[bi];
    uint32_t si = o - ed->starts[bi];
    if (src->blk->type == r->blk->type) {
        kv_row_copy(st, r->blk, r->acc, i, src->blk, src->acc, si);
        return;
    }
    size_t rbs = row_bytes(st, src->blk->type);
    float *tk = st->scratch, *tv = st->scratch + hd;
    dt_to_f32(src->blk->type, src->blk->k + si * rbs, tk, hd);
    dt_to_f32(src->blk->type, src->blk->v + si * rbs, tv, hd);
    kv_row_meta_t m;
    kv_row_get_meta(src->blk, si, &m);
    kv_row_put(st, r->blk, i, tk, tv, &m);
    r->blk->bias[i] = src->blk->bias[si]; /* the same float, not recomputed */
    if (r->acc)
        r->acc[i] = src->acc ? src->acc[si] : 0.0f;
}

int kv_edit_prepare(kv_store_t *st, kv_session_t *s, const kv_lane_t *ln, kv_edit_t *ed)
{
    if (!ed->active)
        return 0;
    uint32_t nb = ln->n_blk;
    for (uint32_t i = ed->rb; i < nb; i++) {
        const kv_block_t *b = ln->b[i].blk;
        ed->priv[i - ed->rb] = NULL;
        if (b->refs == 1)
            continue;
        kv_block_t *c = kv_block_new(st, s, b->type);
        if (!c)
            return ERR_NOMEM;
        for (uint32_t j = 0; j < b->n; j++)
            kv_row_copy(st, c, NULL, j, b, NULL, j);
        c->n = b->n;
        ed->priv[i - ed->rb] = c;
    }
    uint32_t f = 0;
    for (uint32_t g = 0; g < ed->n_ins; g++) {
        const kv_ins_t *gr = &ed->ins[g];
        for (uint32_t j = 0; j < gr->n; j++) {
            if (j % st->B == 0) {
                if (bref_new(st, s, gr->type, &ed->fresh[f]) != 0)
                    return ERR_NOMEM;
                f++;
            }
            fill_row(st, ln, ed, gr, j, &ed->fresh[f - 1], j % st->B);
            ed->fresh[f - 1].blk->n = j % st->B + 1;
        }
    }
    const kv_split_t *sp = ed_split_info(ln, ed);
    for (uint32_t k = 0; k < ed->n_split; k++) {
        const kv_bref_t *src = &ln->b[sp[k].blk];
        if (bref_new(st, s, src->blk->type, &ed->split[k]) != 0)
            return ERR_NOMEM;
        kv_bref_t *r = &ed->split[k];
        uint32_t n = 0;
        for (uint32_t o = sp[k].lo; o < sp[k].hi; o++)
            if (!ed_is_del(ed, o))
                kv_row_copy(st, r->blk, r->acc, n++, src->blk, src->acc, o - ed->starts[sp[k].blk]);
        r->blk->n = n;
    }
    if (ed->arr_cap) {
        ed->arr = kv_mem_alloc(st, s, ed->arr_cap * sizeof *ed->arr);
        if (!ed->arr)
            return ERR_NOMEM;
    }
    return 0;
}

/* Moves n rows (payload, metadata, accumulators) from src:si to dst:di within one type;
 * the ranges may overlap inside one block (di < si). */
static void rows_move(const kv_store_t *st, kv_bref_t *dst, uint32_t di, const kv_bref_t *src,
                      uint32_t si, uint32_t n)
{
    kv_block_t *db = dst->blk;
    const kv_block_t *sb = src->blk;
    size_t rb = row_bytes(st, db->type);
    memmove(db->k + di * rb, sb->k + si * rb, n * rb);
    memmove(db->v + di * rb, sb->v + si * rb, n * rb);
    memmove(db->pos + di, sb->pos + si, n * sizeof *db->pos);
    memmove(db->mass + di, sb->mass + si, n * sizeof *db->mass);
    memmove(db->bias + di, sb->bias + si, n * sizeof *db->bias);
    memmove(db->logbeta + di, sb->logbeta + si, n * sizeof *db->logbeta);
    memmove(db->shift + di, sb->shift + si, n * sizeof *db->shift);
    memmove(db->first + di, sb->first + si, n * sizeof *db->first);
    memmove(db->last + di, sb->last + si, n * sizeof *db->last);
    memmove(db->kind + di, sb->kind + si, n);
    memmove(db->level + di, sb->level + si, n);
    if (dst->acc)
        memmove(dst->acc + di, src->acc + si, n * sizeof *dst->acc);
}

/* Frees blocks from q on that hold no live row, then packs every same-type run from q. */
static void repack(kv_store_t *st, kv_session_t *s, kv_lane_t *ln, uint32_t q)
{
    kv_bref_t *b = ln->b;
    uint32_t w = q;
    for (uint32_t i = q; i < ln->n_blk; i++) {
        const kv_block_t *blk = b[i].blk;
        uint32_t live = 0;
        for (uint32_t j = 0; j < blk->n; j++)
            live += blk->kind[j] != KV_KIND_DEAD;
        if (live == 0)
            kv_bref_release(st, s, &b[i]);
        else
            b[w++] = b[i];
    }
    ln->n_blk = w;

    uint32_t i = q;
    while (i < ln->n_blk) {
        uint32_t type = b[i].blk->type, j = i;
        while (j < ln->n_blk && b[j].blk->type == type)
            j++;
        uint32_t d = i, ds = 0;
        for (uint32_t si = i; si < j; si++) {
            kv_block_t *sb = b[si].blk;
            uint32_t n = sb->n, r = 0;
            while (r < n) {
                while (r < n && sb->kind[r] == KV_KIND_DEAD)
                    r++;
                uint32_t r1 = r;
                while (r1 < n && sb->kind[r1] != KV_KIND_DEAD)
                    r1++;
                while (r < r1) { /* live rows [r, r1), as much as fits at the cursor */
                    uint32_t take = r1 - r < st->B - ds ? r1 - r : st->B - ds;
                    if (d != si || ds != r)
                        rows_move(st, &b[d], ds, &b[si], r, take);
                    ds += take;
                    r += take;
                    if (ds == st->B) {
                        b[d].blk->n = st->B;
                        d++;
                        ds = 0;
                    }
                }
            }
        }
        if (ds > 0) {
            b[d].blk->n = ds;
            d++;
        }
        for (uint32_t k = d; k < j; k++)
            kv_bref_release(st, s, &b[k]);
        if (d < j) {
            memmove(&b[d], &b[j], (ln->n_blk - j) * sizeof *b);
            ln->n_blk -= j - d;
        }
        i = d;
    }
    uint32_t rows = 0;
    for (uint32_t k = 0; k < ln->n_blk; k++)
        rows += b[k].blk->n;
    ln->n_rows = rows;
}

static void mark_dead(kv_session_t *s, kv_block_t *b, uint32_t i)
{
    if (b->kind[i] == KV_KIND_RAW)
        kv_tr_unhold(&s->tr, (uint32_t)b->pos[i]);
    b->kind[i] = KV_KIND_DEAD;
}

void kv_edit_commit(kv_store_t *st, kv_session_t *s, kv_lane_t *ln, kv_edit_t *ed)
{
    if (!ed->active) {
        kv_edit_abort(st, s, ed);
        return;
    }
    uint32_t nb = ln->n_blk;
    const uint32_t *starts = ed->starts;
    for (uint32_t i = ed->rb; i < nb; i++) {
        kv_block_t *c = ed->priv[i - ed->rb];
        if (c) {
            kv_block_unref(st, s, ln->b[i].blk);
            ln->b[i].blk = c;
        }
    }
    /* deletions, then the rows that move to split blocks */
    if (ed->del) {
        for (uint32_t k = 0; k < ed->n_del; k++) {
            uint32_t bi = block_of(starts, nb, ed->del[k]);
            mark_dead(s, ln->b[bi].blk, ed->del[k] - starts[bi]);
        }
    } else {
        for (uint32_t o = ed->del_lo; o < ed->del_hi; o++) {
            uint32_t bi = block_of(starts, nb, o);
            mark_dead(s, ln->b[bi].blk, o - starts[bi]);
        }
    }
    if (ed->inplace) {
        const kv_ins_t *g = ed->inplace;
        size_t hd = st->cfg.head_dim;
        for (uint32_t j = 0; j < g->n; j++) {
            uint32_t o = g->at + j, bi = block_of(starts, nb, o), i = o - starts[bi];
            kv_bref_t *r = &ln->b[bi];
            kv_row_put(st, r->blk, i, g->k + j * hd, g->v + j * hd, &g->meta[j]);
            if (r->acc)
                r->acc[i] = 0.0f;
            if (g->meta[j].kind == KV_KIND_RAW)
                kv_tr_hold(&s->tr, (uint32_t)g->meta[j].pos);
        }
    }
    const kv_split_t *sp = ed_split_info(ln, ed);
    for (uint32_t k = 0; k < ed->n_split; k++)
        for (uint32_t o = sp[k].lo; o < sp[k].hi; o++)
            ln->b[sp[k].blk].blk->kind[o - starts[sp[k].blk]] = KV_KIND_DEAD;
    for (uint32_t f = 0; f < ed->n_fresh; f++) {
        const kv_block_t *b = ed->fresh[f].blk;
        for (uint32_t j = 0; j < b->n; j++)
            if (b->kind[j] == KV_KIND_RAW)
                kv_tr_hold(&s->tr, (uint32_t)b->pos[j]);
    }

    /* the new block list */
    kv_bref_t *L = ed->list;
    uint32_t n = 0, gi = 0, fi = 0, si = 0, q = UINT32_MAX;
    for (uint32_t i = 0; i <= nb; i++) {
        if (i == ed->rb)
            q = n;
        uint32_t at = i < nb ? starts[i] : ln->n_rows;
        while (gi < ed->n_ins && (ed->ins[gi].at == at || i == nb)) {
            for (uint32_t k = group_blocks(st, &ed->ins[gi]); k > 0; k--)
                L[n++] = ed->fresh[fi++];
            gi++;
        }
        if (i == nb)
            break;
        L[n++] = ln->b[i];
        while (gi < ed->n_ins && ed->ins[gi].at < starts[i + 1]) {
            uint32_t p = ed->ins[gi].at;
            while (gi < ed->n_ins && ed->ins[gi].at == p) {
                for (uint32_t k = group_blocks(st, &ed->ins[gi]); k > 0; k--)
                    L[n++] = ed->fresh[fi++];
                gi++;
            }
            if (si < ed->n_split && sp[si].blk == i && sp[si].lo == p)
                L[n++] = ed->split[si++];
        }
    }
    if (ed->arr) {
        if (ln->b)
            kv_mem_free(st, s, ln->b, ln->cap * sizeof *ln->b);
        ln->b = ed->arr;
        ln->cap = ed->arr_cap;
        ed->arr = NULL;
    }
    memcpy(ln->b, L, n * sizeof *L);
    ln->n_blk = n;
    repack(st, s, ln, q);
    ed->active = false;
    kv_edit_abort(st, s, ed); /* frees the scratch only */
}
