/*
 * kvstore/kv_impl.h — the store's insides, shared by its .c files and nobody else.
 *
 * Memory: every allocation goes through kv_mem_alloc (charged: the store's arena, counted
 * at jemalloc's size class against the store and, when given, a session) or kv_scratch_alloc
 * (uncharged working memory freed before the call returns); both consult the test hook.
 * A block is two allocations: the header with its metadata arrays, and the payload (K rows
 * then V rows). Blocks are reference counted: after a fork, full blocks are shared, and a
 * shared block is never written (an edit copies it first).
 *
 * Payload runs: the blocks a lane appends (kv_reserve) may take their payloads from a run, one
 * allocation of 2 to KV_RUN_MAX payloads that the lane carves in order, so that a long lane's
 * rows lie in long stretches of memory (the attention pass reads them 1.3-1.4 times faster
 * than blocks allocated one by one, and runs of 4 as fast as longer ones: bench/depth.md). Every
 * block, in a run or not, is charged the same block_charge to each session holding it; a run's
 * slots that hold no block (not yet carved, or freed) are charged to the session that made the run,
 * its owner, so that what a session is charged stays what its memory takes, except the slots of
 * blocks a fork held last: freeing them must not push the owner over a limit, so they count in the
 * store only (and are not carved again). Appends carve runs only where no limit is set, neither
 * the session's nor the store's (kv_run_slots): under a budget a new block comes alone, and a
 * freed block's bytes go back at once. There, an edit (replace, evict, demote) settles the lanes
 * it touched instead (kv_lane_settle): their older blocks go into full runs, which have no free
 * slot to charge (only the run's record), and a run that loses a block is dissolved in the same
 * call, so that what the edit frees still goes back before it returns. A run is freed with its
 * last block, and outlives its owner only while forks hold blocks of it (its free slots then
 * count in the store only). Setting a limit dissolves the runs with free slots that a session
 * alone holds (kv_runs_dissolve).
 *
 * Invariants between calls (checked by kv_store_check): a lane's rows are ordered by
 * position; no block is empty; within each maximal run of same-type blocks every block but
 * the last is full; a payload run's `used` is the blocks in it, and it is on its owner's
 * list; counters equal what a walk over the structures adds up.
 */
#ifndef GISTD_KVSTORE_KV_IMPL_H
#define GISTD_KVSTORE_KV_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "kvstore/kvstore.h"

#define KV_KIND_DEAD     0xff  /* a row marked for removal inside an edit */
#define KV_TPAGE         1024u /* transcript positions per page (6 KiB) */
#define KV_PAYLOAD_ALIGN 64u

#define KV_RUN_MAX 4u /* payloads a run holds at most (a power of two: kv_run_slots) */

typedef struct kv_session kv_session_t;
typedef struct kv_lane kv_lane_t;

typedef struct kv_run {
    uint8_t *mem;              /* n_slot payloads of the tier, one after another */
    uint32_t tier, n_slot;     /* tier index; slots */
    uint32_t next;             /* slots carved in order so far */
    uint32_t used;             /* slots holding a block (a run with none is freed) */
    uint32_t lent;             /* bit i: slot i was freed by another session (a fork's last
                                  hold): not charged to the owner, never carved again */
    uint32_t mark;             /* walk epoch: counts it once */
    uint32_t movable;          /* kv_runs_dissolve's count of its blocks s alone holds */
    uint32_t seen;             /* blocks in it seen by kv_store_check */
    kv_session_t *owner;       /* charged the free slots; NULL once it is destroyed */
    kv_lane_t *lane;           /* the lane that carves it while it is the lane's open run */
    struct kv_run *prev, *nxt; /* the owner's runs */
} kv_run_t;

