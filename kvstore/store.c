/*
 * kvstore/store.c — the store and its sessions: the arena, byte accounting, limits,
 * session lifetime (create, destroy, fork) and the consistency walk.
 *
 * Accounting: an allocation is charged nallocx(size), the size class jemalloc really hands
 * out, so the store's total equals the arena's small.allocated + large.allocated to the byte
 * (tcache is bypassed so freed memory leaves the arena's figures at once).
 */
#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "kvstore/kv_impl.h"

#define MX_FLAGS(st) (MALLOCX_ARENA((st)->arena) | MALLOCX_TCACHE_NONE)

int kv_tier(uint32_t type)
{
    switch (type) {
    case DT_F32:
        return KV_TIER_F32;
    case DT_F16:
        return KV_TIER_F16;
    case DT_Q8_0:
        return KV_TIER_Q8_0;
    default:
        return -1;
    }
}

size_t kv_charge(size_t bytes)
{
    return bytes ? nallocx(bytes, 0) : 0;
}

size_t kv_charge_aligned(size_t bytes)
{
    return bytes ? nallocx(bytes, MALLOCX_ALIGN(KV_PAYLOAD_ALIGN)) : 0;
}

static bool hook_fails(const kv_store_t *st, size_t bytes)
{
    return st->cfg.hook.fail && st->cfg.hook.fail(st->cfg.hook.ctx, bytes);
}

void kv_charge_session(kv_store_t *st, kv_session_t *s, size_t bytes)
{
    s->bytes += bytes;
    if (s->bytes > s->peak)
        s->peak = s->bytes;
}

void kv_uncharge_session(kv_session_t *s, size_t bytes)
{
    s->bytes -= bytes;
}

static void *mem_alloc(kv_store_t *st, kv_session_t *s, size_t bytes, int extra)
{
    if (bytes == 0 || hook_fails(st, bytes))
        return NULL;
    void *p = mallocx(bytes, MX_FLAGS(st) | extra);
    if (!p)
        return NULL;
    size_t c = nallocx(bytes, extra);
    st->bytes += c;
    if (st->bytes > st->peak)
        st->peak = st->bytes;
    if (s)
        kv_charge_session(st, s, c);
    return p;
}

static void mem_free(kv_store_t *st, kv_session_t *s, void *p, size_t bytes, int extra)
{
    if (!p)
        return;
    size_t c = nallocx(bytes, extra);
    sdallocx(p, bytes, MALLOCX_TCACHE_NONE | extra);
    st->bytes -= c;
    if (s)
        s->bytes -= c;
}

void *kv_mem_alloc(kv_store_t *st, kv_session_t *s, size_t bytes)
{
    return mem_alloc(st, s, bytes, 0);
}

void *kv_mem_alloc_aligned(kv_store_t *st, kv_session_t *s, size_t bytes)
{
    return mem_alloc(st, s, bytes, MALLOCX_ALIGN(KV_PAYLOAD_ALIGN));
}

void kv_mem_free(kv_store_t *st, kv_session_t *s, void *p, size_t bytes)
{
    mem_free(st, s, p, bytes, 0);
}

void kv_mem_free_aligned(kv_store_t *st, kv_session_t *s, void *p, size_t bytes)
{
    mem_free(st, s, p, bytes, MALLOCX_ALIGN(KV_PAYLOAD_ALIGN));
}

void *kv_scratch_alloc(kv_store_t *st, size_t bytes)
{
    if (hook_fails(st, bytes))
        return NULL;
    return calloc(1, bytes ? bytes : 1);
}

/* A call that allocates nothing always passes, even over a limit lowered below use: it can
 * only free memory. */
int kv_budget_check(kv_store_t *st, kv_session_t *s, size_t need_session, size_t need_global,
                    const char *what, err_info_t *e)
{
    if (need_global && st->hard && st->bytes + need_global > st->hard) {
        size_t avail = st->hard > st->bytes ? st->hard - st->bytes : 0;
        return err_set(e, ERR_BUDGET,
                       "%s needs %zu bytes, %zu available under the global hard limit of %zu "
                       "(%zu in use)",
                       what, need_global, avail, st->hard, st->bytes);
    }
    if (need_session && s && s->hard && s->bytes + need_session > s->hard) {
        size_t avail = s->hard > s->bytes ? s->hard - s->bytes : 0;
        int rc = err_set(e, ERR_BUDGET,
                         "%s needs %zu bytes, %zu available under the session's hard limit of "
                         "%zu (%zu in use)",
                         what, need_session, avail, s->hard, s->bytes);
        kv_tr_spill_note(st, s, e);
        return rc;
    }
    return 0;
}

