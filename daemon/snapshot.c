/*
 * daemon/snapshot.c — a session to a file and back: `snapshot`/`restore`, and every session
 * at shutdown and start-up when the daemon has a snapshot folder.
 *
 * Two files per session. DIR/session-<id>.kv is the KV store's own snapshot of the session's
 * rows and transcript (kv_snapshot_write: bit-identical on restore). DIR/session-<id>.gistd
 * holds what the daemon adds: settings (policy and its state, pins, template, sampling
 * defaults, limits), figures, the logits the session predicts its next token with, and every
 * token of its transcript and pending queue. Both are written whole under temporary names
 * before either replaces the previous pair (dmn_snapshot_write), so a failed snapshot leaves
 * the previous one as it was. When the .kv file is missing or does not match, the session
 * is restored from its tokens alone: it prefills them again before its next request (the
 * forward pass is deterministic, so a session that never compacted goes on as before).
 * At start-up, temporary files left by a snapshot that was cut short are logged and removed;
 * a .gistd that is short or corrupt is logged and not restored.
 *
 * A closed session whose snapshot is kept (written on request, or by the idle timeout) has a
 * third file, DIR/session-<id>.closed: it is not restored at start-up, `sessions` lists it,
 * and a Restore brings it back.
 *
 * Format of the .gistd file, little-endian: magic "GISTDSES", u32 version, the fields in
 * the order of write_body, then an FNV-1a 64 checksum of everything before it. Both files
 * are written atomically (temporary file, fsync, rename, fsync of the folder). A file that
 * is short, corrupt or of another version is refused with ERR_FORMAT or ERR_CORRUPT, and
 * nothing changes.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/dmn_impl.h"

#define SNAP_MAGIC   "GISTDSES"
#define SNAP_VERSION 5u
/* the flags word (it was text_started alone, 0 or 1) */
#define SNAP_TEXT_STARTED 1u
#define SNAP_KEPT         2u /* written on request: outlives a close */

/* ------------------------------------------------------------------ a byte buffer */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} buf_t;

static void put(buf_t *b, const void *src, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *t = realloc(b->p, cap);
        if (!t) {
            b->oom = true;
            return;
        }
        b->p = t;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_u32(buf_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, x, 4);
}