typedef struct kv_block {
    uint32_t refs; /* lanes holding it (more than one only for shared, full blocks) */
    uint32_t n;    /* rows in use */
    uint32_t type; /* DT_F32, DT_F16 or DT_Q8_0 */
    uint32_t mark; /* walk epoch: counts a shared block once */
    uint32_t seen; /* references seen by kv_store_check */
    kv_run_t *run; /* the run holding the payload, or NULL: its own allocation */
    uint8_t *k;    /* [cap][row_bytes] into the payload allocation */
    uint8_t *v;    /* [cap][row_bytes] */
    float *pos;    /* [cap] metadata arrays, inside the header allocation */
    float *mass;
    float *bias; /* log(mass) */
    float *logbeta;
    float *shift; /* text position - model position */
    uint32_t *first;
    uint32_t *last;
    uint8_t *kind;
    uint8_t *level;
} kv_block_t;

/* A lane's hold on a block; the accumulator is the lane's own (not shared with forks). */
typedef struct kv_bref {
    kv_block_t *blk;
    float *acc; /* [cap] or NULL when the session keeps no accumulators */
} kv_bref_t;

struct kv_lane {
    kv_bref_t *b; /* [cap]: n_blk blocks in position order, then n_pend reserved ones */
    uint32_t n_blk;
    uint32_t n_pend;
    uint32_t cap;
    uint32_t n_rows;
    kv_run_t *open; /* the run its next appended blocks are carved from, or NULL */
};

typedef struct kv_tpage {
    uint32_t tok[KV_TPAGE];
    uint16_t live[KV_TPAGE]; /* lanes holding the position as a raw row */
} kv_tpage_t;

#define KV_NO_SLOT    UINT32_MAX
#define KV_TPAGE_DISK (KV_TPAGE * sizeof(uint32_t)) /* a spilled page: its token ids */

/* A transcript page: in memory, on disk (spilled: every position's live count 0, so only the
 * token ids are kept), or both (brought back after a spill; the disk copy stays valid, since
 * a full page's tokens never change, so spilling it again writes nothing). */
typedef struct kv_tref {
    kv_tpage_t *mem; /* the page, or NULL while it lives only in the spill file */
    uint32_t slot;   /* its copy in the spill file (at slot * KV_TPAGE_DISK), or KV_NO_SLOT */
} kv_tref_t;

typedef struct kv_transcript {
    uint32_t len;
    uint32_t n_pages; /* pages in the table (some may be reserved beyond len) */
    uint32_t cap_pages;
    uint32_t n_mem;    /* of them, in memory */
    uint32_t zlo, zhi; /* pages [zlo, zhi) where a live count fell to 0 since the last
                          spill pass (zlo >= zhi: none) */
    kv_tref_t *pages;  /* [cap_pages] */
    int fd;            /* the spill file (a fork holds a dup of its parent's), or -1 */
    char name[24];     /* its name under the store's spill_dir (unlinked at creation) */
    int spill_errno;   /* the last spill pass's failure (0: none), and its page */
    uint32_t spill_page;
} kv_transcript_t;

struct kv_session {
    uint32_t id;
    size_t hard, soft;
    size_t bytes, peak;
    bool attn_acc;
    uint32_t n_reserved; /* rows of the pending reservation, 0 when none */
    float shift;         /* transcript length - the next row's model position */
    kv_lane_t *lanes;    /* [n_lane] */
    kv_run_t *runs;      /* the runs it owns */
    kv_transcript_t tr;
};

struct kv_store {
    kv_store_config_t cfg;
    uint32_t n_lane;
    uint32_t B; /* block_rows */
    unsigned arena;
    bool arena_ok;
    size_t row_bytes[KV_N_TIERS];
    size_t payload_bytes[KV_N_TIERS]; /* 2 * B * row_bytes, requested */
    size_t hdr_bytes;                 /* block header + metadata arrays, requested */
    size_t block_charge[KV_N_TIERS];  /* nallocx(header) + nallocx(payload) */
    size_t hard, soft;
    size_t bytes, peak;
    size_t overhead; /* store-wide charged structures */
    kv_session_t **sess;
    uint32_t n_sess, cap_sess;
    uint32_t next_id;
    uint32_t epoch;
    float *scratch; /* [2][head_dim] for conversions */
};

