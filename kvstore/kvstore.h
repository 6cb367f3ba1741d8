/*
 * kvstore/kvstore.h — the hierarchical, memory-bounded KV store.
 *
 * Owns every K/V row of every session: rows live in fixed-size blocks (block_rows rows of
 * one payload type: f32, f16 or q8_0 for hot rows, q8_0 for warm ones) allocated from a jemalloc
 * arena of the store's own; metadata (position, mass, kind, level, source span, retention
 * log-beta, log-mass bias) sits in arrays beside the payload, llama.cpp KV cells style.
 * A lane is the rows of one (session, layer, kv-head), ordered by position; a session also
 * keeps a cold transcript (the token id of every position ever appended, and how many lanes
 * still hold each position as a raw row). Every byte the store allocates is counted, to the
 * allocator's size class, against the session that holds it and against the store; hard
 * limits are never crossed, soft watermarks tell the policy when to compact.
 *
 * The store knows the model only by shapes (n_layer, n_head_kv, head_dim) and, for pooled
 * rows, its RoPE parameters (kvstore/kv_pool.h). It hands the forward pass its rows as
 * kv_chunk_t arrays whose fields mirror model/kv_view.h's mdl_kv_chunk_t.
 *
 * The cold tier: with a spill_dir, transcript pages that no lane holds raw any more (every
 * position's live count 0) are written to the session's spill file and freed, so their bytes
 * stop counting (kvstore/transcript.c says when and why). The store owns the file: it is
 * created at the session's first spill, unlinked at once (nothing is ever left in the
 * folder), and closed when the session is destroyed; a fork reads its parent's spilled pages
 * through its own descriptor of the same file (a session that has spilled, or whose parent
 * had, holds one descriptor, O_CLOEXEC, until it is destroyed). Reading spilled positions reads the
 * file (an I/O failure is ERR_IO naming it); a call that gives a spilled position a raw row again
 * brings its page back into memory first, charged like any allocation. Nothing else about a
 * session changes when its pages spill: every verb reads the same tokens and counts.
 *
 * Threading: a store and everything in it belong to one thread (the daemon's); no call is
 * thread-safe. Pointers handed out by kv_lane_view stay valid until the next call that
 * moves or frees the same session's rows (replace, evict, demote, accumulators, limits,
 * dissolve_runs, destroy);
 * kv_reserve and kv_commit move nothing, so views taken between them (as the forward pass
 * does) stay valid, showing the rows as they were. Edits of another session never touch
 * this one's rows, even where a fork shares them.
 *
 * Errors: actions return 0 or a negative ERR_* code (common/err.h) and, where they take an
 * err_info_t, say what was wrong. On error a call changes nothing: every verb that edits
 * several lanes does all of them or none. ERR_BUDGET says how many bytes were needed and how
 * many a limit left; ERR_NOMEM is an allocation that failed (or was made to fail by the test
 * hook); ERR_BUSY is a session with a reservation pending; ERR_IO is a spill file that could
 * not be read or written (the message names it and the error).
 */
#ifndef GISTD_KVSTORE_KVSTORE_H
#define GISTD_KVSTORE_KVSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

typedef struct kv_store kv_store_t;

/* Row kinds. */
enum kv_kind {
    KV_KIND_RAW = 0,    /* a token's own row (mass 1, integral position) */
    KV_KIND_GIST = 1,   /* a learned gist token's row */
    KV_KIND_POOLED = 2, /* a mass-weighted mean of member rows (kv_pool_rows) */
    KV_N_KINDS = 3
};

/* Payload tiers, the index of the per-tier figures in kv_stats_t. */
enum kv_tier { KV_TIER_F32 = 0, KV_TIER_F16 = 1, KV_TIER_Q8_0 = 2, KV_N_TIERS = 3 };

/* Test-only allocation hook: called before every allocation the store makes; returning
 * true makes that allocation fail (the store then answers ERR_NOMEM and changes nothing). */
typedef struct kv_alloc_hook {
    bool (*fail)(void *ctx, size_t bytes);
    /* called before every read (write false) and write of a spill file: an errno (EIO,
     * ENOSPC) makes that read or write fail with it, 0 lets it run; may be NULL */
    int (*io_error)(void *ctx, bool write);
    void *ctx;
} kv_alloc_hook_t;

