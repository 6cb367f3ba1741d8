/*
 * kvstore/transcript.c — a session's cold transcript: the token id of every position ever
 * appended (4 bytes) and how many lanes still hold it as a raw row (2 bytes), in pages of
 * KV_TPAGE positions so that growing it never copies what is there (only the small page
 * table is reallocated, doubling).
 *
 * The cold tier on disk. With a spill_dir, a full page whose live counts are all 0 (no lane
 * holds any of its positions raw: they were gisted, merged or evicted everywhere) is written
 * to the session's spill file and freed, so a session's charged bytes stop growing with its
 * history: what stays in memory is the table (16 bytes a page) and the pages raw rows still
 * need. Only token ids go to disk (the counts are 0 by definition), 4 KiB a page, and a
 * page's tokens never change once it is full, so its disk copy stays valid forever: a page
 * brought back into memory (re-expansion raises a count) and spilled again writes nothing.
 *
 * When: eagerly, after every edit that lowered a count (kvstore/ops.c runs the pass after
 * evict, replace and demote), over only the pages where a count reached 0. Then the charged
 * bytes say what the session really holds in memory, and the policy's watermarks never
 * compact rows to pay for history that could have gone to disk. Lazily (when a budget
 * refuses) would leave those bytes charged and make the policy compact for them.
 *
 * The file: one per session, created at its first spill as spill_dir/gistd-transcript-XXXXXX
 * (O_CLOEXEC) and unlinked at once, so nothing is left behind by any exit, a crash
 * included, and its space returns when the last descriptor closes. Append-only: a page is
 * written once, at the end, and read with pread. A fork holds a dup of its parent's
 * descriptor and reads the pages spilled before the fork from it; both append to the same
 * file later (each at its end, one thread), and the file lives while either does. One
 * file per store would outlive the sessions whose pages it holds, growing forever in a
 * daemon that runs for weeks; one per session returns its space when the session goes.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvstore/kv_impl.h"

static uint32_t pages_for(uint32_t len)
{
    return (uint32_t)(((uint64_t)len + KV_TPAGE - 1) / KV_TPAGE);
}

void kv_tr_init(kv_transcript_t *tr)
{
    memset(tr, 0, sizeof *tr);
    tr->fd = -1;
}

size_t kv_tr_bytes(const kv_transcript_t *tr)
{
    return tr->n_mem * kv_charge(sizeof(kv_tpage_t)) + kv_charge(tr->cap_pages * sizeof(kv_tref_t));
}

size_t kv_tr_disk_bytes(const kv_transcript_t *tr)
{
    return (size_t)(tr->n_pages - tr->n_mem) * KV_TPAGE_DISK;
}

/* The page table capacity needed for np pages. */
static uint32_t table_cap(const kv_transcript_t *tr, uint32_t np)
{
    if (np <= tr->cap_pages)
        return tr->cap_pages;
    uint32_t cap = tr->cap_pages ? 2 * tr->cap_pages : 4;
    return cap > np ? cap : np;
}

size_t kv_tr_need(const kv_transcript_t *tr, uint32_t n)
{
    uint32_t np = pages_for(tr->len + n);
    size_t need = 0;
    if (np > tr->n_pages)
        need += (np - tr->n_pages) * kv_charge(sizeof(kv_tpage_t));
    uint32_t cap = table_cap(tr, np);
    if (cap != tr->cap_pages)
        need += kv_charge(cap * sizeof(kv_tref_t));
    return need;
}

size_t kv_tr_copy_bytes(const kv_transcript_t *tr)
{
    kv_transcript_t empty = {0};
    uint32_t np = pages_for(tr->len);
    size_t need = np ? kv_charge(table_cap(&empty, np) * sizeof(kv_tref_t)) : 0;
    for (uint32_t i = 0; i < np; i++)
        if (tr->pages[i].mem)
            need += kv_charge(sizeof(kv_tpage_t));
    return need;
}

/* ---- the spill file ---- */

/* errno the test hook injects into the next read or write of a spill file, or 0. */
static int hook_io(const kv_store_t *st, bool write)
{
    return st->cfg.hook.io_error ? st->cfg.hook.io_error(st->cfg.hook.ctx, write) : 0;
}

