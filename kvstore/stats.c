/*
 * kvstore/stats.c — INFO-memory style figures for a session or the store, jemalloc's view
 * of the arena, and the consistency walk used by the tests (kv_store_check).
 */
#include <jemalloc/jemalloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kvstore/kv_impl.h"

/* Metadata bytes of one row: pos, mass, bias, logbeta, shift, first, last, kind, level. */
#define KV_META_ROW_BYTES (5 * sizeof(float) + 2 * sizeof(uint32_t) + 2)

static size_t arena_stat(unsigned arena, const char *what)
{
    char name[96];
    snprintf(name, sizeof name, "stats.arenas.%u.%s", arena, what);
    size_t v = 0, sz = sizeof v;
    if (mallctl(name, &v, &sz, NULL, 0) != 0)
        return 0;
    return v;
}

static void arena_figures(const kv_store_t *st, kv_stats_t *o)
{
    uint64_t epoch = 1;
    size_t sz = sizeof epoch;
    mallctl("epoch", &epoch, &sz, &epoch, sz);
    size_t page = 4096;
    sz = sizeof page;
    mallctl("arenas.page", &page, &sz, NULL, 0);
    o->je_allocated =
        arena_stat(st->arena, "small.allocated") + arena_stat(st->arena, "large.allocated");
    o->je_active = arena_stat(st->arena, "pactive") * page;
    o->je_resident = arena_stat(st->arena, "resident");
    o->je_mapped = arena_stat(st->arena, "mapped");
    o->je_arena = st->arena;
}

/* Adds a session's figures to o; blocks already counted in this walk (mark == epoch) are
 * skipped when `once`. Returns the session's non-block structure bytes. */
static void session_figures(kv_store_t *st, const kv_session_t *s, bool once, kv_stats_t *o)
{
    size_t structs = kv_charge(sizeof *s) + kv_charge(st->n_lane * sizeof(kv_lane_t));
    for (uint32_t l = 0; l < st->n_lane; l++) {
        const kv_lane_t *ln = &s->lanes[l];
        if (ln->cap)
            structs += kv_charge(ln->cap * sizeof(kv_bref_t));
        for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++) {
            kv_block_t *b = ln->b[i].blk;
            int t = kv_tier(b->type);
            if (ln->b[i].acc)
                structs += kv_acc_bytes(st);
            size_t rb = 2 * st->row_bytes[t] + KV_META_ROW_BYTES;
            for (uint32_t j = 0; j < b->n; j++) {
                o->kind_rows[b->kind[j]]++;
                o->kind_bytes[b->kind[j]] += rb;
            }
            o->rows += b->n;
            o->tier_rows[t] += b->n;
            if (once && b->mark == st->epoch)
                continue;
            b->mark = st->epoch;
            if (once && b->run && b->run->mark != st->epoch) { /* the store's: every run */
                b->run->mark = st->epoch;
                o->run_free_bytes += kv_run_free_bytes(st, b->run, false);
                o->runs++;
                o->run_free_slots += b->run->n_slot - b->run->used;
            }
            size_t c = st->block_charge[t];
            o->block_bytes += c;
            o->tier_bytes[t] += c;
            o->tier_blocks[t]++;
            o->blocks++;
            o->run_blocks += b->run != NULL;
            if (b->refs > 1)
                o->shared_bytes += c;
        }
    }
    for (const kv_run_t *r = s->runs; !once && r; r = r->nxt) { /* a session's: its own */
        o->run_free_bytes += kv_run_free_bytes(st, r, true);
        o->runs++;
        o->run_free_slots += r->n_slot - r->used;
    }
    o->struct_bytes += structs;
    o->transcript_bytes += kv_tr_bytes(&s->tr);
    o->transcript_disk_bytes += kv_tr_disk_bytes(&s->tr);
    o->tokens += s->tr.len;
    o->sessions++;
    o->lanes += st->n_lane;
}

static void finish(const kv_store_t *st, kv_stats_t *o)
{
    o->row_capacity = o->blocks * st->B;
    o->fragmentation = o->row_capacity ? 1.0 - (double)o->rows / (double)o->row_capacity : 0.0;
    o->over_hard = o->hard_limit && o->bytes > o->hard_limit ? o->bytes - o->hard_limit : 0;
    o->over_soft = o->soft_limit && o->bytes > o->soft_limit ? o->bytes - o->soft_limit : 0;
}