/* ---- memory (store.c) ---- */
int kv_tier(uint32_t type); /* tier index, or -1 */
size_t kv_charge(size_t bytes);
size_t kv_charge_aligned(size_t bytes);
void *kv_mem_alloc(kv_store_t *st, kv_session_t *s, size_t bytes);
void *kv_mem_alloc_aligned(kv_store_t *st, kv_session_t *s, size_t bytes);
void kv_mem_free(kv_store_t *st, kv_session_t *s, void *p, size_t bytes);
void kv_mem_free_aligned(kv_store_t *st, kv_session_t *s, void *p, size_t bytes);
void *kv_scratch_alloc(kv_store_t *st, size_t bytes);
void kv_charge_session(kv_store_t *st, kv_session_t *s, size_t bytes);
void kv_uncharge_session(kv_session_t *s, size_t bytes);
/* ERR_BUDGET with a message when `need` more bytes would cross the session's or the
 * store's hard limit (need_global may differ: shared blocks). */
int kv_budget_check(kv_store_t *st, kv_session_t *s, size_t need_session, size_t need_global,
                    const char *what, err_info_t *e);
kv_session_t *kv_session_find(const kv_store_t *st, uint32_t sid);
int kv_session_add(kv_store_t *st, kv_session_t *s, err_info_t *e);
int kv_session_alloc(kv_store_t *st, const kv_session_config_t *cfg, kv_session_t **out);
void kv_session_free(kv_store_t *st, kv_session_t *s);

/* ---- blocks and lanes (lane.c) ---- */
kv_block_t *kv_block_new(kv_store_t *st, kv_session_t *s, uint32_t type);
/* The slots of the run a lane of s would make for `want` more blocks: a power of two up to
 * KV_RUN_MAX, at most half the lane's blocks (so that a run's free slots are at most a
 * quarter of them), or 1 (no run) for a short lane or when a limit (the session's or the
 * store's) is set. */
uint32_t kv_run_slots(const kv_store_t *st, const kv_session_t *s, const kv_lane_t *ln,
                      uint32_t want);
/* A block of `type` for lane ln of s: carved from the lane's open run, else from a new run of
 * `slots` slots (slots > 1), else allocated alone. Charges s as kv_block_new does, plus a new
 * run's free slots. */
kv_block_t *kv_block_carve(kv_store_t *st, kv_session_t *s, kv_lane_t *ln, uint32_t type,
                           uint32_t slots);
/* What kv_block_carve of k blocks (the run sizes as given) charges s: the exact figure. */
size_t kv_carve_need(const kv_store_t *st, const kv_lane_t *ln, uint32_t type, uint32_t k,
                     uint32_t slots);
/* Bytes a run's free slots take (its charge less its blocks' payloads): all of them (the
 * store's figure), or those charged to its owner (owner: less the slots forks freed). */
size_t kv_run_free_bytes(const kv_store_t *st, const kv_run_t *r, bool owner);
/* Makes r (or none) the run lane ln carves its next blocks from, keeping the back pointers
 * (run->lane) of the old open run and of r in step. */
void kv_lane_set_open(kv_lane_t *ln, kv_run_t *r);
/* Leaves s's runs to the forks that still hold blocks of them (at s's destruction). */
void kv_runs_orphan(kv_session_t *s);
/* Closes s's lanes' open runs, then moves the blocks of each of s's runs with a slot that
 * holds no block into allocations of their own and frees the run, where no fork holds a block
 * of it (a run whose allocations fail, or that the store's hard limit has no room to move,
 * stays as it was), so that once a limit is set a block's bytes go with it:
 * kv_session_set_limits and kv_store_set_limits call it. Full runs stay: they have no slot to
 * give back. Moves rows: views of s's lanes taken before are stale. */