static int io_fail(const kv_store_t *st, const kv_session_t *s, const char *what, uint32_t page,
                   int err, err_info_t *e)
{
    return err_set(e, ERR_IO, "spill file %s/%s of session %u: %s transcript page %u: %s",
                   st->cfg.spill_dir, s->tr.name[0] ? s->tr.name : "gistd-transcript-XXXXXX", s->id,
                   what, page, strerror(err));
}

/* Reads n bytes at off, all of them (a short file is EIO). 0 or an errno. */
static int pread_all(const kv_store_t *st, int fd, void *buf, size_t n, off_t off)
{
    int inj = hook_io(st, false);
    if (inj)
        return inj;
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (char *)buf + got, n - got, off + (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno;
        if (k == 0)
            return EIO;
        got += (size_t)k;
    }
    return 0;
}

static int pwrite_all(const kv_store_t *st, int fd, const void *buf, size_t n, off_t off)
{
    int inj = hook_io(st, true);
    if (inj)
        return inj;
    size_t put = 0;
    while (put < n) {
        ssize_t k = pwrite(fd, (const char *)buf + put, n - put, off + (off_t)put);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno;
        put += (size_t)k;
    }
    return 0;
}

/* Creates the session's spill file (once). 0 or an errno. */
static int spill_open(const kv_store_t *st, kv_transcript_t *tr)
{
    if (tr->fd >= 0)
        return 0;
    char path[4096];
    int k = snprintf(path, sizeof path, "%s/gistd-transcript-XXXXXX", st->cfg.spill_dir);
    if (k < 0 || (size_t)k >= sizeof path)
        return ENAMETOOLONG;
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        return errno;
    unlink(path); /* lives while a descriptor does */
    tr->fd = fd;
    snprintf(tr->name, sizeof tr->name, "%s", strrchr(path, '/') + 1);
    return 0;
}

/* Writes page i at the end of the file (aligned to a slot: a write that failed half-way
 * leaves a tail the next one skips). 0 or an errno. */
static int spill_write(const kv_store_t *st, kv_transcript_t *tr, uint32_t i)
{
    int err = spill_open(st, tr);
    if (err)
        return err;
    struct stat sb;
    if (fstat(tr->fd, &sb) != 0)
        return errno;
    uint64_t slot = ((uint64_t)sb.st_size + KV_TPAGE_DISK - 1) / KV_TPAGE_DISK;
    if (slot >= KV_NO_SLOT)
        return EFBIG;
    err =
        pwrite_all(st, tr->fd, tr->pages[i].mem->tok, KV_TPAGE_DISK, (off_t)(slot * KV_TPAGE_DISK));
    if (err)
        return err;
    tr->pages[i].slot = (uint32_t)slot;
    return 0;
}

static bool page_idle(const kv_transcript_t *tr, uint32_t i)
{
    const kv_tpage_t *pg = tr->pages[i].mem;
    if (!pg || (uint64_t)(i + 1) * KV_TPAGE > tr->len)
        return false; /* on disk already, or not full: appends still write it */
    for (uint32_t j = 0; j < KV_TPAGE; j++)
        if (pg->live[j])
            return false;
    return true;
}

int kv_tr_spill(kv_store_t *st, kv_session_t *s, bool all, err_info_t *e)
{
    kv_transcript_t *tr = &s->tr;
    if (!st->cfg.spill_dir)
        return 0;
    uint32_t lo = all ? 0 : tr->zlo, hi = all ? tr->n_pages : tr->zhi;
    if (hi > tr->n_pages)
        hi = tr->n_pages;
    tr->zlo = tr->zhi = 0;
    for (uint32_t i = lo; i < hi; i++) {
        if (!page_idle(tr, i))
            continue;
        if (tr->pages[i].slot == KV_NO_SLOT) {
            int err = spill_write(st, tr, i);
            if (err) { /* the page stays; the next pass tries it again */
                tr->spill_errno = err;
                tr->spill_page = i;
                tr->zlo = i;
                tr->zhi = hi;
                return io_fail(st, s, "writing", i, err, e);
            }
        }
        kv_mem_free(st, s, tr->pages[i].mem, sizeof(kv_tpage_t));
        tr->pages[i].mem = NULL;
        tr->n_mem--;
    }
    tr->spill_errno = 0;
    return 0;
}

