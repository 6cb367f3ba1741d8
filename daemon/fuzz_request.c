/*
 * daemon/fuzz_request.c — libFuzzer target: request payloads straight into the daemon's
 * dispatch (dmn_handle), then its scheduler steps, without a client library or socket traffic
 * (see fuzz/fuzz.h for how targets are built and replayed).
 *
 * Input: a run of records, each a little-endian u16 length and that many bytes of payload
 * (what a client puts in the last frame); a short last record takes what is left. So one
 * input can open a session, append, generate, snapshot and restore it. After each record the
 * scheduler runs up to 8 steps, after the last up to 256; then every session is closed, the
 * session numbering, the global limits and the snapshot folder are put back, so inputs are
 * independent.
 *
 * The daemon is made once: a tiny random-weight model (one layer, gist tokens, retention
 * gates) written to a temporary folder (under /dev/shm when there is one, so snapshots'
 * fsyncs cost nothing), snapshots enabled, one thread, logs off. Replies never reach a socket:
 * the daemon's send hook hands each packed reply to the harness, which decodes it.
 *
 * Mutations (LLVMFuzzerCustomMutator): three in four are structure-aware
 * (fuzz_request_mutate: a record decoded as a gistd.Request and changed through its
 * descriptor — numeric extremes in any field at any depth, another body of the oneof, a new,
 * dropped or repeated record; fuzz/pb_mutate.h), the rest libFuzzer's own byte-level ones.
 * FUZZ_REQUEST_BYTES=1 in the environment leaves only the byte-level ones.
 *
 * Properties checked for any input: every message the daemon sends is a valid gistd.Reply;
 * the KV store passes kv_store_check after every input and holds no session once they are
 * closed. Memory errors, undefined behaviour and leaks are the sanitizers'.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/dmn_impl.h"
#include "fuzz/fuzz.h"
#include "fuzz/pb_mutate.h"
#include "model/gguf.h"
#include "model/tiny.h"

#define STEPS_PER_RECORD 8
#define STEPS_AT_END     256

static struct {
    dmn_t *d;
    dmn_peer_t peer;
    char dir[64], snaps[96];
    size_t hard0, soft0;
    uint64_t replies, bad_replies;
} F;

static void teardown(void)
{
    dmn_destroy(&F.d);
    if (F.dir[0]) {
        char p[400];
        DIR *dd = opendir(F.snaps);
        struct dirent *de;
        while (dd && (de = readdir(dd)))
            if (de->d_name[0] != '.') {
                snprintf(p, sizeof p, "%s/%s", F.snaps, de->d_name);
                unlink(p);
            }
        if (dd)
            closedir(dd);
        rmdir(F.snaps);
        snprintf(p, sizeof p, "%s/tiny.gguf", F.dir);
        unlink(p);
        snprintf(p, sizeof p, "%s/sock", F.dir);
        unlink(p);
        rmdir(F.dir);
        F.dir[0] = '\0';
    }
}

/* The daemon's send hook: every reply must decode as a gistd.Reply. */
static int take_reply(void *ctx, const dmn_peer_t *to, const uint8_t *p, size_t len)
{
    F.replies++;
    Gistd__Reply *r = gistd__reply__unpack(NULL, len, p);
    if (!r)
        F.bad_replies++;
    gistd__reply__free_unpacked(r, NULL);
    return 0;
}

