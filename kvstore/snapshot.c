/*
 * kvstore/snapshot.c — a session to a file and back, bit-identically.
 *
 * Layout (little-endian; version 2):
 *   header (72 bytes): magic "GISTKVSN", u32 version, u32 header bytes, u64 file bytes,
 *     u32 n_layer, n_head_kv, head_dim, block_rows, hot_type, flags (1: accumulators),
 *     u64 hard limit, u64 soft limit, u32 transcript length, f32 the session's shift
 *     (transcript length - the next model position);
 *   transcript: u32 token id per position;
 *   per lane (layer-major): u32 rows, u32 blocks; per block: u32 type, u32 n, then n of
 *     each: f32 pos, f32 mass, f32 logbeta, f32 shift, u32 first, u32 last, u8 kind, u8 level
 *     (columns, one after another), the K payload (n rows), the V payload, and with
 *     accumulators n f32;
 *   trailer: u64 FNV-1a 64 of every byte before it.
 * Bias (log mass) and live counts are derived on restore; the block layout is kept, so the
 * restored lanes hand out the same chunks. Reading validates everything (sizes, checksum,
 * shapes, types, counts, order, packing) before it allocates, and changes nothing on error.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "kvstore/kv_impl.h"

#define SNAP_MAGIC   "GISTKVSN"
#define SNAP_VERSION 2u /* 2: model positions (shift) beside text positions */
#define SNAP_HEADER  72u
#define FNV_OFFSET   0xcbf29ce484222325ull
#define FNV_PRIME    0x100000001b3ull

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * FNV_PRIME;
    return h;
}

static void put32(uint8_t *p, uint32_t x)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(x >> (8 * i));
}