void kv_tr_spill_note(const kv_store_t *st, const kv_session_t *s, err_info_t *e)
{
    if (!e || !s->tr.spill_errno)
        return;
    size_t n = strlen(e->msg);
    snprintf(e->msg + n, sizeof e->msg - n,
             " (the transcript could not be spilled: spill file %s/%s, page %u: %s)",
             st->cfg.spill_dir, s->tr.name[0] ? s->tr.name : "gistd-transcript-XXXXXX",
             s->tr.spill_page, strerror(s->tr.spill_errno));
}

/* ---- growing and appending ---- */

int kv_tr_reserve(kv_store_t *st, kv_session_t *s, uint32_t n)
{
    kv_transcript_t *tr = &s->tr;
    if ((uint64_t)tr->len + n > UINT32_MAX - KV_TPAGE)
        return ERR_RANGE;
    uint32_t np = pages_for(tr->len + n);
    if (np <= tr->n_pages)
        return 0;
    uint32_t cap = table_cap(tr, np);
    kv_tref_t *table = tr->pages;
    if (cap != tr->cap_pages) {
        table = kv_mem_alloc(st, s, cap * sizeof *table);
        if (!table)
            return ERR_NOMEM;
        if (tr->n_pages)
            memcpy(table, tr->pages, tr->n_pages * sizeof *table);
    }
    uint32_t got = tr->n_pages;
    for (; got < np; got++) {
        table[got] =
            (kv_tref_t){.mem = kv_mem_alloc(st, s, sizeof(kv_tpage_t)), .slot = KV_NO_SLOT};
        if (!table[got].mem)
            break;
    }
    if (got < np) {
        for (uint32_t i = tr->n_pages; i < got; i++)
            kv_mem_free(st, s, table[i].mem, sizeof(kv_tpage_t));
        if (table != tr->pages)
            kv_mem_free(st, s, table, cap * sizeof *table);
        return ERR_NOMEM;
    }
    if (table != tr->pages) {
        if (tr->pages)
            kv_mem_free(st, s, tr->pages, tr->cap_pages * sizeof *tr->pages);
        tr->pages = table;
        tr->cap_pages = cap;
    }
    tr->n_mem += np - tr->n_pages;
    tr->n_pages = np;
    return 0;
}

void kv_tr_release_unused(kv_store_t *st, kv_session_t *s)
{
    kv_transcript_t *tr = &s->tr;
    uint32_t np = pages_for(tr->len);
    while (tr->n_pages > np) { /* beyond len: never full, so in memory */
        kv_mem_free(st, s, tr->pages[--tr->n_pages].mem, sizeof(kv_tpage_t));
        tr->n_mem--;
    }
    if (tr->n_pages == 0 && tr->pages) {
        kv_mem_free(st, s, tr->pages, tr->cap_pages * sizeof *tr->pages);
        tr->pages = NULL;
        tr->cap_pages = 0;
    }
}

void kv_tr_append(kv_transcript_t *tr, const uint32_t *tokens, uint32_t n, uint16_t live)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = tr->len + i;
        kv_tpage_t *pg = tr->pages[p / KV_TPAGE].mem;
        pg->tok[p % KV_TPAGE] = tokens[i];
        pg->live[p % KV_TPAGE] = live;
    }
    tr->len += n;
}

void kv_tr_hold(kv_transcript_t *tr, uint32_t pos)
{
    kv_tpage_t *pg = tr->pages[pos / KV_TPAGE].mem;
    assert(pg && "a raw row on a spilled transcript page");
    pg->live[pos % KV_TPAGE]++;
}

void kv_tr_unhold(kv_transcript_t *tr, uint32_t pos)
{
    uint32_t i = pos / KV_TPAGE;
    kv_tpage_t *pg = tr->pages[i].mem;
    if (--pg->live[pos % KV_TPAGE])
        return;
    if (tr->zlo >= tr->zhi) {
        tr->zlo = i;
        tr->zhi = i + 1;
    } else {
        tr->zlo = i < tr->zlo ? i : tr->zlo;
        tr->zhi = i + 1 > tr->zhi ? i + 1 : tr->zhi;
    }
}