int kv_session_stats(kv_store_t *st, uint32_t sid, kv_stats_t *out)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    memset(out, 0, sizeof *out);
    st->epoch++;
    session_figures(st, s, false, out);
    out->bytes = s->bytes;
    out->peak = s->peak;
    out->hard_limit = s->hard;
    out->soft_limit = s->soft;
    finish(st, out);
    return 0;
}

void kv_store_stats(kv_store_t *st, kv_stats_t *out)
{
    memset(out, 0, sizeof *out);
    st->epoch++;
    for (uint32_t i = 0; i < st->n_sess; i++)
        session_figures(st, st->sess[i], true, out);
    out->overhead_bytes = st->overhead;
    out->bytes = st->bytes;
    out->peak = st->peak;
    out->hard_limit = st->hard;
    out->soft_limit = st->soft;
    finish(st, out);
    arena_figures(st, out);
}

int kv_stats_format(const kv_stats_t *s, char *buf, size_t cap)
{
    static const char *tier[KV_N_TIERS] = {"f32", "f16", "q8_0"};
    static const char *kind[KV_N_KINDS] = {"raw", "gist", "pooled"};
    size_t n = 0;
#define KV_PUT(...)                                                                                \
    do {                                                                                           \
        int k_ = snprintf(buf + (n < cap ? n : cap), n < cap ? cap - n : 0, __VA_ARGS__);          \
        if (k_ > 0)                                                                                \
            n += (size_t)k_;                                                                       \
    } while (0)
    KV_PUT("used_bytes:%zu\npeak_bytes:%zu\nhard_limit:%zu\nsoft_limit:%zu\n", s->bytes, s->peak,
           s->hard_limit, s->soft_limit);
    KV_PUT("over_hard:%zu\nover_soft:%zu\n", s->over_hard, s->over_soft);
    KV_PUT("block_bytes:%zu\nshared_bytes:%zu\nrun_free_bytes:%zu\nstruct_bytes:%zu\n"
           "transcript_bytes:%zu\ntranscript_disk_bytes:%zu\noverhead_bytes:%zu\n",
           s->block_bytes, s->shared_bytes, s->run_free_bytes, s->struct_bytes, s->transcript_bytes,
           s->transcript_disk_bytes, s->overhead_bytes);
    for (int t = 0; t < KV_N_TIERS; t++)
        KV_PUT("tier_%s_bytes:%zu\ntier_%s_blocks:%llu\ntier_%s_rows:%llu\n", tier[t],
               s->tier_bytes[t], tier[t], (unsigned long long)s->tier_blocks[t], tier[t],
               (unsigned long long)s->tier_rows[t]);
    for (int k = 0; k < KV_N_KINDS; k++)
        KV_PUT("kind_%s_bytes:%zu\nkind_%s_rows:%llu\n", kind[k], s->kind_bytes[k], kind[k],
               (unsigned long long)s->kind_rows[k]);
    KV_PUT("runs:%llu\nrun_blocks:%llu\nrun_free_slots:%llu\n", (unsigned long long)s->runs,
           (unsigned long long)s->run_blocks, (unsigned long long)s->run_free_slots);
    KV_PUT("rows:%llu\nblocks:%llu\nrow_capacity:%llu\nfragmentation:%.4f\n",
           (unsigned long long)s->rows, (unsigned long long)s->blocks,
           (unsigned long long)s->row_capacity, s->fragmentation);
    KV_PUT("tokens:%llu\nsessions:%u\nlanes:%u\n", (unsigned long long)s->tokens, s->sessions,
           s->lanes);
    KV_PUT("je_allocated:%zu\nje_active:%zu\nje_resident:%zu\nje_mapped:%zu\n", s->je_allocated,
           s->je_active, s->je_resident, s->je_mapped);
#undef KV_PUT
    return (int)n;
}

/* ---- the consistency walk ---- */