static void put64(uint8_t *p, uint64_t x)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(x >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- writing ---- */

typedef struct writer {
    FILE *f;
    uint64_t hash;
    uint64_t bytes;
    bool failed;
    int err; /* errno of the first failure (ENOSPC, EFBIG, EIO ...), for the message */
    err_info_t tr; /* a transcript page that could not be read back from the spill file */
} writer_t;

static void w_fail(writer_t *w)
{
    if (!w->failed)
        w->err = errno ? errno : EIO;
    w->failed = true;
}

static void w_raw(writer_t *w, const void *p, size_t n)
{
    if (w->failed || n == 0)
        return;
    w->hash = fnv1a(w->hash, p, n);
    w->bytes += n;
    if (fwrite(p, 1, n, w->f) != n)
        w_fail(w);
}

static void w_u32(writer_t *w, uint32_t x)
{
    uint8_t b[4];
    put32(b, x);
    w_raw(w, b, 4);
}

static void w_f32s(writer_t *w, const float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        w_u32(w, fbits(x[i]));
}

static void w_u32s(writer_t *w, const uint32_t *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        w_u32(w, x[i]);
}

static size_t snap_bytes(const kv_store_t *st, const kv_session_t *s)
{
    size_t n = SNAP_HEADER + 4 * (size_t)s->tr.len + 8;
    for (uint32_t l = 0; l < st->n_lane; l++) {
        const kv_lane_t *ln = &s->lanes[l];
        n += 8;
        for (uint32_t i = 0; i < ln->n_blk; i++) {
            const kv_block_t *b = ln->b[i].blk;
            n += 8 + (size_t)b->n *
                         (6 * 4 + 2 + 2 * st->row_bytes[kv_tier(b->type)] + (s->attn_acc ? 4 : 0));
        }
    }
    return n;
}

static void write_session(const kv_store_t *st, const kv_session_t *s, writer_t *w)
{
    uint8_t h[SNAP_HEADER] = {0};
    memcpy(h, SNAP_MAGIC, 8);
    put32(h + 8, SNAP_VERSION);
    put32(h + 12, SNAP_HEADER);
    put64(h + 16, snap_bytes(st, s));
    put32(h + 24, st->cfg.n_layer);
    put32(h + 28, st->cfg.n_head_kv);
    put32(h + 32, st->cfg.head_dim);
    put32(h + 36, st->B);
    put32(h + 40, st->cfg.hot_type);
    put32(h + 44, s->attn_acc ? 1u : 0u);
    put64(h + 48, s->hard);
    put64(h + 56, s->soft);
    put32(h + 64, s->tr.len);
    put32(h + 68, fbits(s->shift));
    w_raw(w, h, sizeof h);
    uint32_t tok[KV_TPAGE];
    for (uint32_t p = 0; p < s->tr.len && !w->failed; p += KV_TPAGE) {
        uint32_t k = s->tr.len - p < KV_TPAGE ? s->tr.len - p : KV_TPAGE;
        if (kv_tr_read(st, s, p, k, tok, NULL, &w->tr) != 0) {
            w->failed = true;
            w->err = EIO;
            break;
        }
        w_u32s(w, tok, k);
    }
    for (uint32_t l = 0; l < st->n_lane; l++) {
        const kv_lane_t *ln = &s->lanes[l];
        w_u32(w, ln->n_rows);
        w_u32(w, ln->n_blk);
        for (uint32_t i = 0; i < ln->n_blk; i++) {
            const kv_block_t *b = ln->b[i].blk;
            size_t rb = st->row_bytes[kv_tier(b->type)];
            w_u32(w, b->type);
            w_u32(w, b->n);
            w_f32s(w, b->pos, b->n);
            w_f32s(w, b->mass, b->n);
            w_f32s(w, b->logbeta, b->n);
            w_f32s(w, b->shift, b->n);
            w_u32s(w, b->first, b->n);
            w_u32s(w, b->last, b->n);
            w_raw(w, b->kind, b->n);
            w_raw(w, b->level, b->n);
            w_raw(w, b->k, b->n * rb);
            w_raw(w, b->v, b->n * rb);
            if (s->attn_acc)
                w_f32s(w, ln->b[i].acc, b->n);
        }
    }
    uint8_t t[8];
    put64(t, w->hash);
    w_raw(w, t, 8);
}

static void fsync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

int kv_snapshot_write(kv_store_t *st, uint32_t sid, const char *path, err_info_t *e)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return err_set(e, ERR_NOTFOUND, "snapshot: no session %u", sid);
    if (s->n_reserved)
        return err_set(e, ERR_BUSY, "snapshot: session %u has a reservation pending", sid);
    size_t plen = strlen(path);
    char *tmp = kv_scratch_alloc(st, plen + 16);
    if (!tmp)
        return err_set(e, ERR_NOMEM, "snapshot %s: out of memory", path);
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        const char *name = strerrorname_np(errno);
        int rc = err_set(e, ERR_IO, "snapshot %s: cannot create a temporary file: %s (%s)", path,
                         strerror(errno), name ? name : "?");
        free(tmp);
        return rc;
    }
    errno = 0;
    writer_t w = {.f = fdopen(fd, "wb"), .hash = FNV_OFFSET};
    if (!w.f) {
        w_fail(&w);
        close(fd);
    } else {
        write_session(st, s, &w);
        if (fflush(w.f) != 0 || fsync(fileno(w.f)) != 0)
            w_fail(&w);
        if (fclose(w.f) != 0)
            w_fail(&w);
    }
    if (!w.failed && w.bytes != snap_bytes(st, s)) {
        w.failed = true;
        w.err = EIO;
    }
    if (!w.failed && rename(tmp, path) != 0)
        w_fail(&w);
    if (w.failed && w.tr.code) {
        int rc = err_set(e, w.tr.code, "snapshot %s: %s", path, w.tr.msg);
        unlink(tmp);
        free(tmp);
        return rc;
    }
    if (w.failed) {
        /* the first failure is the cause (a full disk: ENOSPC; a file-size limit: EFBIG); the
         * temporary file goes, and a snapshot already at path stays as it was */
        const char *name = strerrorname_np(w.err);
        int rc = err_set(e, ERR_IO, "snapshot %s: write failed: %s (%s)", path, strerror(w.err),
                         name ? name : "?");
        unlink(tmp);
        free(tmp);
        return rc;
    }
    free(tmp);
    fsync_dir(path);
    return 0;
}