/* ---- the store ---- */

static size_t align_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

int kv_store_new(const kv_store_config_t *cfg, kv_store_t **out, err_info_t *e)
{
    *out = NULL;
    if (!cfg || cfg->n_layer == 0 || cfg->n_head_kv == 0 || cfg->head_dim == 0)
        return err_set(e, ERR_INVAL, "kv store: n_layer, n_head_kv and head_dim must be > 0");
    if ((uint64_t)cfg->n_layer * cfg->n_head_kv > 65535)
        return err_set(e, ERR_INVAL, "kv store: %u x %u lanes per session, at most 65535",
                       cfg->n_layer, cfg->n_head_kv);
    if (cfg->head_dim % 2 != 0 || cfg->head_dim > 65536)
        return err_set(e, ERR_INVAL, "kv store: head_dim %u must be even and <= 65536",
                       cfg->head_dim);
    if (cfg->hot_type != DT_F32 && cfg->hot_type != DT_F16 && cfg->hot_type != DT_Q8_0)
        return err_set(e, ERR_INVAL, "kv store: hot type %u is not f32 (0), f16 (1) or q8_0 (8)",
                       cfg->hot_type);
    if (cfg->hot_type == DT_Q8_0 && cfg->head_dim % 32 != 0)
        return err_set(e, ERR_UNSUPPORTED,
                       "kv store: q8_0 rows need head_dim a multiple of 32 (it is %u)",
                       cfg->head_dim);
    uint32_t B = cfg->block_rows ? cfg->block_rows : 64;
    if (B > 65536)
        return err_set(e, ERR_INVAL, "kv store: block_rows %u is more than 65536", B);
    if (cfg->hard_limit && cfg->soft_limit > cfg->hard_limit)
        return err_set(e, ERR_INVAL, "kv store: soft limit %zu above hard limit %zu",
                       cfg->soft_limit, cfg->hard_limit);

    if (cfg->spill_dir) {
        struct stat sb;
        if (stat(cfg->spill_dir, &sb) != 0)
            return err_set(e, ERR_IO, "kv store: spill folder %s: %s", cfg->spill_dir,
                           strerror(errno));
        if (!S_ISDIR(sb.st_mode))
            return err_set(e, ERR_IO, "kv store: spill folder %s is not a folder", cfg->spill_dir);
        if (access(cfg->spill_dir, W_OK | X_OK) != 0)
            return err_set(e, ERR_IO, "kv store: spill folder %s: %s", cfg->spill_dir,
                           strerror(errno));
    }

    kv_store_t *st = calloc(1, sizeof *st);
    if (!st)
        return err_set(e, ERR_NOMEM, "kv store: no memory for the store");
    st->cfg = *cfg;
    if (cfg->spill_dir) {
        st->cfg.spill_dir = strdup(cfg->spill_dir);
        if (!st->cfg.spill_dir) {
            free(st);
            return err_set(e, ERR_NOMEM, "kv store: no memory for the store");
        }
    }
    st->B = B;
    st->n_lane = cfg->n_layer * cfg->n_head_kv;
    st->hard = cfg->hard_limit;
    st->soft = cfg->soft_limit;
    st->next_id = 1;
    size_t hd = cfg->head_dim;
    st->row_bytes[KV_TIER_F32] = hd * 4;
    st->row_bytes[KV_TIER_F16] = hd * 2;
    st->row_bytes[KV_TIER_Q8_0] = hd % QK8_0 == 0 ? hd / QK8_0 * sizeof(block_q8_0) : 0;
    size_t meta = align_up(sizeof(kv_block_t), 8) +
                  (size_t)B * (5 * sizeof(float) + 2 * sizeof(uint32_t) + 2);
    st->hdr_bytes = meta;
    for (int t = 0; t < KV_N_TIERS; t++) {
        if (!st->row_bytes[t])
            continue;
        st->payload_bytes[t] = 2 * align_up(B * st->row_bytes[t], KV_PAYLOAD_ALIGN);
        st->block_charge[t] = kv_charge(meta) + kv_charge_aligned(st->payload_bytes[t]);
    }

    size_t sz = sizeof st->arena;
    if (mallctl("arenas.create", &st->arena, &sz, NULL, 0) != 0) {
        free(st);
        return err_set(e, ERR_NOMEM, "kv store: jemalloc could not create an arena");
    }
    st->arena_ok = true;
    st->scratch = kv_mem_alloc(st, NULL, 2 * hd * sizeof(float));
    if (!st->scratch) {
        kv_store_destroy(&st);
        return err_set(e, ERR_NOMEM, "kv store: no memory for conversion scratch");
    }
    st->overhead = kv_charge(2 * hd * sizeof(float));
    *out = st;
    return 0;
}