static int lane_check(kv_store_t *st, const kv_session_t *s, uint32_t l, uint32_t *raw,
                      err_info_t *e)
{
    const kv_lane_t *ln = &s->lanes[l];
    uint32_t rows = 0;
    float prev = -INFINITY;
    if (ln->n_blk + ln->n_pend > ln->cap)
        return err_set(e, ERR_INTERNAL, "session %u lane %u: %u+%u blocks, capacity %u", s->id, l,
                       ln->n_blk, ln->n_pend, ln->cap);
    for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++) {
        const kv_bref_t *r = &ln->b[i];
        const kv_block_t *b = r->blk;
        bool pend = i >= ln->n_blk;
        if (!b || kv_tier(b->type) < 0)
            return err_set(e, ERR_INTERNAL, "session %u lane %u block %u: bad block", s->id, l, i);
        if ((r->acc != NULL) != s->attn_acc)
            return err_set(e, ERR_INTERNAL, "session %u lane %u block %u: accumulator %s", s->id, l,
                           i, r->acc ? "present" : "missing");
        if (pend ? b->n != 0 : (b->n == 0 || b->n > st->B))
            return err_set(e, ERR_INTERNAL, "session %u lane %u block %u: %u rows", s->id, l, i,
                           b->n);
        if (b->refs > 1 && b->n != st->B)
            return err_set(e, ERR_INTERNAL, "session %u lane %u block %u: shared but not full",
                           s->id, l, i);
        if (!pend && i + 1 < ln->n_blk && ln->b[i + 1].blk->type == b->type && b->n != st->B)
            return err_set(e, ERR_INTERNAL,
                           "session %u lane %u block %u: %u rows but not the last of its run",
                           s->id, l, i, b->n);
        for (uint32_t j = 0; j < b->n; j++) {
            if (b->pos[j] < prev || !(b->pos[j] < (float)s->tr.len) || b->pos[j] < 0.0f)
                return err_set(e, ERR_INTERNAL,
                               "session %u lane %u row %u: position %g after %g (len %u)", s->id, l,
                               rows + j, b->pos[j], prev, s->tr.len);
            prev = b->pos[j];
            if (b->kind[j] >= KV_N_KINDS || b->first[j] > b->last[j] ||
                b->bias[j] != logf(b->mass[j]) || !(b->mass[j] > 0.0f))
                return err_set(e, ERR_INTERNAL, "session %u lane %u row %u: bad metadata", s->id, l,
                               rows + j);
            if (b->kind[j] == KV_KIND_RAW) {
                if (b->pos[j] != floorf(b->pos[j]) || b->mass[j] != 1.0f)
                    return err_set(e, ERR_INTERNAL, "session %u lane %u row %u: bad raw row", s->id,
                                   l, rows + j);
                raw[(uint32_t)b->pos[j]]++;
            }
        }
        rows += b->n;
    }
    if (rows != ln->n_rows)
        return err_set(e, ERR_INTERNAL, "session %u lane %u: %u rows in blocks, %u counted", s->id,
                       l, rows, ln->n_rows);
    return 0;
}

static int session_check(kv_store_t *st, const kv_session_t *s, size_t *nonblock, err_info_t *e)
{
    uint32_t *raw = calloc(s->tr.len + 1, sizeof *raw);
    if (!raw)
        return err_set(e, ERR_NOMEM, "check: out of memory");
    int rc = 0;
    for (uint32_t l = 0; l < st->n_lane && !rc; l++)
        rc = lane_check(st, s, l, raw, e);
    for (uint32_t p = 0; p < s->tr.len && !rc; p++)
        if (raw[p] != kv_tr_live_at(&s->tr, p))
            rc = err_set(e, ERR_INTERNAL, "session %u position %u: %u raw rows, live says %u",
                         s->id, p, raw[p], kv_tr_live_at(&s->tr, p));
    free(raw);
    if (rc)
        return rc;
    uint32_t mem = 0;
    for (uint32_t i = 0; i < s->tr.n_pages; i++) {
        const kv_tref_t *r = &s->tr.pages[i];
        mem += r->mem != NULL;
        if (!r->mem &&
            (r->slot == KV_NO_SLOT || s->tr.fd < 0 || (uint64_t)(i + 1) * KV_TPAGE > s->tr.len))
            return err_set(e, ERR_INTERNAL,
                           "session %u: transcript page %u is neither in memory nor a full page "
                           "in the spill file",
                           s->id, i);
    }
    if (mem != s->tr.n_mem)
        return err_set(e, ERR_INTERNAL, "session %u: %u transcript pages in memory, n_mem says %u",
                       s->id, mem, s->tr.n_mem);
    if (s->tr.n_pages > s->tr.cap_pages ||
        (uint64_t)s->tr.n_pages * KV_TPAGE < s->tr.len + (uint64_t)s->n_reserved)
        return err_set(e, ERR_INTERNAL, "session %u: transcript of %u positions in %u pages", s->id,
                       s->tr.len, s->tr.n_pages);
    kv_stats_t o = {0};
    session_figures(st, s, false, &o);
    size_t sum = o.block_bytes + o.run_free_bytes + o.struct_bytes + o.transcript_bytes;
    if (sum != s->bytes)
        return err_set(e, ERR_INTERNAL,
                       "session %u: charged %zu bytes, structures add up to %zu (blocks %zu, "
                       "runs' free slots %zu, structs %zu, transcript %zu)",
                       s->id, s->bytes, sum, o.block_bytes, o.run_free_bytes, o.struct_bytes,
                       o.transcript_bytes);
    *nonblock = o.struct_bytes + o.transcript_bytes;
    return 0;
}