/* ---- reading ---- */

typedef struct reader {
    const uint8_t *p;
    size_t n, off;
    const char *path;
    err_info_t *e;
    uint8_t *held; /* [transcript pages] or NULL: set for pages a raw row holds */
} reader_t;

static bool r_need(reader_t *r, size_t n, const char *what)
{
    if (r->n - r->off >= n)
        return true;
    err_set(r->e, ERR_FORMAT, "snapshot %s: %s runs past the end at offset %zu", r->path, what,
            r->off);
    return false;
}

static uint32_t r_u32(reader_t *r)
{
    uint32_t x = get32(r->p + r->off);
    r->off += 4;
    return x;
}

/* Checks one block's rows in place (cursor at its first column) and, when b is given,
 * copies them into b. Returns false with e set. prev: the lane's last position so far. */
static bool r_block(reader_t *r, const kv_store_t *st, uint32_t ntok, uint32_t type, uint32_t n,
                    bool acc, uint32_t l, uint32_t bi, float *prev, kv_block_t *b, float *bacc)
{
    size_t rb = st->row_bytes[kv_tier(type)];
    size_t col = r->off;
    if (!r_need(r, (size_t)n * (26 + 2 * rb + (acc ? 4 : 0)), "a block"))
        return false;
    const uint8_t *pos = r->p + col, *mass = pos + 4 * n, *lb = mass + 4 * n, *sh = lb + 4 * n;
    const uint8_t *first = sh + 4 * n, *last = first + 4 * n, *kind = last + 4 * n;
    const uint8_t *level = kind + n, *k = level + n, *v = k + n * rb, *ac = v + n * rb;
    for (uint32_t j = 0; j < n; j++) {
        float p = bitsf(get32(pos + 4 * j)), m = bitsf(get32(mass + 4 * j));
        uint32_t f = get32(first + 4 * j), t = get32(last + 4 * j);
        const char *bad = NULL;
        if (!isfinite(p) || p < 0.0f || !(p < (float)ntok))
            bad = "position outside the transcript";
        else if (p < *prev)
            bad = "position out of order";
        else if (!(m > 0.0f) || !isfinite(m))
            bad = "mass not > 0";
        else if (!isfinite(bitsf(get32(sh + 4 * j))))
            bad = "model position not finite";
        else if (f > t || t >= ntok)
            bad = "source span outside the transcript";
        else if (kind[j] >= KV_N_KINDS)
            bad = "unknown kind";
        else if (kind[j] == KV_KIND_RAW && (p != floorf(p) || m != 1.0f))
            bad = "raw row with a fractional position or mass != 1";
        if (bad) {
            err_set(r->e, ERR_FORMAT, "snapshot %s: lane %u block %u row %u: %s (offset %zu)",
                    r->path, l, bi, j, bad, col);
            return false;
        }
        *prev = p;
        if (r->held && kind[j] == KV_KIND_RAW)
            r->held[(uint32_t)p / KV_TPAGE] = 1;
        if (b) {
            b->pos[j] = p;
            b->mass[j] = m;
            b->bias[j] = logf(m);
            b->logbeta[j] = bitsf(get32(lb + 4 * j));
            b->shift[j] = bitsf(get32(sh + 4 * j));
            b->first[j] = f;
            b->last[j] = t;
            b->kind[j] = kind[j];
            b->level[j] = level[j];
            if (bacc)
                bacc[j] = bitsf(get32(ac + 4 * j));
        }
    }
    if (b) {
        memcpy(b->k, k, n * rb);
        memcpy(b->v, v, n * rb);
        b->n = n;
    }
    r->off = (size_t)(ac - r->p) + (acc ? 4 * (size_t)n : 0);
    return true;
}