void kv_runs_dissolve(kv_store_t *st, kv_session_t *s);
/* Blocks at the end of a lane that kv_lane_settle leaves out of runs: appends write the last
 * one, and an edit frees blocks from the end first (repack packs rows forward). */
#define KV_SETTLE_TAIL 2u
/* After an edit of lane ln of s under a limit (the session's or the store's; an edit runs
 * only with no reservation pending): a run of the lane that lost a block is dissolved (its other blocks move to
 * allocations of their own, so the free slot's bytes go back), then the lane's stretches of
 * blocks in no run (s's alone, one type, all but the last KV_SETTLE_TAIL) are gathered into
 * full runs of KV_RUN_MAX, or 2, in lane order. Best effort: a run that would cross a hard
 * limit on the way (it is allocated before the old payloads go) or whose allocation fails is
 * not made, and everything stays consistent. Moves rows. */
void kv_lane_settle(kv_store_t *st, kv_session_t *s, kv_lane_t *ln);
void kv_block_ref(kv_store_t *st, kv_session_t *s, kv_block_t *b);
void kv_block_unref(kv_store_t *st, kv_session_t *s, kv_block_t *b);
/* Copies row sb:si to db:di (same type) with its metadata; acc arrays may be NULL. */
void kv_row_copy(const kv_store_t *st, kv_block_t *db, float *dacc, uint32_t di,
                 const kv_block_t *sb, const float *sacc, uint32_t si);
/* Writes an f32 row with metadata into b:i, converting to b's type. */
void kv_row_put(kv_store_t *st, kv_block_t *b, uint32_t i, const float *k, const float *v,
                const kv_row_meta_t *m);
void kv_row_get_meta(const kv_block_t *b, uint32_t i, kv_row_meta_t *m);
void kv_bref_release(kv_store_t *st, kv_session_t *s, kv_bref_t *r);
size_t kv_acc_bytes(const kv_store_t *st);
kv_lane_t *kv_lane_at(const kv_store_t *st, kv_session_t *s, uint32_t layer, uint32_t head);

/* An insertion group: n rows of one type that go before old row `at` (at == n_rows: at the
 * end). Rows come from f32 data, or (k == NULL) from old rows old0.. converted. */
typedef struct kv_ins {
    uint32_t at, n, type;
    const float *k, *v;        /* [n][head_dim] */
    const kv_row_meta_t *meta; /* [n] */
    uint32_t old0;
} kv_ins_t;

/* One lane's edit: delete old rows, insert groups; prepared (all allocation) then committed
 * (no failure). The plan fields belong to lane.c. */
typedef struct kv_edit {
    const uint32_t *del; /* sorted old indices to delete, or NULL: the range below */
    uint32_t n_del;
    uint32_t del_lo, del_hi;
    kv_ins_t *ins; /* sorted by at */
    uint32_t n_ins;
    /* plan */
    bool active;
    const kv_ins_t *inplace; /* the one group, written over its deleted rows (no blocks) */
    uint32_t fb, rb;         /* first touched block; first block that may be written */
    uint32_t *starts;        /* [n_blk + 1] scratch */
    kv_block_t **priv;       /* [n_blk - rb] private copies of shared blocks */
    kv_bref_t *fresh;        /* new blocks of the groups, in order */
    uint32_t n_fresh;
    kv_bref_t *split; /* blocks for segments cut off by interior insertion points */
    uint32_t n_split;
    kv_bref_t *list; /* [n_list] scratch: the block list being built */
    uint32_t n_list;
    kv_bref_t *arr; /* the lane's new array when it must grow */
    uint32_t arr_cap;
    void *scratch;
} kv_edit_t;

/* Plans an edit (allocating its scratch: ERR_NOMEM) and sets *need to the bytes prepare
 * will charge (the session and the store alike). Then prepare (ERR_NOMEM: call abort),
 * and commit or abort. */