int kv_store_check(kv_store_t *st, err_info_t *e)
{
    size_t total = st->overhead;
    if (st->overhead != kv_charge(st->cap_sess * sizeof(kv_session_t *)) +
                            kv_charge(2 * st->cfg.head_dim * sizeof(float)))
        return err_set(e, ERR_INTERNAL, "store overhead %zu does not add up", st->overhead);
    /* reference counts: count every lane's hold on each block */
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t k = 0; k < st->n_sess; k++)
            for (uint32_t l = 0; l < st->n_lane; l++) {
                const kv_lane_t *ln = &st->sess[k]->lanes[l];
                for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++)
                    ln->b[i].blk->seen = pass ? ln->b[i].blk->seen + 1 : 0;
            }
    for (uint32_t k = 0; k < st->n_sess; k++)
        for (uint32_t l = 0; l < st->n_lane; l++) {
            const kv_lane_t *ln = &st->sess[k]->lanes[l];
            for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++)
                if (ln->b[i].blk->seen != ln->b[i].blk->refs)
                    return err_set(e, ERR_INTERNAL,
                                   "session %u lane %u block %u: %u references, refs says %u",
                                   st->sess[k]->id, l, i, ln->b[i].blk->seen, ln->b[i].blk->refs);
        }
    /* payload runs: each one's `used` is the distinct blocks in it; every session's list
     * holds runs it owns, not empty, within their slots */
    for (int pass = 0; pass < 3; pass++) {
        st->epoch++;
        for (uint32_t k = 0; k < st->n_sess; k++)
            for (uint32_t l = 0; l < st->n_lane; l++) {
                const kv_lane_t *ln = &st->sess[k]->lanes[l];
                for (uint32_t i = 0; i < ln->n_blk + ln->n_pend; i++) {
                    kv_block_t *b = ln->b[i].blk;
                    if (!b->run || b->mark == st->epoch)
                        continue;
                    b->mark = st->epoch;
                    if (pass == 0)
                        b->run->seen = 0;
                    else if (pass == 1)
                        b->run->seen++;
                    else if (b->run->seen != b->run->used)
                        return err_set(e, ERR_INTERNAL,
                                       "session %u lane %u block %u: its run holds %u blocks, "
                                       "used says %u",
                                       st->sess[k]->id, l, i, b->run->seen, b->run->used);
                }
            }
    }
    for (uint32_t k = 0; k < st->n_sess; k++)
        for (const kv_run_t *r = st->sess[k]->runs; r; r = r->nxt)
            if (r->owner != st->sess[k] || r->used == 0 || r->next > r->n_slot ||
                r->used + (uint32_t)__builtin_popcount(r->lent) > r->next ||
                (r->prev && r->prev->nxt != r))
                return err_set(e, ERR_INTERNAL,
                               "session %u: a run of %u slots (%u carved, %u used, lent %#x) "
                               "is not its own or not in order",
                               st->sess[k]->id, r->n_slot, r->next, r->used, r->lent);
    for (uint32_t k = 0; k < st->n_sess; k++) {
        size_t nonblock = 0;
        int rc = session_check(st, st->sess[k], &nonblock, e);
        if (rc)
            return rc;
        total += nonblock;
    }
    kv_stats_t o;
    kv_store_stats(st, &o);
    total += o.block_bytes + o.run_free_bytes;
    if (total != st->bytes)
        return err_set(e, ERR_INTERNAL, "store: charged %zu bytes, structures add up to %zu",
                       st->bytes, total);
    bool stats = false;
    size_t sz = sizeof stats;
    if (mallctl("config.stats", &stats, &sz, NULL, 0) == 0 && stats && o.je_allocated != st->bytes)
        return err_set(e, ERR_INTERNAL, "store: charged %zu bytes, jemalloc's arena holds %zu",
                       st->bytes, o.je_allocated);
    return 0;
}