void kv_store_destroy(kv_store_t **p)
{
    if (!p || !*p)
        return;
    kv_store_t *st = *p;
    for (uint32_t i = 0; i < st->n_sess; i++)
        kv_session_free(st, st->sess[i]);
    if (st->sess)
        kv_mem_free(st, NULL, st->sess, st->cap_sess * sizeof *st->sess);
    if (st->scratch)
        kv_mem_free(st, NULL, st->scratch, 2 * st->cfg.head_dim * sizeof(float));
    if (st->arena_ok) {
        char name[64];
        snprintf(name, sizeof name, "arena.%u.destroy", st->arena);
        mallctl(name, NULL, NULL, NULL, 0);
    }
    free((char *)st->cfg.spill_dir);
    free(st);
    *p = NULL;
}

int kv_store_set_limits(kv_store_t *st, size_t hard, size_t soft, size_t *excess)
{
    if (hard && soft > hard)
        return ERR_INVAL;
    st->hard = hard;
    st->soft = soft;
    for (uint32_t i = 0; (hard || soft) && i < st->n_sess; i++)
        kv_runs_dissolve(st, st->sess[i]);
    if (excess)
        *excess = hard && st->bytes > hard ? st->bytes - hard : 0;
    return 0;
}

size_t kv_store_bytes(const kv_store_t *st)
{
    return st->bytes;
}

void kv_store_limits(const kv_store_t *st, size_t *hard, size_t *soft)
{
    if (hard)
        *hard = st->hard;
    if (soft)
        *soft = st->soft;
}

size_t kv_block_bytes(const kv_store_t *st, uint32_t type)
{
    int t = kv_tier(type);
    return t < 0 ? 0 : st->block_charge[t];
}

uint32_t kv_block_rows(const kv_store_t *st)
{
    return st->B;
}

size_t kv_store_share(const kv_store_t *st)
{
    const size_t limit = st->soft ? st->soft : st->hard;
    return limit && st->n_sess ? limit / st->n_sess : 0;
}

const kv_store_config_t *kv_store_config(const kv_store_t *st)
{
    return &st->cfg;
}

uint32_t kv_lane_count(const kv_store_t *st)
{
    return st->n_lane;
}

uint32_t kv_head_dim(const kv_store_t *st)
{
    return st->cfg.head_dim;
}

/* ---- sessions ---- */

kv_session_t *kv_session_find(const kv_store_t *st, uint32_t sid)
{
    for (uint32_t i = 0; i < st->n_sess; i++)
        if (st->sess[i]->id == sid)
            return st->sess[i];
    return NULL;
}

uint32_t kv_session_list(const kv_store_t *st, uint32_t *ids, uint32_t cap)
{
    for (uint32_t i = 0; i < st->n_sess && i < cap; i++)
        ids[i] = st->sess[i]->id;
    return st->n_sess;
}

/* Allocates an empty session (struct and lanes), charged to itself. */
int kv_session_alloc(kv_store_t *st, const kv_session_config_t *cfg, kv_session_t **out)
{
    *out = NULL;
    kv_session_t tmp = {0};
    kv_session_t *s = kv_mem_alloc(st, &tmp, sizeof *s);
    if (!s)
        return ERR_NOMEM;
    memset(s, 0, sizeof *s);
    kv_tr_init(&s->tr);
    s->bytes = tmp.bytes;
    s->peak = tmp.bytes;
    s->lanes = kv_mem_alloc(st, s, st->n_lane * sizeof *s->lanes);
    if (!s->lanes) {
        kv_mem_free(st, NULL, s, sizeof *s);
        return ERR_NOMEM;
    }
    memset(s->lanes, 0, st->n_lane * sizeof *s->lanes);
    if (cfg) {
        s->hard = cfg->hard_limit;
        s->soft = cfg->soft_limit;
        s->attn_acc = cfg->attn_acc;
    }
    *out = s;
    return 0;
}