int kv_edit_plan(kv_store_t *st, kv_session_t *s, const kv_lane_t *ln, kv_edit_t *ed, size_t *need);
int kv_edit_prepare(kv_store_t *st, kv_session_t *s, const kv_lane_t *ln, kv_edit_t *ed);
void kv_edit_abort(kv_store_t *st, kv_session_t *s, kv_edit_t *ed);
void kv_edit_commit(kv_store_t *st, kv_session_t *s, kv_lane_t *ln, kv_edit_t *ed);

/* ---- transcript (transcript.c) ---- */
void kv_tr_init(kv_transcript_t *tr);
size_t kv_tr_need(const kv_transcript_t *tr, uint32_t n);
int kv_tr_reserve(kv_store_t *st, kv_session_t *s, uint32_t n);
void kv_tr_release_unused(kv_store_t *st, kv_session_t *s);
void kv_tr_append(kv_transcript_t *tr, const uint32_t *tokens, uint32_t n, uint16_t live);
/* A raw row at pos joins (hold: its page must be in memory) or leaves (unhold) a lane. */
void kv_tr_hold(kv_transcript_t *tr, uint32_t pos);
void kv_tr_unhold(kv_transcript_t *tr, uint32_t pos);
uint16_t kv_tr_live_at(const kv_transcript_t *tr, uint32_t pos); /* 0 on a spilled page */
/* Positions [pos0, pos0+n) (pos0 + n <= len): tokens read back from the spill file where
 * spilled (ERR_IO naming the file when that fails). Either output may be NULL. */
int kv_tr_read(const kv_store_t *st, const kv_session_t *s, uint32_t pos0, uint32_t n,
               uint32_t *tokens, uint16_t *live, err_info_t *e);
void kv_tr_free(kv_store_t *st, kv_session_t *s);
int kv_tr_copy(kv_store_t *st, kv_session_t *dst, const kv_transcript_t *src, err_info_t *e);
size_t kv_tr_bytes(const kv_transcript_t *tr);
size_t kv_tr_disk_bytes(const kv_transcript_t *tr);
size_t kv_tr_copy_bytes(const kv_transcript_t *tr); /* what kv_tr_copy would charge */
/* Spills the full pages whose live counts fell to 0 since the last pass (all of them when
 * `all`). A page whose write fails stays in memory and is retried by the next pass; the
 * failure is remembered (kv_tr_spill_error) and returned (ERR_IO, naming the file). */
int kv_tr_spill(kv_store_t *st, kv_session_t *s, bool all, err_info_t *e);
/* Appends the remembered spill failure to a message, e.g. a budget refusal's. */
void kv_tr_spill_note(const kv_store_t *st, const kv_session_t *s, err_info_t *e);
/* Restores a transcript into an empty one: pages with a bit in `held` (or not full) in
 * memory, the others straight to the spill file when the store has one. */
size_t kv_tr_restore_need(const kv_store_t *st, uint32_t len, const uint8_t *held);
int kv_tr_restore(kv_store_t *st, kv_session_t *s, const uint32_t *tokens, uint32_t len,
                  const uint8_t *held, err_info_t *e);

/* Spilled pages that raw rows about to be written (kv_span_replace) need back in memory:
 * planned (need: the bytes they will charge), prepared (allocated and read: ERR_NOMEM or
 * ERR_IO), then installed or aborted. */
typedef struct kv_tr_fault {
    uint32_t n;
    uint32_t *idx;   /* [n] page indices */
    kv_tpage_t **pg; /* [n] pages read back, until installed */
} kv_tr_fault_t;
size_t kv_tr_fault_need(const kv_tr_fault_t *f);
int kv_tr_fault_prepare(kv_store_t *st, kv_session_t *s, kv_tr_fault_t *f, err_info_t *e);
void kv_tr_fault_install(kv_session_t *s, kv_tr_fault_t *f);
void kv_tr_fault_abort(kv_store_t *st, kv_session_t *s, kv_tr_fault_t *f);

#endif