/* Walks the lanes: validates (s NULL; *need gets the bytes a restore charges) or fills s,
 * whose blocks and arrays are allocated here (false: out of memory, e set). */
static bool r_lanes(reader_t *r, kv_store_t *st, uint32_t ntok, bool acc, kv_session_t *s,
                    size_t *need)
{
    for (uint32_t l = 0; l < st->n_lane; l++) {
        if (!r_need(r, 8, "a lane header"))
            return false;
        uint32_t rows = r_u32(r), nb = r_u32(r), sum = 0, prev_type = UINT32_MAX, prev_n = 0;
        float prev = -INFINITY;
        if (nb > rows || (uint64_t)nb * 8 > r->n - r->off) {
            err_set(r->e, ERR_FORMAT, "snapshot %s: lane %u: %u blocks for %u rows", r->path, l, nb,
                    rows);
            return false;
        }
        kv_lane_t *ln = s ? &s->lanes[l] : NULL;
        if (nb)
            *need += kv_charge(nb * sizeof(kv_bref_t));
        if (ln && nb) {
            ln->b = kv_mem_alloc(st, s, nb * sizeof *ln->b);
            if (!ln->b)
                return !err_set(r->e, ERR_NOMEM, "snapshot %s: out of memory", r->path);
            memset(ln->b, 0, nb * sizeof *ln->b);
            ln->cap = nb;
        }
        for (uint32_t i = 0; i < nb; i++) {
            if (!r_need(r, 8, "a block header"))
                return false;
            size_t at = r->off;
            uint32_t type = r_u32(r), n = r_u32(r);
            int t = kv_tier(type);
            if (t < 0 || !st->row_bytes[t] || n == 0 || n > st->B) {
                err_set(r->e, ERR_FORMAT,
                        "snapshot %s: lane %u block %u: type %u with %u rows (offset %zu)", r->path,
                        l, i, type, n, at);
                return false;
            }
            if (type == prev_type && prev_n != st->B) {
                err_set(r->e, ERR_FORMAT,
                        "snapshot %s: lane %u block %u: follows a partial block of its type",
                        r->path, l, i);
                return false;
            }
            prev_type = type;
            prev_n = n;
            sum += n;
            *need += st->block_charge[t] + (acc ? kv_acc_bytes(st) : 0);
            kv_bref_t *ref = ln ? &ln->b[i] : NULL;
            if (ref) {
                ref->blk = kv_block_new(st, s, type);
                if (!ref->blk)
                    return !err_set(r->e, ERR_NOMEM, "snapshot %s: out of memory", r->path);
                ln->n_blk = i + 1;
                if (acc) {
                    ref->acc = kv_mem_alloc(st, s, st->B * sizeof(float));
                    if (!ref->acc)
                        return !err_set(r->e, ERR_NOMEM, "snapshot %s: out of memory", r->path);
                    memset(ref->acc, 0, st->B * sizeof(float));
                }
            }
            if (!r_block(r, st, ntok, type, n, acc, l, i, &prev, ref ? ref->blk : NULL,
                         ref ? ref->acc : NULL))
                return false;
        }
        if (sum != rows) {
            err_set(r->e, ERR_FORMAT, "snapshot %s: lane %u: blocks hold %u rows, header says %u",
                    r->path, l, sum, rows);
            return false;
        }
        if (ln) {
            ln->n_rows = rows;
            for (uint32_t i = 0; i < nb; i++) {
                const kv_block_t *b = ln->b[i].blk;
                for (uint32_t j = 0; j < b->n; j++)
                    if (b->kind[j] == KV_KIND_RAW)
                        kv_tr_hold(&s->tr, (uint32_t)b->pos[j]);
            }
        }
    }
    return true;
}