typedef struct kv_store_config {
    uint32_t n_layer;      /* layers of the model */
    uint32_t n_head_kv;    /* kv-heads per layer */
    uint32_t head_dim;     /* elements of one K (and one V) row; a multiple of 32 for q8_0 */
    uint32_t block_rows;   /* rows per block; 0 means 64 */
    uint32_t hot_type;     /* payload of new rows: DT_F32, DT_F16 or DT_Q8_0 (common/dtype.h;
                              q8_0 needs head_dim a multiple of 32) */
    size_t hard_limit;     /* global limit in bytes; 0 means none */
    size_t soft_limit;     /* global watermark in bytes; 0 means none */
    const char *spill_dir; /* an existing folder for the transcript's spill files, or NULL:
                              the transcript stays in memory (kv_store_new copies the string) */
    kv_alloc_hook_t hook;
} kv_store_config_t;

typedef struct kv_session_config {
    size_t hard_limit; /* bytes; 0 means none (the global limit still holds) */
    size_t soft_limit; /* bytes; 0 means none */
    bool attn_acc;     /* keep an attention accumulator per row (H2O/TOVA scores) */
} kv_session_config_t;

/* A run of stored rows of one payload type: one block of a lane. Mirrors mdl_kv_chunk_t. */
typedef struct kv_chunk {
    uint32_t n;        /* rows */
    uint32_t type;     /* payload type of k and v: DT_F32, DT_F16 or DT_Q8_0 */
    const void *k;     /* [n][head_dim] in `type`, rows contiguous */
    const void *v;     /* [n][head_dim] in `type` */
    const float *bias; /* [n] log(mass) of each row: 0 for raw rows */
    float *attn_acc;   /* [n] accumulated attention, or NULL when the session keeps none */
} kv_chunk_t;

/* A row's metadata, as read (kv_lane_read) or given (gists, re-expanded rows). */
typedef struct kv_row_meta {
    float pos;      /* text position: the transcript's (fractional for pooled rows) */
    float shift;    /* how far the row has moved down in model-position space: K is rotated at
                       the model position pos - shift (0 until kv_session_remap moves it) */
    float mass;     /* tokens it stands for (> 0); the attention bias is log(mass) */
    float logbeta;  /* retention log-beta (<= 0), 0 when unknown */
    float attn;     /* accumulated attention (read only; 0 for rows given to the store) */
    uint32_t first; /* source span of positions [first, last] */
    uint32_t last;
    uint8_t kind;  /* enum kv_kind */
    uint8_t level; /* 0 raw, 1 sentence gist, 2 gist of gists, ... */
    uint8_t type;  /* payload type it is stored in (read only) */
} kv_row_meta_t;

/* New rows for every lane of a session (kv_commit). Lane l is layer l / n_head_kv,
 * kv-head l % n_head_kv. Positions are the transcript's next positions. */
typedef struct kv_append {
    uint32_t n;                   /* rows per lane = tokens appended */
    const uint32_t *tokens;       /* [n] token ids for the transcript */
    const float *const *k;        /* [n_lane] -> [n][head_dim] f32, after RoPE */
    const float *const *v;        /* [n_lane] -> [n][head_dim] f32 */
    const float *const *logbeta;  /* [n_lane] -> [n], or NULL for 0 */
    const float *const *attn_acc; /* [n_lane] -> [n] initial accumulators, or NULL for 0 */
} kv_append_t;

/* Replacement rows for every lane of a session (kv_span_replace); stored in the hot type. */
typedef struct kv_rows {
    const uint32_t *n;                /* [n_lane] rows for each lane (may be 0) */
    const float *const *k;            /* [n_lane] -> [n[l]][head_dim] f32, after RoPE */
    const float *const *v;            /* [n_lane] -> [n[l]][head_dim] f32 */
    const kv_row_meta_t *const *meta; /* [n_lane] -> [n[l]], ordered by pos */
} kv_rows_t;

/* INFO-memory style figures for a session or the whole store. Shared blocks (after a fork)
 * count fully in every session that holds them and once in the store. */