static bool setup(void)
{
    if (F.d)
        return true;
    const char *tmp = getenv("TMPDIR");
    struct stat shm;
    if (!tmp || strlen(tmp) >= 40)
        tmp = stat("/dev/shm", &shm) == 0 && S_ISDIR(shm.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(F.dir, sizeof F.dir, "%s/gistd-fuzzd-XXXXXX", tmp);
    if (!mkdtemp(F.dir)) {
        F.dir[0] = '\0';
        return false;
    }
    atexit(teardown);
    snprintf(F.snaps, sizeof F.snaps, "%s/snaps", F.dir);
    mkdir(F.snaps, 0700);
    char model[96], listen[96];
    snprintf(model, sizeof model, "%s/tiny.gguf", F.dir);
    snprintf(listen, sizeof listen, "ipc://%s/sock", F.dir);
    mdl_tiny_cfg_t tc;
    mdl_tiny_cfg_default(&tc);
    tc.n_embd = 32;
    tc.n_layer = 1;
    tc.n_head = 2;
    tc.n_head_kv = 1;
    tc.n_ff = 64;
    tc.n_vocab = 300;
    tc.n_ctx = 128;
    tc.n_gist = 2;
    tc.retention_hidden = 8;
    err_info_t e;
    if (mdl_tiny_write(model, &tc, &e) != 0) {
        fprintf(stderr, "fuzz_request: %s\n", e.msg);
        return false;
    }
    dmn_cfg_t cfg;
    dmn_cfg_default(&cfg);
    cfg.model_path = model;
    cfg.listen = listen;
    cfg.snapshot_dir = F.snaps;
    cfg.threads = 1;
    cfg.max_sessions = 8;
    cfg.kv_budget = 2u << 20;
    cfg.kv_budget_max = 8u << 20; /* SetBudget may raise the limit, to a point */
    cfg.block_rows = 16;
    cfg.log_level = -1;
    if (dmn_new(&cfg, &F.d, &e) != 0) {
        fprintf(stderr, "fuzz_request: %s\n", e.msg);
        F.d = NULL;
        return false;
    }
    const kv_store_config_t *kc = kv_store_config(F.d->store);
    F.hard0 = kc->hard_limit;
    F.soft0 = kc->soft_limit;
    F.d->send_hook = take_reply;
    memcpy(F.peer.id, "fuzz", 4);
    F.peer.len = 4;
    return true;
}

static void steps(int max)
{
    for (int i = 0; i < max && dmn_sched_busy(F.d); i++)
        dmn_sched_step(F.d);
}

/* Closes every session and puts back what requests may have changed. */
static void reset(void)
{
    while (F.d->n_sess)
        dmn_session_close(F.d, F.d->sess[F.d->n_sess - 1]);
    F.d->next_id = 1;
    kv_store_set_limits(F.d->store, F.hard0, F.soft0, NULL);
    DIR *dd = opendir(F.snaps);
    struct dirent *de;
    while (dd && (de = readdir(dd)))
        if (de->d_name[0] != '.') {
            char p[400];
            snprintf(p, sizeof p, "%s/%s", F.snaps, de->d_name);
            unlink(p);
        }
    if (dd)
        closedir(dd);
}

int fuzz_request_one(const uint8_t *data, size_t size, char *why, size_t cap)
{
    if (cap)
        why[0] = '\0';
    if (!setup())
        return fuzz_fail(why, cap, "the daemon does not start");
    F.bad_replies = 0;
    size_t off = 0;
    while (off < size) {
        size_t n = size - off;
        if (n >= 2) {
            size_t want = (size_t)data[off] | (size_t)data[off + 1] << 8;
            off += 2;
            n = want < size - off ? want : size - off;
        } else {
            off += n;
            n = 0;
            break;
        }
        dmn_handle(F.d, &F.peer, data + off, n);
        off += n;
        steps(STEPS_PER_RECORD);
    }
    steps(STEPS_AT_END);
    reset();
    if (F.bad_replies)
        return fuzz_fail(why, cap, "%llu replies do not decode as gistd.Reply",
                         (unsigned long long)F.bad_replies);
    err_info_t e;
    err_clear(&e);
    if (kv_store_check(F.d->store, &e) != 0)
        return fuzz_fail(why, cap, "kv_store_check: %s", e.msg);
    kv_stats_t st;
    kv_store_stats(F.d->store, &st);
    if (st.sessions != 0)
        return fuzz_fail(why, cap, "%u KV sessions left after closing every session", st.sessions);
    return 0;
}

/* ------------------------------------------------------------------ mutations */

#define MAX_RECORDS 64

/* Words for string and bytes fields: policies and their parameters, templates, texts. */
static const char *const words[] = {
    "",        "full",   "window", "h2o",     "tova",   "trim",         "pool",
    "gist",    "auto",   "magic",  "none",    "chatml", "plain",        "recent",
    "sinks",   "64",     "0",      "-1",      "1e9",    "99999999999",  "x",
    "Once upon a time. ",         "The end.\n\n",    "Hello? Yes! ", "<s>",  "</s>",
    "<|im_start|>",               "<|im_end|>", "\xff\xfe\x80", "\xe6\x97\xa5\xe6\x9c\xac", " ",
    "\n",      "."};

/* Writes a u16-length record; false when it does not fit. */
static bool put_record(uint8_t *out, size_t *at, size_t max, const uint8_t *p, size_t n)
{
    if (n > 0xffff || *at + 2 + n > max)
        return false;
    out[(*at)++] = (uint8_t)n;
    out[(*at)++] = (uint8_t)(n >> 8);
    memcpy(out + *at, p, n);
    *at += n;
    return true;
}

/* A fresh request with a body picked from the oneof and a few fields changed. */
static Gistd__Request *fresh_request(pbm_rng_t *r, const pbm_dict_t *dict)
{
    Gistd__Request *q = (Gistd__Request *)pbm_new(&gistd__request__descriptor);
    if (!q)
        return NULL;
    const ProtobufCMessageDescriptor *desc = &gistd__request__descriptor;
    const ProtobufCFieldDescriptor *body[32];
    unsigned nb = 0;
    for (unsigned i = 0; i < desc->n_fields && nb < 32; i++)
        if (desc->fields[i].flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            body[nb++] = &desc->fields[i];
    q->id = 1 + pbm_below(r, 1000);
    pbm_mutate_field(&q->base, body[pbm_below(r, nb)], r, dict, 3);
    return q;
}

size_t fuzz_request_mutate(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    struct {
        size_t off, len;
    } rec[MAX_RECORDS];
    size_t n = 0, off = 0;
    while (off + 2 <= size && n < MAX_RECORDS) {
        size_t want = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        rec[n].off = off;
        rec[n].len = want < size - off ? want : size - off;
        off += rec[n++].len;
    }
    pbm_rng_t r = {.s = seed * 0x2545f4914f6cdd1dull + size};
    const pbm_dict_t dict = {words, sizeof words / sizeof words[0]};
    /* the record to change (k < n), to add before (k == n: at the end), drop or repeat */
    enum { CHANGE, ADD, DROP, REPEAT } op;
    const uint32_t roll = pbm_below(&r, 10);
    op = n == 0 || roll < 2 ? ADD : roll < 8 ? CHANGE : roll < 9 ? DROP : REPEAT;
    if (op == DROP && n < 2)
        op = CHANGE;
    if (op == REPEAT && n >= MAX_RECORDS)
        op = CHANGE;
    const size_t k = pbm_below(&r, (uint32_t)(op == ADD ? n + 1 : n));

    Gistd__Request *q = NULL;
    if (op == ADD) {
        q = fresh_request(&r, &dict);
    } else if (op == CHANGE) {
        q = gistd__request__unpack(NULL, rec[k].len, data + rec[k].off);
        if (!q)
            q = fresh_request(&r, &dict);
        for (uint32_t i = 0, m = 1 + pbm_below(&r, 3); q && i < m; i++)
            pbm_mutate(&q->base, &r, &dict, 4);
    }
    uint8_t *packed = NULL;
    size_t plen = 0;
    if (q) {
        plen = gistd__request__get_packed_size(q);
        packed = malloc(plen ? plen : 1);
        if (packed)
            gistd__request__pack(q, packed);
        gistd__request__free_unpacked(q, NULL);
    }
    if ((op == ADD || op == CHANGE) && !packed)
        return 0;

    uint8_t *out = malloc(max_size ? max_size : 1);
    size_t at = 0;
    bool ok = out != NULL;
    for (size_t i = 0; ok && i <= n; i++) {
        if (op == ADD && i == k)
            ok = put_record(out, &at, max_size, packed, plen);
        if (i == n || !ok)
            break;
        if (op == DROP && i == k)
            continue;
        if (op == CHANGE && i == k)
            ok = put_record(out, &at, max_size, packed, plen);
        else
            ok = put_record(out, &at, max_size, data + rec[i].off, rec[i].len);
        if (ok && op == REPEAT && i == k)
            ok = put_record(out, &at, max_size, data + rec[i].off, rec[i].len);
    }
    if (ok)
        memcpy(data, out, at);
    free(out);
    free(packed);
    return ok ? at : 0;
}

FUZZ_ENTRY(fuzz_request_one)

#ifdef GISTD_FUZZ_ENTRY
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    static int bytes_only = -1;
    if (bytes_only < 0) {
        const char *v = getenv("FUZZ_REQUEST_BYTES");
        bytes_only = v && *v && strcmp(v, "0");
    }
    size_t n = 0;
    if (!bytes_only && seed % 4 != 0)
        n = fuzz_request_mutate(data, size, max_size, seed);
    return n ? n : LLVMFuzzerMutate(data, size, max_size);
}
#endif