static int read_file(kv_store_t *st, const char *path, uint8_t **buf, size_t *n, err_info_t *e)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return err_set(e, ERR_IO, "snapshot %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return err_set(e, ERR_IO, "snapshot %s: not a regular file", path);
    }
    *n = (size_t)sb.st_size;
    *buf = kv_scratch_alloc(st, *n);
    if (!*buf) {
        close(fd);
        return err_set(e, ERR_NOMEM, "snapshot %s: no memory to read %zu bytes", path, *n);
    }
    size_t got = 0;
    while (got < *n) {
        ssize_t k = read(fd, *buf + got, *n - got);
        if (k <= 0) {
            int rc = err_set(e, ERR_IO, "snapshot %s: read failed at %zu", path, got);
            close(fd);
            free(*buf);
            return rc;
        }
        got += (size_t)k;
    }
    close(fd);
    return 0;
}

/* Checks the header and checksum; fills the config from it. */
static int check_header(const kv_store_t *st, const char *path, const uint8_t *buf, size_t n,
                        kv_session_config_t *cfg, uint32_t *ntok, err_info_t *e)
{
    if (n < 8 || memcmp(buf, SNAP_MAGIC, 8) != 0)
        return err_set(e, ERR_FORMAT, "snapshot %s: not a gistd KV snapshot (bad magic)", path);
    if (n < SNAP_HEADER + 8)
        return err_set(e, ERR_FORMAT, "snapshot %s: truncated: %zu bytes, header alone is %u", path,
                       n, SNAP_HEADER);
    uint32_t ver = get32(buf + 8), hb = get32(buf + 12);
    if (ver != SNAP_VERSION || hb != SNAP_HEADER)
        return err_set(e, ERR_FORMAT,
                       "snapshot %s: version %u (header %u bytes); this build reads version "
                       "%u",
                       path, ver, hb, SNAP_VERSION);
    uint64_t fb = get64(buf + 16);
    if (fb != n)
        return err_set(e, ERR_FORMAT,
                       "snapshot %s: truncated or padded: header says %llu bytes, "
                       "file has %zu",
                       path, (unsigned long long)fb, n);
    uint64_t want = get64(buf + n - 8), got = fnv1a(FNV_OFFSET, buf, n - 8);
    if (want != got)
        return err_set(e, ERR_CORRUPT,
                       "snapshot %s: checksum mismatch (stored %016llx, computed %016llx)", path,
                       (unsigned long long)want, (unsigned long long)got);
    uint32_t nl = get32(buf + 24), nh = get32(buf + 28), hd = get32(buf + 32), br = get32(buf + 36),
             hot = get32(buf + 40), flags = get32(buf + 44);
    if (nl != st->cfg.n_layer || nh != st->cfg.n_head_kv || hd != st->cfg.head_dim || br != st->B ||
        hot != st->cfg.hot_type)
        return err_set(e, ERR_FORMAT,
                       "snapshot %s: made for %u layers x %u kv-heads x %u dims, %u-row blocks, "
                       "hot type %u; this store is %u x %u x %u, %u, %u",
                       path, nl, nh, hd, br, hot, st->cfg.n_layer, st->cfg.n_head_kv,
                       st->cfg.head_dim, st->B, st->cfg.hot_type);
    if (flags > 1)
        return err_set(e, ERR_FORMAT, "snapshot %s: unknown flags %#x", path, flags);
    cfg->attn_acc = flags & 1;
    cfg->hard_limit = get64(buf + 48);
    cfg->soft_limit = get64(buf + 56);
    *ntok = get32(buf + 64);
    if (*ntok >= (1u << 24) || (uint64_t)*ntok * 4 > n - SNAP_HEADER - 8)
        return err_set(e, ERR_FORMAT, "snapshot %s: transcript of %u positions does not fit", path,
                       *ntok);
    if (cfg->hard_limit && cfg->soft_limit > cfg->hard_limit)
        return err_set(e, ERR_FORMAT, "snapshot %s: soft limit above hard limit", path);
    const float shift = bitsf(get32(buf + 68));
    if (!isfinite(shift) || shift < 0.0f || shift > (float)*ntok)
        return err_set(e, ERR_FORMAT, "snapshot %s: session shift %g outside [0, %u]", path,
                       shift, *ntok);
    return 0;
}