void kv_session_free(kv_store_t *st, kv_session_t *s)
{
    if (!s)
        return;
    for (uint32_t l = 0; l < st->n_lane; l++) {
        kv_lane_t *ln = &s->lanes[l];
        for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++)
            kv_bref_release(st, s, &ln->b[i]);
        if (ln->b)
            kv_mem_free(st, s, ln->b, ln->cap * sizeof *ln->b);
    }
    kv_runs_orphan(s); /* those that forks still hold blocks of */
    kv_tr_free(st, s);
    kv_mem_free(st, s, s->lanes, st->n_lane * sizeof *s->lanes);
    kv_mem_free(st, NULL, s, sizeof *s);
}

/* Adds a session to the table (growing it), giving it the next id. */
int kv_session_add(kv_store_t *st, kv_session_t *s, err_info_t *e)
{
    if (st->n_sess == st->cap_sess) {
        uint32_t cap = st->cap_sess ? 2 * st->cap_sess : 8;
        size_t need = kv_charge(cap * sizeof *st->sess);
        int rc = kv_budget_check(st, NULL, 0, need, "growing the session table", e);
        if (rc)
            return rc;
        kv_session_t **t = kv_mem_alloc(st, NULL, cap * sizeof *t);
        if (!t)
            return err_set(e, ERR_NOMEM, "kv store: no memory for the session table");
        if (st->n_sess)
            memcpy(t, st->sess, st->n_sess * sizeof *t);
        if (st->sess)
            kv_mem_free(st, NULL, st->sess, st->cap_sess * sizeof *st->sess);
        st->overhead += kv_charge(cap * sizeof *t) - kv_charge(st->cap_sess * sizeof *t);
        st->sess = t;
        st->cap_sess = cap;
    }
    s->id = st->next_id++;
    st->sess[st->n_sess++] = s;
    return 0;
}

static size_t session_base_bytes(const kv_store_t *st)
{
    return kv_charge(sizeof(kv_session_t)) + kv_charge(st->n_lane * sizeof(kv_lane_t));
}

static int check_session_cfg(const kv_session_config_t *cfg, err_info_t *e)
{
    if (cfg && cfg->hard_limit && cfg->soft_limit > cfg->hard_limit)
        return err_set(e, ERR_INVAL, "session soft limit %zu above its hard limit %zu",
                       cfg->soft_limit, cfg->hard_limit);
    return 0;
}

int kv_session_create(kv_store_t *st, const kv_session_config_t *cfg, uint32_t *sid, err_info_t *e)
{
    int rc = check_session_cfg(cfg, e);
    if (rc)
        return rc;
    size_t need = session_base_bytes(st);
    if (st->n_sess == st->cap_sess)
        need += kv_charge((st->cap_sess ? 2 * st->cap_sess : 8) * sizeof(kv_session_t *));
    kv_session_t probe = {.hard = cfg ? cfg->hard_limit : 0};
    rc = kv_budget_check(st, &probe, session_base_bytes(st), need, "creating a session", e);
    if (rc)
        return rc;
    kv_session_t *s;
    if (kv_session_alloc(st, cfg, &s) != 0)
        return err_set(e, ERR_NOMEM, "no memory for a new session");
    rc = kv_session_add(st, s, e);
    if (rc) {
        kv_session_free(st, s);
        return rc;
    }
    *sid = s->id;
    return 0;
}

int kv_session_destroy(kv_store_t *st, uint32_t sid)
{
    for (uint32_t i = 0; i < st->n_sess; i++) {
        if (st->sess[i]->id != sid)
            continue;
        kv_session_free(st, st->sess[i]);
        memmove(&st->sess[i], &st->sess[i + 1], (st->n_sess - i - 1) * sizeof *st->sess);
        st->n_sess--;
        return 0;
    }
    return ERR_NOTFOUND;
}

int kv_session_set_limits(kv_store_t *st, uint32_t sid, size_t hard, size_t soft, size_t *excess)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    if (hard && soft > hard)
        return ERR_INVAL;
    s->hard = hard;
    s->soft = soft;
    if (hard || soft)
        kv_runs_dissolve(st, s);
    if (excess)
        *excess = hard && s->bytes > hard ? s->bytes - hard : 0;
    return 0;
}

int kv_session_dissolve_runs(kv_store_t *st, uint32_t sid)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    kv_runs_dissolve(st, s);
    return 0;
}

size_t kv_session_bytes(const kv_store_t *st, uint32_t sid)
{
    const kv_session_t *s = kv_session_find(st, sid);
    return s ? s->bytes : 0;
}