uint16_t kv_tr_live_at(const kv_transcript_t *tr, uint32_t pos)
{
    const kv_tpage_t *pg = tr->pages[pos / KV_TPAGE].mem;
    return pg ? pg->live[pos % KV_TPAGE] : 0;
}

int kv_tr_read(const kv_store_t *st, const kv_session_t *s, uint32_t pos0, uint32_t n,
               uint32_t *tokens, uint16_t *live, err_info_t *e)
{
    const kv_transcript_t *tr = &s->tr;
    for (uint32_t i = 0; i < n;) {
        uint32_t p = pos0 + i, pi = p / KV_TPAGE, off = p % KV_TPAGE;
        uint32_t k = KV_TPAGE - off < n - i ? KV_TPAGE - off : n - i;
        const kv_tref_t *r = &tr->pages[pi];
        if (r->mem) {
            if (tokens)
                memcpy(tokens + i, r->mem->tok + off, k * sizeof *tokens);
            if (live)
                memcpy(live + i, r->mem->live + off, k * sizeof *live);
        } else {
            if (tokens) {
                int err = pread_all(st, tr->fd, tokens + i, k * sizeof *tokens,
                                    (off_t)r->slot * KV_TPAGE_DISK + off * sizeof *tokens);
                if (err)
                    return io_fail(st, s, "reading", pi, err, e);
            }
            if (live)
                memset(live + i, 0, k * sizeof *live);
        }
        i += k;
    }
    return 0;
}

void kv_tr_free(kv_store_t *st, kv_session_t *s)
{
    kv_transcript_t *tr = &s->tr;
    for (uint32_t i = 0; i < tr->n_pages; i++)
        if (tr->pages[i].mem)
            kv_mem_free(st, s, tr->pages[i].mem, sizeof(kv_tpage_t));
    if (tr->pages)
        kv_mem_free(st, s, tr->pages, tr->cap_pages * sizeof *tr->pages);
    if (tr->fd >= 0)
        close(tr->fd);
    kv_tr_init(tr);
}

/* The page table of a transcript made whole at once (a fork's copy, a restore): room for np
 * pages, none in it yet. */
static int new_table(kv_store_t *st, kv_session_t *s, uint32_t np, err_info_t *e)
{
    kv_transcript_t *tr = &s->tr, empty = {0};
    const uint32_t cap = table_cap(&empty, np);
    tr->pages = kv_mem_alloc(st, s, cap * sizeof *tr->pages);
    if (!tr->pages)
        return err_set(e, ERR_NOMEM, "no memory for the transcript's page table");
    tr->cap_pages = cap;
    return 0;
}

int kv_tr_copy(kv_store_t *st, kv_session_t *dst, const kv_transcript_t *src, err_info_t *e)
{
    kv_transcript_t *tr = &dst->tr;
    uint32_t np = pages_for(src->len);
    if (np == 0)
        return 0;
    int rc = new_table(st, dst, np, e);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < np; i++) {
        tr->pages[i] = (kv_tref_t){.slot = src->pages[i].slot};
        tr->n_pages = i + 1;
        if (!src->pages[i].mem)
            continue;
        tr->pages[i].mem = kv_mem_alloc(st, dst, sizeof(kv_tpage_t));
        if (!tr->pages[i].mem) {
            tr->n_pages = i; /* kv_tr_free then frees what was copied */
            return err_set(e, ERR_NOMEM, "no memory for the transcript's pages");
        }
        memcpy(tr->pages[i].mem, src->pages[i].mem, sizeof(kv_tpage_t));
        tr->n_mem++;
    }
    if (src->fd >= 0) {
        tr->fd = fcntl(src->fd, F_DUPFD_CLOEXEC, 0);
        if (tr->fd < 0) {
            tr->fd = -1;
            return err_set(e, ERR_IO, "spill file %s/%s: cannot share it with the fork: %s",
                           st->cfg.spill_dir, src->name, strerror(errno));
        }
        memcpy(tr->name, src->name, sizeof tr->name);
    }
    tr->len = src->len;
    tr->zlo = src->zlo;
    tr->zhi = src->zhi;
    return 0;
}

/* ---- restoring (kvstore/snapshot.c) ---- */