static void put_u64(buf_t *b, uint64_t v)
{
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_f32(buf_t *b, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(b, v);
}

static void put_str(buf_t *b, const char *s)
{
    const uint32_t n = (uint32_t)strlen(s);
    put_u32(b, n);
    put(b, s, n);
}

/* A reader over a byte range: every get checks the bounds. */
typedef struct rd {
    const uint8_t *p;
    size_t len, at;
    bool short_read;
} rd_t;

static const uint8_t *get(rd_t *r, size_t n)
{
    if (r->short_read || r->len - r->at < n) {
        r->short_read = true;
        return NULL;
    }
    const uint8_t *q = r->p + r->at;
    r->at += n;
    return q;
}

static uint32_t get_u32(rd_t *r)
{
    const uint8_t *x = get(r, 4);
    return x ? (uint32_t)x[0] | (uint32_t)x[1] << 8 | (uint32_t)x[2] << 16 | (uint32_t)x[3] << 24
             : 0;
}

static uint64_t get_u64(rd_t *r)
{
    uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}

static float get_f32(rd_t *r)
{
    uint32_t v = get_u32(r);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* A string of at most cap - 1 bytes into out. */
static void get_str(rd_t *r, char *out, size_t cap)
{
    uint32_t n = get_u32(r);
    if (n >= cap) {
        r->short_read = true;
        return;
    }
    const uint8_t *s = get(r, n);
    if (s) {
        memcpy(out, s, n);
        out[n] = 0;
    }
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ------------------------------------------------------------------ writing */

static char *snap_path(const dmn_t *d, uint32_t id, const char *suffix)
{
    size_t n = strlen(d->snapshot_dir) + 48;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/session-%u.gistd%s", d->snapshot_dir, id, suffix);
    return p;
}

static int write_body(const dmn_t *d, const dmn_session_t *s, uint64_t kv_sum, buf_t *b,
                      err_info_t *e)
{
    size_t hard = 0, soft = 0;
    kv_session_limits(d->store, s->rt.kv, &hard, &soft);
    put(b, SNAP_MAGIC, 8);
    put_u32(b, SNAP_VERSION);
    put_u32(b, s->id);
    put_str(b, s->name);
    put_str(b, s->cred);
    put_str(b, s->pol_name);
    put_str(b, s->tmpl->name);
    put_u32(b, s->pins.sink_tokens);
    put_u32(b, s->pins.recent_tokens);
    put_u32(b, s->pins.system_prompt);
    put_f32(b, s->sampling.temp);
    put_u32(b, (uint32_t)s->sampling.top_k);
    put_f32(b, s->sampling.top_p);
    put_f32(b, s->sampling.min_p);
    put_f32(b, s->sampling.repeat_penalty);
    put_u32(b, (uint32_t)s->sampling.repeat_last_n);
    put_u64(b, s->sampling.seed);
    put_u32(b, s->add_bos);
    put_u32(b, (s->text_started ? SNAP_TEXT_STARTED : 0) | (s->snap_kept ? SNAP_KEPT : 0));
    put_u64(b, hard);
    put_u64(b, soft);
    put_u64(b, s->prompt_tokens);
    put_u64(b, s->generated_tokens);
    put_u32(b, s->n_params);
    for (uint32_t i = 0; i < s->n_params; i++) {
        put_str(b, s->param_key[i]);
        put_str(b, s->param_value[i]);
    }
    put_u32(b, s->rt.have_logits);
    for (uint32_t i = 0; s->rt.have_logits && i < d->hp->n_vocab; i++)
        put_f32(b, s->rt.logits[i]);
    put_u64(b, kv_sum);
    put_u32(b, s->rt.n_past);
    const uint32_t n = s->rt.n_past + s->n_pend;
    put_u32(b, n);
    int32_t *ids = malloc(sizeof(int32_t) * (n ? n : 1));
    if (!ids)
        return err_set(e, ERR_NOMEM, "out of memory");
    int rc = dmn_session_tokens(d, s, 0, n, ids);
    for (uint32_t i = 0; !rc && i < n; i++)
        put_u32(b, (uint32_t)ids[i]);
    free(ids);
    if (rc)
        return err_set(e, rc, "cannot read session %u's transcript", s->id);
    uint8_t *pst = NULL;
    size_t pst_len = 0;
    if (pol_save(s->rt.pol, &pst, &pst_len))
        return err_set(e, ERR_NOMEM, "policy '%s' cannot save its state", s->pol_name);
    put_u32(b, (uint32_t)pst_len);
    put(b, pst, pst_len);
    free(pst);
    put_u64(b, fnv1a(b->p, b->len));
    return b->oom ? err_set(e, ERR_NOMEM, "out of memory") : 0;
}

/* "No space left on device (ENOSPC)": the reason a call failed, with errno's name. */
static int io_fail(err_info_t *e, const char *path, const char *what, int err)
{
    const char *name = strerrorname_np(err);
    return err_set(e, ERR_IO, "snapshot %s: %s: %s (%s)", path, what, strerror(err),
                   name ? name : "?");
}

/* Writes the .gistd body to tmp and makes it durable. On error tmp is removed. */
static int write_tmp(const char *tmp, const buf_t *b, err_info_t *e)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return io_fail(e, tmp, "cannot create it", errno);
    int rc = 0;
    for (size_t at = 0; !rc && at < b->len;) {
        ssize_t w = write(fd, b->p + at, b->len - at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = io_fail(e, tmp, "write failed", w < 0 ? errno : EIO);
        else
            at += (size_t)w;
    }
    if (!rc && fsync(fd) < 0)
        rc = io_fail(e, tmp, "fsync failed", errno);
    if (close(fd) < 0 && !rc)
        rc = io_fail(e, tmp, "close failed", errno);
    if (rc)
        unlink(tmp);
    return rc;
}

/* The last 8 bytes of a store snapshot (its FNV-1a trailer): what pairs it with a .gistd. */
static int kv_trailer(const char *path, uint64_t *sum, err_info_t *e)
{
    uint8_t t[8];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return io_fail(e, path, "open failed", errno);
    const off_t end = lseek(fd, 0, SEEK_END);
    const ssize_t got = end >= 8 ? pread(fd, t, 8, end - 8) : -1;
    const int err = errno;
    close(fd);
    if (got != 8)
        return got < 0 && end >= 8 ? io_fail(e, path, "read failed", err)
                                   : err_set(e, ERR_FORMAT, "%s: too short for a snapshot", path);
    *sum = 0;
    for (int i = 7; i >= 0; i--)
        *sum = *sum << 8 | t[i];
    return 0;
}

/*
 * A snapshot replaces the previous pair of files only once both new files are whole: the
 * store's rows go to DIR/session-<id>.gistd.kv.next, the body to DIR/session-<id>.gistd.tmp,
 * and only then are they renamed over the .kv and the .gistd (in that order). A failure on
 * the way (a full disk, a file-size limit, a folder that is gone or not a folder) removes
 * what it wrote and leaves the previous snapshot as it was. A crash between the two renames
 * leaves a new .kv beside the previous .gistd: restore_rows finds that they do not match and
 * the session is prefilled again from the .gistd's tokens. The .gistd names its .kv by the
 * .kv's checksum, so the pair is told apart even when the tokens agree (rows compacted
 * between the two snapshots).
 */
int dmn_snapshot_write(dmn_t *d, dmn_session_t *s, char **path_out, err_info_t *e)
{
    if (!d->snapshot_dir)
        return err_set(e, ERR_UNSUPPORTED, "the daemon was started without --snapshot-dir");
    buf_t b = {0};
    char *path = snap_path(d, s->id, ""), *tmp = snap_path(d, s->id, ".tmp");
    char *kvpath = snap_path(d, s->id, ".kv"), *kvnext = snap_path(d, s->id, ".kv.next");
    int rc = path && tmp && kvpath && kvnext ? 0 : err_set(e, ERR_NOMEM, "out of memory");
    uint64_t kv_sum = 0;
    if (!rc)
        rc = kv_snapshot_write(d->store, s->rt.kv, kvnext, e);
    if (!rc && (rc = kv_trailer(kvnext, &kv_sum, e)) != 0)
        unlink(kvnext);
    if (!rc && (rc = write_body(d, s, kv_sum, &b, e)) != 0)
        unlink(kvnext);
    if (!rc) {
        rc = write_tmp(tmp, &b, e);
        if (rc)
            unlink(kvnext);
    }
    if (!rc && rename(kvnext, kvpath) < 0) {
        rc = io_fail(e, kvpath, "rename failed", errno);
        unlink(kvnext);
        unlink(tmp);
    }
    if (!rc && rename(tmp, path) < 0) {
        rc = io_fail(e, path, "rename failed", errno);
        unlink(tmp);
    }
    if (!rc) {
        /* the renames themselves survive a crash once the folder is synced */
        int dfd = open(d->snapshot_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    if (!rc && path_out) {
        *path_out = path;
        path = NULL;
    }
    free(b.p);
    free(path);
    free(tmp);
    free(kvpath);
    free(kvnext);
    return rc;
}

void dmn_snapshot_remove(dmn_t *d, uint32_t id)
{
    if (!d->snapshot_dir)
        return;
    char *path = snap_path(d, id, ""), *kvpath = snap_path(d, id, ".kv");
    if (path && unlink(path) == 0)
        dmn_log(d, DMN_LOG_INFO, "removed %s", path);
    if (kvpath)
        unlink(kvpath);
    free(path);
    free(kvpath);
    dmn_snapshot_unmark_closed(d, id);
}

/* ------------------------------------------------------------------ closed sessions */

/* Whether a file name is "session-<id><suffix>" exactly, with an id above 0. */
static bool snap_name(const char *name, const char *suffix, uint32_t *id)
{
    unsigned v = 0;
    int at = -1;
    if (sscanf(name, "session-%u%n", &v, &at) != 1 || at < 0 || v == 0 || strcmp(name + at, suffix))
        return false;
    *id = v;
    return true;
}

/* DIR/session-<id>.closed: a closed session's snapshot, kept. The mark is a few lines of text
 * that `sessions` lists it by: "tokens N", "owner CRED", "name NAME". */
static char *closed_path(const dmn_t *d, uint32_t id)
{
    size_t n = strlen(d->snapshot_dir) + 48;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/session-%u.closed", d->snapshot_dir, id);
    return p;
}

int dmn_snapshot_mark_closed(dmn_t *d, const dmn_session_t *s, err_info_t *e)
{
    if (!d->snapshot_dir)
        return err_set(e, ERR_UNSUPPORTED, "the daemon was started without --snapshot-dir");
    char *path = closed_path(d, s->id);
    if (!path)
        return err_set(e, ERR_NOMEM, "out of memory");
    char name[DMN_NAME_LEN];
    snprintf(name, sizeof name, "%s", s->name);
    for (char *q = name; *q; q++)
        *q = *q == '\n' || *q == '\r' ? ' ' : *q;
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f ||
        fprintf(f, "tokens %u\nowner %s\nname %s\n", s->rt.n_past + s->n_pend, s->cred, name) < 0)
        rc = io_fail(e, path, "cannot write the closed mark", errno);
    if (f && fclose(f) != 0 && !rc)
        rc = io_fail(e, path, "cannot write the closed mark", errno);
    if (rc)
        unlink(path);
    free(path);
    return rc;
}

void dmn_snapshot_unmark_closed(dmn_t *d, uint32_t id)
{
    char *path = d->snapshot_dir ? closed_path(d, id) : NULL;
    if (path)
        unlink(path);
    free(path);
}

bool dmn_snapshot_closed_has(const dmn_t *d, uint32_t id)
{
    char *path = closed_path(d, id);
    const bool closed = path && access(path, F_OK) == 0;
    free(path);
    return closed;
}

uint32_t dmn_snapshot_closed(const dmn_t *d, dmn_closed_t **out)
{
    *out = NULL;
    DIR *dir = d->snapshot_dir ? opendir(d->snapshot_dir) : NULL;
    if (!dir)
        return 0;
    uint32_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        uint32_t id;
        if (!snap_name(de->d_name, ".closed", &id) || dmn_session_find(d, id))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            dmn_closed_t *t = realloc(*out, sizeof *t * cap);
            if (!t)
                break;
            *out = t;
        }
        dmn_closed_t *c = &(*out)[n];
        memset(c, 0, sizeof *c);
        c->id = id;
        char *path = closed_path(d, id);
        FILE *f = path ? fopen(path, "r") : NULL;
        struct stat st;
        if (f && fstat(fileno(f), &st) == 0) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            c->age_s = (double)(now.tv_sec - st.st_mtim.tv_sec) +
                       (now.tv_nsec - st.st_mtim.tv_nsec) * 1e-9;
        }
        char line[256];
        while (f && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            if (!strncmp(line, "tokens ", 7))
                c->tokens = (uint32_t)strtoul(line + 7, NULL, 10);
            else if (!strncmp(line, "owner ", 6))
                snprintf(c->cred, sizeof c->cred, "%.*s", (int)sizeof c->cred - 1, line + 6);
            else if (!strncmp(line, "name ", 5))
                snprintf(c->name, sizeof c->name, "%.*s", (int)sizeof c->name - 1, line + 5);
        }
        if (f)
            fclose(f);
        free(path);
        n++;
    }
    closedir(dir);
    return n;
}

/* ------------------------------------------------------------------ reading */

static int read_file(const char *path, uint8_t **out, size_t *len, err_info_t *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    uint8_t *p = malloc(cap);
    while (p) {
        n += fread(p + n, 1, cap - n, f);
        if (n < cap)
            break;
        uint8_t *t = realloc(p, cap *= 2);
        if (!t)
            free(p);
        p = t;
    }
    const bool bad = ferror(f);
    fclose(f);
    if (!p || bad) {
        free(p);
        return err_set(e, bad ? ERR_IO : ERR_NOMEM, "%s: cannot read it", path);
    }
    *out = p;
    *len = n;
    return 0;
}

/* Puts the rows of the store's snapshot under s, when it holds exactly the first n_past
 * tokens of ids, and makes s's policy again for them. 0 when it did; 1 (logged) when s keeps
 * its empty rows; -1 when the policy could not be made (the restore fails). */
static int restore_rows(dmn_t *d, dmn_session_t *s, uint32_t id, const int32_t *ids,
                        uint32_t n_past, uint64_t kv_sum)
{
    char *kvpath = snap_path(d, id, ".kv");
    uint32_t ksid = 0, len = 0;
    uint32_t *tr = malloc(sizeof(uint32_t) * (n_past ? n_past : 1));
    err_info_t ke;
    err_clear(&ke);
    uint64_t sum = 0;
    int rc =
        kvpath && tr ? kv_trailer(kvpath, &sum, &ke) : err_set(&ke, ERR_NOMEM, "out of memory");
    if (!rc && sum != kv_sum)
        rc = err_set(&ke, ERR_FORMAT,
                     "it is not the one this session's .gistd was written with (checksum %016llx, "
                     "expected %016llx: a crash between the two renames?)",
                     (unsigned long long)sum, (unsigned long long)kv_sum);
    if (!rc)
        rc = kv_snapshot_read(d->store, kvpath, NULL, &ksid, &ke);
    if (!rc)
        rc = kv_transcript_len(d->store, ksid, &len);
    if (!rc && len != n_past)
        rc = err_set(&ke, ERR_FORMAT, "it holds %u positions, the session %u", len, n_past);
    if (!rc && n_past)
        rc = kv_transcript_read(d->store, ksid, 0, n_past, tr, NULL);
    for (uint32_t i = 0; !rc && i < n_past; i++)
        if (tr[i] != (uint32_t)ids[i])
            rc = err_set(&ke, ERR_FORMAT, "its token at position %u differs", i);
    if (rc) {
        if (ksid)
            kv_session_destroy(d->store, ksid);
        dmn_log(d, DMN_LOG_WARN, "%s: %s; the session's tokens will be prefilled again",
                kvpath ? kvpath : "snapshot", err_msg(&ke));
    } else {
        /* the session's policy follows it to the restored rows */
        const uint32_t old = s->rt.kv;
        dmn_policy_close(s);
        kv_session_destroy(d->store, old);
        rc = dmn_policy_open(d, s, ksid, &ke);
        if (rc) {
            dmn_log(d, DMN_LOG_ERROR, "%s: %s", kvpath ? kvpath : "snapshot", err_msg(&ke));
            rc = -1; /* the session has rows but no policy: the restore fails */
        }
        free(kvpath);
        free(tr);
        return rc;
    }
    free(kvpath);
    free(tr);
    return 1;
}

int dmn_snapshot_owner(const dmn_t *d, uint32_t id, char *owner, size_t cap)
{
    char *path = snap_path(d, id, "");
    uint8_t *p = NULL;
    size_t len = 0;
    err_info_t e;
    int rc = path ? read_file(path, &p, &len, &e) : ERR_NOMEM;
    free(path);
    if (rc)
        return rc == ERR_NOMEM ? rc : ERR_NOTFOUND;
    rd_t r = {.p = p, .len = len};
    const uint8_t *magic = get(&r, 8);
    const uint32_t version = get_u32(&r);
    rc = ERR_NOTFOUND;
    if (magic && !memcmp(magic, SNAP_MAGIC, 8) && version == SNAP_VERSION && !r.short_read &&
        len >= 20) {
        r.at = len - 8;
        if (fnv1a(p, len - 8) == get_u64(&r)) {
            char name[DMN_NAME_LEN];
            r.len = len - 8;
            r.at = 12;
            const uint32_t file_id = get_u32(&r);
            get_str(&r, name, sizeof name);
            get_str(&r, owner, cap);
            rc = r.short_read || file_id != id ? ERR_NOTFOUND : 0;
        }
    }
    free(p);
    return rc;
}

int dmn_snapshot_restore(dmn_t *d, uint32_t id, bool as_new, dmn_session_t **out, err_info_t *e)
{
    if (!as_new && dmn_session_find(d, id))
        return err_set(e, ERR_EXISTS,
                       "session %u is live; close it first, or restore it as a second session "
                       "(gistctl restore %u --as-new)",
                       id, id);
    char *path = snap_path(d, id, "");
    if (!path)
        return err_set(e, ERR_NOMEM, "out of memory");
    uint8_t *p = NULL;
    size_t len = 0;
    int rc = read_file(path, &p, &len, e);
    if (rc) {
        free(path);
        return rc;
    }
    rd_t r = {.p = p, .len = len};
    char name[DMN_NAME_LEN] = "", owner[DMN_CRED_LEN] = "", policy[64] = "", tmpl[64] = "";
    int32_t *ids = NULL;
    float *logits = NULL;
    char keys[DMN_MAX_PARAMS][DMN_PARAM_LEN], values[DMN_MAX_PARAMS][DMN_PARAM_LEN];
    Gistd__Param params[DMN_MAX_PARAMS], *pparams[DMN_MAX_PARAMS];
    dmn_session_t *s = NULL;
    const uint8_t *magic = get(&r, 8);
    if (!magic || memcmp(magic, SNAP_MAGIC, 8)) {
        rc = err_set(e, ERR_FORMAT, "%s: not a gistd session snapshot", path);
        goto done;
    }
    const uint32_t version = get_u32(&r);
    if (version != SNAP_VERSION) {
        rc = err_set(e, ERR_FORMAT, "%s: snapshot version %u, this daemon reads %u", path, version,
                     SNAP_VERSION);
        goto done;
    }
    if (r.short_read || len < 20) {
        rc = err_set(e, ERR_FORMAT, "%s: truncated (%zu bytes)", path, len);
        goto done;
    }
    r.at = len - 8;
    const uint64_t sum = get_u64(&r);
    if (fnv1a(p, len - 8) != sum) {
        rc = err_set(e, ERR_CORRUPT, "%s: checksum mismatch (%zu bytes)", path, len);
        goto done;
    }
    r.len = len - 8;
    r.at = 12;
    const uint32_t file_id = get_u32(&r);
    get_str(&r, name, sizeof name);
    get_str(&r, owner, sizeof owner);
    get_str(&r, policy, sizeof policy);
    get_str(&r, tmpl, sizeof tmpl);
    Gistd__Pins pins = GISTD__PINS__INIT;
    pins.sink_tokens = get_u32(&r);
    pins.recent_tokens = get_u32(&r);
    pins.system_prompt = get_u32(&r) != 0;
    Gistd__Sampling smp = GISTD__SAMPLING__INIT;
    smp.temp = get_f32(&r);
    smp.top_k = (int32_t)get_u32(&r);
    smp.top_p = get_f32(&r);
    smp.min_p = get_f32(&r);
    smp.repeat_penalty = get_f32(&r);
    smp.repeat_last_n = (int32_t)get_u32(&r);
    smp.seed = get_u64(&r);
    const bool add_bos = get_u32(&r) != 0;
    const uint32_t flags = get_u32(&r);
    const uint64_t hard = get_u64(&r), soft = get_u64(&r);
    const uint64_t prompt_tokens = get_u64(&r), generated_tokens = get_u64(&r);
    const uint32_t n_params = get_u32(&r);
    if (r.short_read || file_id != id || n_params > DMN_MAX_PARAMS) {
        rc = err_set(e, ERR_FORMAT, "%s: bad header (session %u, %u policy parameters)", path,
                     file_id, n_params);
        goto done;
    }
    for (uint32_t i = 0; i < n_params; i++) {
        get_str(&r, keys[i], DMN_PARAM_LEN);
        get_str(&r, values[i], DMN_PARAM_LEN);
        gistd__param__init(&params[i]);
        params[i].key = keys[i];
        params[i].value = values[i];
        pparams[i] = &params[i];
    }
    const bool have_logits = get_u32(&r) != 0;
    if (have_logits) {
        logits = malloc(sizeof(float) * d->hp->n_vocab);
        if (!logits) {
            rc = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
        for (uint32_t i = 0; i < d->hp->n_vocab; i++)
            logits[i] = get_f32(&r);
    }
    const uint64_t kv_sum = get_u64(&r);
    const uint32_t n_past = get_u32(&r);
    const uint32_t n = get_u32(&r);
    if (r.short_read || n > (r.len - r.at) / 4 || n_past > n) {
        rc = err_set(e, ERR_FORMAT, "%s: %u tokens do not fit in the file", path, n);
        goto done;
    }
    ids = malloc(sizeof(int32_t) * (n ? n : 1));
    if (!ids) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = (int32_t)get_u32(&r);
        if (ids[i] < 0 || (uint32_t)ids[i] >= d->hp->n_vocab) {
            rc = err_set(e, ERR_FORMAT,
                         "%s: token %d at position %u is outside this model's "
                         "vocabulary",
                         path, ids[i], i);
            goto done;
        }
    }
    const uint32_t pst_len = get_u32(&r);
    const uint8_t *pst = get(&r, pst_len);
    if (r.short_read || r.at != r.len) {
        rc = err_set(e, ERR_FORMAT, "%s: the policy state does not end the file", path);
        goto done;
    }

    Gistd__OpenSession o = GISTD__OPEN_SESSION__INIT;
    o.policy = policy;
    o.n_policy_params = n_params;
    o.policy_params = pparams;
    o.budget_bytes = hard;
    o.soft_bytes = soft;
    o.pins = &pins;
    o.chat_template = tmpl;
    o.sampling = &smp;
    o.no_bos = !add_bos;
    o.name = name;
    rc = dmn_session_open(d, &o, as_new ? 0 : id, &s, e);
    if (rc) {
        err_prefix(e, "%s: ", path);
        goto done;
    }
    /* the rows themselves when the store's snapshot matches; else the tokens are prefilled
     * again */
    const int rows = restore_rows(d, s, id, ids, n_past, kv_sum);
    if (rows < 0) {
        rc = err_set(e, ERR_FORMAT, "%s: the policy '%s' cannot be made for the restored rows",
                     path, policy);
        goto done;
    }
    const uint32_t stored = rows == 0 ? n_past : 0;
    rc = dmn_session_push(s, ids + stored, n - stored);
    if (rc) {
        err_set(e, rc, "%s: no room for %u tokens", path, n - stored);
        goto done;
    }
    if (stored > 0 && have_logits) {
        memcpy(s->rt.logits, logits, sizeof(float) * d->hp->n_vocab);
        s->rt.have_logits = true;
    }
    /* the policy's state goes with the rows it describes */
    if (stored > 0 && pst_len && pol_load(s->rt.pol, pst, pst_len, e)) {
        rc = err_prefix(e, "%s: ", path);
        goto done;
    }
    s->text_started = (flags & SNAP_TEXT_STARTED) != 0;
    s->snap_kept = !as_new && (flags & SNAP_KEPT) != 0; /* a copy has no files of its own */
    memcpy(s->cred, owner, sizeof owner);
    s->prompt_tokens = prompt_tokens;
    s->generated_tokens = generated_tokens;
    dmn_log(d, DMN_LOG_INFO, "restored session %u (%u tokens) from %s", s->id, n, path);
    *out = s;
    s = NULL;
done:
    if (s)
        dmn_session_close(d, s);
    free(p);
    free(logits);
    free(ids);
    free(path);
    return rc;
}

void dmn_snapshot_restore_all(dmn_t *d)
{
    DIR *dir = opendir(d->snapshot_dir);
    if (!dir) {
        dmn_log(d, DMN_LOG_WARN, "snapshot folder %s: %s", d->snapshot_dir, strerror(errno));
        return;
    }
    struct dirent *de;
    while ((de = readdir(dir))) {
        uint32_t id;
        if (!strncmp(de->d_name, "session-", 8) &&
            (strstr(de->d_name, ".tmp") || strstr(de->d_name, ".next"))) {
            /* what a snapshot that was cut short left behind: never read, only removed */
            dmn_log(d, DMN_LOG_WARN, "%s/%s: a temporary file of an interrupted snapshot; removed",
                    d->snapshot_dir, de->d_name);
            if (unlinkat(dirfd(dir), de->d_name, 0) < 0)
                dmn_log(d, DMN_LOG_WARN, "%s/%s: %s", d->snapshot_dir, de->d_name, strerror(errno));
            continue;
        }
        if (!snap_name(de->d_name, ".gistd", &id))
            continue;
        if (dmn_snapshot_closed_has(d, id)) {
            /* closed with its snapshot kept: it waits for a Restore */
            if (id >= d->next_id)
                d->next_id = id + 1;
            continue;
        }
        dmn_session_t *s;
        err_info_t e;
        err_clear(&e);
        if (dmn_snapshot_restore(d, id, false, &s, &e))
            dmn_log(d, DMN_LOG_ERROR, "%s; the session is not restored", err_msg(&e));
        else if (id >= d->next_id)
            d->next_id = id + 1;
    }
    closedir(dir);
}