typedef struct kv_stats {
    size_t bytes; /* charged bytes: blocks + runs' free slots + structures + transcript
                     (+ overhead) */
    size_t peak;  /* highest `bytes` seen */
    size_t hard_limit, soft_limit;
    size_t over_hard;              /* bytes to free to get under the hard limit (0 when under) */
    size_t over_soft;              /* bytes to free to get under the soft watermark */
    size_t block_bytes;            /* payload + metadata blocks */
    size_t shared_bytes;           /* of block_bytes, in blocks shared between sessions */
    size_t run_free_bytes;         /* payload runs' slots that hold no block, and their records:
                                      a long lane's blocks are carved in order from runs of a
                                      few payloads, charged to the session that made them */
    uint64_t runs;                 /* payload runs (a session's: those it made) */
    uint64_t run_blocks;           /* blocks whose payload lies in a run */
    uint64_t run_free_slots;       /* those runs' slots that hold no block */
    size_t struct_bytes;           /* sessions, lane arrays, accumulators */
    size_t transcript_bytes;       /* cold transcript pages in memory and their table */
    size_t transcript_disk_bytes;  /* spilled pages, on disk, not charged (a fork's pages
                                      spilled before it count in both sessions) */
    size_t overhead_bytes;         /* store-wide tables (store figures only) */
    size_t tier_bytes[KV_N_TIERS]; /* block bytes by payload tier */
    uint64_t tier_blocks[KV_N_TIERS];
    uint64_t tier_rows[KV_N_TIERS];
    size_t kind_bytes[KV_N_KINDS]; /* live rows x (payload + metadata) by kind */
    uint64_t kind_rows[KV_N_KINDS];
    uint64_t rows, blocks;
    uint64_t row_capacity; /* blocks x block_rows */
    double fragmentation;  /* 1 - rows / row_capacity (0 when empty) */
    uint64_t tokens;       /* transcript positions */
    uint32_t sessions;
    uint32_t lanes;
    /* the store's jemalloc arena (store figures only): */
    size_t je_allocated; /* stats.arenas.<i>.small.allocated + large.allocated */
    size_t je_active;    /* pactive x page size */
    size_t je_resident;
    size_t je_mapped;
    uint32_t je_arena; /* the arena's index, for further mallctl queries */
} kv_stats_t;

/* ---- store ---- */

/* Creates a store with its own jemalloc arena. ERR_INVAL for bad shapes or types, ERR_IO for
 * a spill_dir that is not a folder this process can write in. */
int kv_store_new(const kv_store_config_t *cfg, kv_store_t **out, err_info_t *e);
/* Destroys every session and the arena. NULL-safe; sets *p to NULL. */
void kv_store_destroy(kv_store_t **p);

/* Changes the global hard limit and soft watermark (0 = none). Always succeeds unless
 * soft > hard; *excess (may be NULL) gets the bytes that must be freed to get under the new
 * hard limit. Nothing is freed here but the free slots of every session's payload runs (a
 * limit set dissolves them: kv_session_dissolve_runs); the rest is the policy's job. */
int kv_store_set_limits(kv_store_t *st, size_t hard, size_t soft, size_t *excess);
void kv_store_stats(kv_store_t *st, kv_stats_t *out);
/* The store's charged bytes (kv_store_stats's `bytes`) and the limits in force (either output
 * may be NULL), from the counters the store keeps as it allocates, as Redis keeps
 * used_memory: O(1), where kv_store_stats walks every block and row. For callers that read
 * only the bytes: watermark checks, budgets, events. */
size_t kv_store_bytes(const kv_store_t *st);
void kv_store_limits(const kv_store_t *st, size_t *hard, size_t *soft);
/* Writes the figures as `name:value` lines (Redis INFO style) into buf (at most cap bytes,
 * NUL-terminated when cap > 0); returns the length the whole text needs, like snprintf. */
int kv_stats_format(const kv_stats_t *s, char *buf, size_t cap);

/* Walks every structure and compares it with the counters, the invariants (lanes ordered by
 * position, no empty block, same-type runs packed, reference counts, transcript live
 * counts) and jemalloc's figures for the arena. 0, or ERR_INTERNAL saying what broke. For
 * tests and debugging: O(everything). */
int kv_store_check(kv_store_t *st, err_info_t *e);

/* Bytes a block of `type` is charged (payload + metadata, to the allocator's size classes),
 * 0 for a type the store does not hold. */
size_t kv_block_bytes(const kv_store_t *st, uint32_t type);
uint32_t kv_block_rows(const kv_store_t *st);
/* The configuration the store was made with (limits as at creation). */
const kv_store_config_t *kv_store_config(const kv_store_t *st);
/* Each session's even share of the global limit now in force (the soft watermark when set,
 * else the hard limit), or 0 when there is no global limit or no session. */
size_t kv_store_share(const kv_store_t *st);
uint32_t kv_lane_count(const kv_store_t *st);
uint32_t kv_head_dim(const kv_store_t *st);