static bool restore_in_memory(const kv_store_t *st, uint32_t len, const uint8_t *held, uint32_t i)
{
    return !st->cfg.spill_dir || held[i] || (uint64_t)(i + 1) * KV_TPAGE > len;
}

size_t kv_tr_restore_need(const kv_store_t *st, uint32_t len, const uint8_t *held)
{
    kv_transcript_t empty = {0};
    uint32_t np = pages_for(len);
    size_t need = np ? kv_charge(table_cap(&empty, np) * sizeof(kv_tref_t)) : 0;
    for (uint32_t i = 0; i < np; i++)
        if (restore_in_memory(st, len, held, i))
            need += kv_charge(sizeof(kv_tpage_t));
    return need;
}

int kv_tr_restore(kv_store_t *st, kv_session_t *s, const uint32_t *tokens, uint32_t len,
                  const uint8_t *held, err_info_t *e)
{
    kv_transcript_t *tr = &s->tr;
    uint32_t np = pages_for(len);
    if (np == 0)
        return 0;
    int rc = new_table(st, s, np, e);
    if (rc)
        return rc;
    tr->len = len;
    kv_tpage_t *buf = NULL;
    for (uint32_t i = 0; i < np; i++) {
        uint32_t k = len - i * KV_TPAGE < KV_TPAGE ? len - i * KV_TPAGE : KV_TPAGE;
        bool mem = restore_in_memory(st, len, held, i);
        tr->pages[i] = (kv_tref_t){.slot = KV_NO_SLOT};
        tr->pages[i].mem = mem ? kv_mem_alloc(st, s, sizeof(kv_tpage_t)) : buf;
        if (!tr->pages[i].mem && !mem) /* a page to spill goes through one scratch page */
            tr->pages[i].mem = buf = kv_scratch_alloc(st, sizeof *buf);
        if (!tr->pages[i].mem) {
            tr->n_pages = i;
            free(buf);
            return err_set(e, ERR_NOMEM, "no memory for the transcript's pages");
        }
        kv_tpage_t *pg = tr->pages[i].mem;
        memset(pg, 0, sizeof *pg);
        memcpy(pg->tok, tokens + (size_t)i * KV_TPAGE, k * sizeof *tokens);
        tr->n_pages = i + 1;
        if (mem) {
            tr->n_mem++;
            continue;
        }
        int err = spill_write(st, tr, i);
        tr->pages[i].mem = NULL;
        if (err) {
            free(buf);
            return io_fail(st, s, "writing", i, err, e);
        }
    }
    free(buf);
    return 0;
}

/* ---- bringing spilled pages back ---- */

size_t kv_tr_fault_need(const kv_tr_fault_t *f)
{
    return f->n * kv_charge(sizeof(kv_tpage_t));
}

int kv_tr_fault_prepare(kv_store_t *st, kv_session_t *s, kv_tr_fault_t *f, err_info_t *e)
{
    for (uint32_t j = 0; j < f->n; j++) {
        uint32_t i = f->idx[j];
        kv_tpage_t *pg = kv_mem_alloc(st, s, sizeof *pg);
        if (!pg) {
            kv_tr_fault_abort(st, s, f);
            return err_set(e, ERR_NOMEM, "no memory to bring transcript page %u back", i);
        }
        f->pg[j] = pg;
        memset(pg->live, 0, sizeof pg->live);
        int err = pread_all(st, s->tr.fd, pg->tok, KV_TPAGE_DISK,
                            (off_t)s->tr.pages[i].slot * KV_TPAGE_DISK);
        if (err) {
            kv_tr_fault_abort(st, s, f);
            return io_fail(st, s, "reading", i, err, e);
        }
    }
    return 0;
}

void kv_tr_fault_install(kv_session_t *s, kv_tr_fault_t *f)
{
    for (uint32_t j = 0; j < f->n; j++) {
        s->tr.pages[f->idx[j]].mem = f->pg[j];
        f->pg[j] = NULL;
        s->tr.n_mem++;
    }
}

void kv_tr_fault_abort(kv_store_t *st, kv_session_t *s, kv_tr_fault_t *f)
{
    for (uint32_t j = 0; j < f->n; j++) {
        if (f->pg[j])
            kv_mem_free(st, s, f->pg[j], sizeof(kv_tpage_t));
        f->pg[j] = NULL;
    }
}