int kv_snapshot_read(kv_store_t *st, const char *path, const kv_session_config_t *cfg,
                     uint32_t *sid, err_info_t *e)
{
    err_info_t local;
    if (!e)
        e = &local;
    err_clear(e);
    uint8_t *buf = NULL, *held = NULL;
    uint32_t *tokens = NULL;
    size_t n = 0;
    int rc = read_file(st, path, &buf, &n, e);
    if (rc)
        return rc;
    kv_session_config_t fc;
    uint32_t ntok = 0;
    rc = check_header(st, path, buf, n, &fc, &ntok, e);
    if (rc)
        goto out;
    if (cfg) {
        bool acc = fc.attn_acc;
        fc = *cfg;
        fc.attn_acc = acc; /* the file says whether it carries accumulators */
    }
    held = kv_scratch_alloc(st, ntok / KV_TPAGE + 1);
    if (!held) {
        rc = err_set(e, ERR_NOMEM, "snapshot %s: out of memory", path);
        goto out;
    }
    reader_t r = {.p = buf,
                  .n = n - 8,
                  .off = SNAP_HEADER + 4 * (size_t)ntok,
                  .path = path,
                  .e = e,
                  .held = held};
    size_t need = kv_charge(sizeof(kv_session_t)) + kv_charge(st->n_lane * sizeof(kv_lane_t));
    if (!r_lanes(&r, st, ntok, fc.attn_acc, NULL, &need)) {
        rc = e->code;
        goto out;
    }
    r.held = NULL;
    need += kv_tr_restore_need(st, ntok, held);
    if (r.off != r.n) {
        rc =
            err_set(e, ERR_FORMAT, "snapshot %s: %zu bytes after the last lane", path, r.n - r.off);
        goto out;
    }
    size_t need_g = need;
    if (st->n_sess == st->cap_sess)
        need_g += kv_charge((st->cap_sess ? 2 * st->cap_sess : 8) * sizeof(kv_session_t *));
    kv_session_t probe = {.hard = fc.hard_limit};
    rc = kv_budget_check(st, &probe, need, need_g, "restoring a snapshot", e);
    if (rc) {
        err_prefix(e, "snapshot %s: ", path);
        goto out;
    }

    kv_session_t *s;
    if (kv_session_alloc(st, &fc, &s) != 0) {
        rc = err_set(e, ERR_NOMEM, "snapshot %s: out of memory", path);
        goto out;
    }
    tokens = kv_scratch_alloc(st, (size_t)ntok * sizeof *tokens);
    if (!tokens) {
        kv_session_free(st, s);
        rc = err_set(e, ERR_NOMEM, "snapshot %s: out of memory", path);
        goto out;
    }
    for (uint32_t p = 0; p < ntok; p++)
        tokens[p] = get32(buf + SNAP_HEADER + 4 * (size_t)p);
    rc = kv_tr_restore(st, s, tokens, ntok, held, e);
    if (rc) {
        kv_session_free(st, s);
        err_prefix(e, "snapshot %s: ", path);
        goto out;
    }
    r.off = SNAP_HEADER + 4 * (size_t)ntok;
    s->shift = bitsf(get32(buf + 68));
    size_t ignored = 0;
    if (!r_lanes(&r, st, ntok, fc.attn_acc, s, &ignored)) {
        kv_session_free(st, s);
        rc = e->code;
        goto out;
    }
    rc = kv_session_add(st, s, e);
    if (rc) {
        kv_session_free(st, s);
        goto out;
    }
    *sid = s->id;
out:
    free(tokens);
    free(held);
    free(buf);
    return rc;
}