/* ---- sessions ---- */

int kv_session_create(kv_store_t *st, const kv_session_config_t *cfg, uint32_t *sid, err_info_t *e);
/* Frees every row and structure of the session. ERR_NOTFOUND for an unknown id. */
int kv_session_destroy(kv_store_t *st, uint32_t sid);
/* A new session with the same transcript and rows. Full blocks are shared copy-on-write
 * (reference counted; a lane edit that would write one copies it first), partial ones are
 * copied. cfg NULL keeps the parent's limits and accumulator setting. */
int kv_session_fork(kv_store_t *st, uint32_t sid, const kv_session_config_t *cfg, uint32_t *child,
                    err_info_t *e);
int kv_session_stats(kv_store_t *st, uint32_t sid, kv_stats_t *out);
/* The session's charged bytes (kv_session_stats's `bytes`; 0 for an unknown session) and its
 * limits in force (ERR_NOTFOUND for an unknown session; either output may be NULL): O(1) in
 * the rows, like kv_store_bytes (the session is found among the live ones). */
size_t kv_session_bytes(const kv_store_t *st, uint32_t sid);
int kv_session_limits(const kv_store_t *st, uint32_t sid, size_t *hard, size_t *soft);
/* Sets the session's limits (0 = none; ERR_INVAL if soft > hard); *excess as for
 * kv_store_set_limits. A limit set dissolves the session's payload runs first (below). */
int kv_session_set_limits(kv_store_t *st, uint32_t sid, size_t hard, size_t soft, size_t *excess);
/* Payload runs: while neither the session nor the store has a limit, a lane's appended blocks
 * take their payloads from runs of up to 4, carved in order, so that a long lane's rows lie
 * one after another (the attention pass reads them faster); a run's slots that hold no block
 * are charged to the session (run_free_bytes), and a block freed inside a run gives its bytes
 * back only when the run empties. This moves the session's blocks out of its runs that have
 * such slots into allocations of their own (where no fork holds one; a run whose allocations
 * fail, or that the store's hard limit has no room to move, stays), so that from then on each
 * block's bytes go with it; full runs stay. Setting a limit (kv_session_set_limits,
 * kv_store_set_limits) does it; so should a caller that shrinks a session without one to a
 * byte target. Under a limit, the edits (replace, evict, demote) keep a lane's older blocks
 * in full runs themselves: they gather them after they edit the lane, and a run that lost a
 * block they dissolve in the same call, so a freed block's bytes still go back before the
 * call returns (where the store's hard limit leaves no room to move the run's other blocks,
 * its free slot stays charged until a later edit can). The runs' records (tens of bytes
 * each) count in run_free_bytes. Moves rows. 0, or ERR_NOTFOUND. */
int kv_session_dissolve_runs(kv_store_t *st, uint32_t sid);
/* Turns per-row attention accumulators on (zeroed) or off for every lane. */
int kv_session_set_attn_acc(kv_store_t *st, uint32_t sid, bool on, err_info_t *e);
/* Ids of the live sessions, in creation order; returns how many there are (fills at most
 * cap). */
uint32_t kv_session_list(const kv_store_t *st, uint32_t *ids, uint32_t cap);

/* ---- appending: find room, then commit ---- */

/* Reserves room for n new rows in every lane and n transcript positions: everything is
 * allocated here, so the matching kv_commit cannot fail for lack of memory. ERR_BUDGET (with
 * bytes needed vs available) or ERR_NOMEM changes nothing; ERR_BUSY if a reservation is
 * already pending. Limits count allocations: rows that fit in room already allocated (the
 * last blocks' free rows, the transcript page) are accepted even over a lowered limit. */
int kv_reserve(kv_store_t *st, uint32_t sid, uint32_t n, err_info_t *e);
/* Writes the reserved rows (a->n <= the reserved n; any rest is released): converts the
 * caller's f32 K/V to the hot type, appends tokens to the transcript at positions
 * len..len+n-1, and ends the reservation. ERR_INVAL (nothing changed) without one. */
int kv_commit(kv_store_t *st, uint32_t sid, const kv_append_t *a, err_info_t *e);
/* Releases a pending reservation (no-op when none). */
void kv_reserve_cancel(kv_store_t *st, uint32_t sid);

/* ---- reading ---- */