int kv_session_limits(const kv_store_t *st, uint32_t sid, size_t *hard, size_t *soft)
{
    const kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    if (hard)
        *hard = s->hard;
    if (soft)
        *soft = s->soft;
    return 0;
}

/* Bytes a fork of s would charge: to the child (shared blocks counted) and to the store
 * (which pays for everything but the blocks the child shares). */
static void fork_need(const kv_store_t *st, const kv_session_t *s, bool acc, size_t *child,
                      size_t *global)
{
    size_t c = session_base_bytes(st), shared = 0;
    for (uint32_t l = 0; l < st->n_lane; l++) {
        const kv_lane_t *ln = &s->lanes[l];
        if (ln->n_blk)
            c += kv_charge(ln->n_blk * sizeof(kv_bref_t));
        for (uint32_t i = 0; i < ln->n_blk; i++) {
            const kv_block_t *b = ln->b[i].blk;
            size_t bc = st->block_charge[kv_tier(b->type)];
            c += bc;
            if (b->n == st->B)
                shared += bc;
            if (acc)
                c += kv_acc_bytes(st);
        }
    }
    c += kv_tr_copy_bytes(&s->tr);
    *child = c;
    *global = c - shared;
}

int kv_session_fork(kv_store_t *st, uint32_t sid, const kv_session_config_t *cfg, uint32_t *child,
                    err_info_t *e)
{
    kv_session_t *p = kv_session_find(st, sid);
    if (!p)
        return err_set(e, ERR_NOTFOUND, "fork: no session %u", sid);
    if (p->n_reserved)
        return err_set(e, ERR_BUSY, "fork: session %u has a reservation pending", sid);
    int rc = check_session_cfg(cfg, e);
    if (rc)
        return rc;
    kv_session_config_t c = {.hard_limit = p->hard, .soft_limit = p->soft, .attn_acc = p->attn_acc};
    if (cfg)
        c = *cfg;
    size_t need_c, need_g;
    fork_need(st, p, c.attn_acc, &need_c, &need_g);
    if (st->n_sess == st->cap_sess)
        need_g += kv_charge((st->cap_sess ? 2 * st->cap_sess : 8) * sizeof(kv_session_t *));
    kv_session_t probe = {.hard = c.hard_limit};
    rc = kv_budget_check(st, &probe, need_c, need_g, "fork", e);
    if (rc)
        return rc;

    kv_session_t *s;
    if (kv_session_alloc(st, &c, &s) != 0)
        return err_set(e, ERR_NOMEM, "fork: no memory for the session");
    for (uint32_t l = 0; l < st->n_lane; l++) {
        const kv_lane_t *pl = &p->lanes[l];
        kv_lane_t *ln = &s->lanes[l];
        if (!pl->n_blk)
            continue;
        ln->b = kv_mem_alloc(st, s, pl->n_blk * sizeof *ln->b);
        if (!ln->b)
            goto nomem;
        ln->cap = pl->n_blk;
        for (uint32_t i = 0; i < pl->n_blk; i++) {
            kv_block_t *b = pl->b[i].blk;
            kv_bref_t r = {0};
            if (c.attn_acc) {
                r.acc = kv_mem_alloc(st, s, st->B * sizeof(float));
                if (!r.acc)
                    goto nomem;
                if (pl->b[i].acc)
                    memcpy(r.acc, pl->b[i].acc, st->B * sizeof(float));
                else
                    memset(r.acc, 0, st->B * sizeof(float));
            }
            if (b->n == st->B) {
                kv_block_ref(st, s, b);
                r.blk = b;
            } else {
                r.blk = kv_block_new(st, s, b->type);
                if (!r.blk) {
                    kv_mem_free(st, s, r.acc, r.acc ? st->B * sizeof(float) : 0);
                    goto nomem;
                }
                for (uint32_t j = 0; j < b->n; j++)
                    kv_row_copy(st, r.blk, NULL, j, b, NULL, j);
                r.blk->n = b->n;
            }
            ln->b[ln->n_blk++] = r;
        }
        ln->n_rows = pl->n_rows;
    }
    rc = kv_tr_copy(st, s, &p->tr, e);
    if (rc) {
        kv_session_free(st, s);
        err_prefix(e, "fork of session %u: ", sid);
        return rc;
    }
    s->shift = p->shift;
    rc = kv_session_add(st, s, e);
    if (rc) {
        kv_session_free(st, s);
        return rc;
    }
    *child = s->id;
    return 0;
nomem:
    kv_session_free(st, s);
    return err_set(e, ERR_NOMEM, "fork of session %u: out of memory", sid);
}