/* Rows and chunks (blocks) of a lane. */
int kv_lane_size(const kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head, uint32_t *rows,
                 uint32_t *chunks);
/* The lane as chunks, one per block, in position order; zero-copy. ERR_RANGE if cap is
 * smaller than the number of chunks (*n_chunks then says how many are needed). */
int kv_lane_view(const kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head,
                 kv_chunk_t *chunks, uint32_t cap, uint32_t *n_chunks);
/* Rows [row0, row0+n) of a lane: metadata and K/V dequantised to f32 ([n][head_dim]);
 * any output may be NULL. */
int kv_lane_read(const kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head, uint32_t row0,
                 uint32_t n, kv_row_meta_t *meta, float *k, float *v);
/* The model position the next appended row takes: the transcript length less the
 * session's shift (kv_session_remap, kvstore/kv_pool.h). */
int kv_session_next_mpos(const kv_store_t *st, uint32_t sid, float *mpos);
/* Transcript length (positions ever appended). */
int kv_transcript_len(const kv_store_t *st, uint32_t sid, uint32_t *len);
/* Positions [pos0, pos0+n): token ids and, in `live`, how many lanes still hold each one
 * as a raw row (0: gisted or evicted everywhere; kv_lane_count(): untouched). Either output
 * may be NULL. Spilled positions are read from the spill file: ERR_IO when that fails. */
int kv_transcript_read(const kv_store_t *st, uint32_t sid, uint32_t pos0, uint32_t n,
                       uint32_t *tokens, uint16_t *live);
/* Spills every full transcript page that no lane holds raw and is still in memory. The
 * verbs that free raw rows (replace, evict, demote) do this for the pages they emptied, and
 * do not fail when it fails (the page stays in memory, the next verb tries again, and a
 * budget refusal of the session says why); this one returns the failure: ERR_IO naming the
 * file. 0 with no spill_dir. */
int kv_transcript_spill(kv_store_t *st, uint32_t sid, err_info_t *e);

/* ---- compaction verbs ---- */

/* In every lane, replaces the rows whose position lies in [p0, p1] by the given rows, in
 * one step (all lanes or none). New rows must keep each lane ordered by position, lie below
 * the transcript length, have mass > 0 and first <= last; raw rows must sit at an integral
 * position with mass 1 and span [pos, pos] (re-expanding a span by prefilling it again).
 * Where a lane's new rows are no more than the rows they replace and those are hot rows,
 * they are written in their place and nothing is allocated, so a gist of a hot span always
 * goes through, even over a limit. Raw rows on spilled transcript pages bring those pages
 * back into memory first (charged: ERR_BUDGET, ERR_NOMEM or ERR_IO change nothing). */
int kv_span_replace(kv_store_t *st, uint32_t sid, float p0, float p1, const kv_rows_t *rows,
                    err_info_t *e);
/* Removes rows (indices in the lane's current order, strictly increasing) from one lane. */
int kv_lane_evict(kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head, const uint32_t *rows,
                  uint32_t n, err_info_t *e);
/* Converts rows (strictly increasing indices) of one lane to q8_0; rows already q8_0 stay.
 * ERR_UNSUPPORTED when head_dim is not a multiple of 32. */
int kv_lane_demote(kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head,
                   const uint32_t *rows, uint32_t n, err_info_t *e);
/* Converts to q8_0 the rows with position in [p0, p1] in every lane (all lanes or none). */
int kv_span_demote(kv_store_t *st, uint32_t sid, float p0, float p1, err_info_t *e);

/* ---- snapshots (kvstore/snapshot.c) ---- */

/* Writes the session (config, transcript, lanes with their block layout, metadata,
 * accumulators) to `path` atomically: a temporary file in the same folder, fsync, rename.
 * Format: versioned header, sections, FNV-1a 64 checksum of everything before it. */
int kv_snapshot_write(kv_store_t *st, uint32_t sid, const char *path, err_info_t *e);
/* Restores a snapshot as a new session (*sid) with bit-identical rows and layout; with a
 * spill_dir, the transcript pages no raw row holds go straight to the new session's spill
 * file (the restore is charged only for those kept in memory). cfg NULL
 * takes the limits and accumulator setting from the file. A file that is truncated, corrupt
 * (ERR_CORRUPT), of another version or shape (ERR_FORMAT) changes nothing. */
int kv_snapshot_read(kv_store_t *st, const char *path, const kv_session_config_t *cfg,
                     uint32_t *sid, err_info_t *e);

#endif
