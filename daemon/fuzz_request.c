/*
 * daemon/fuzz_request.c — libFuzzer target: request payloads straight into the daemon's
 * dispatch (dmn_handle), then its scheduler steps, without a client library (see fuzz/fuzz.h
 * for how targets are built and replayed).
 *
 * Input: a run of records, each a little-endian u16 length and that many bytes of payload
 * (what a client puts in the last frame); a short last record takes what is left. So one
 * input can open a session, append, generate, snapshot and restore it. After each record the
 * scheduler runs up to 8 steps, after the last up to 256; then every session is closed, the
 * session numbering, the global limits and the snapshot folder are put back, so inputs are
 * independent.
 *
 * The daemon is made once: a tiny random-weight model (gist tokens, retention gates) written
 * to a temporary folder, an ipc:// endpoint there, snapshots enabled, one thread, logs off.
 * A DEALER socket of the harness is the peer every request comes from, so replies and
 * streamed tokens are really sent.
 *
 * Properties checked for any input: every message the daemon sends is a valid gistd.Reply;
 * the KV store passes kv_store_check after every input and holds no session once they are
 * closed. Memory errors and leaks are the sanitizers'.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "daemon/dmn_impl.h"
#include "fuzz/fuzz.h"
#include "model/gguf.h"
#include "model/tiny.h"

#define STEPS_PER_RECORD 8
#define STEPS_AT_END     256

static struct {
    dmn_t *d;
    void *zctx, *dealer;
    dmn_peer_t peer;
    char dir[64], snaps[96];
    size_t hard0, soft0;
    uint64_t replies, bad_replies;
} F;

static void teardown(void)
{
    dmn_destroy(&F.d);
    if (F.dealer)
        zmq_close(F.dealer);
    if (F.zctx)
        zmq_ctx_term(F.zctx);
    F.dealer = F.zctx = NULL;
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

/* Connects the DEALER and waits until the daemon's ROUTER has seen it, so replies route. */
static bool connect_peer(void)
{
    static const char name[] = "fuzz";
    F.zctx = zmq_ctx_new();
    F.dealer = F.zctx ? zmq_socket(F.zctx, ZMQ_DEALER) : NULL;
    if (!F.dealer)
        return false;
    int zero = 0;
    zmq_setsockopt(F.dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(F.dealer, ZMQ_ROUTING_ID, name, sizeof name - 1);
    if (zmq_connect(F.dealer, dmn_endpoint(F.d)) != 0)
        return false;
    zmq_send(F.dealer, "", 0, ZMQ_SNDMORE);
    zmq_send(F.dealer, "hi", 2, 0);
    zmq_pollitem_t it = {.socket = F.d->sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, 5000) != 1)
        return false;
    /* [identity][empty][payload]: take the identity, drop the rest */
    char buf[256];
    int more = 1, n;
    size_t ml = sizeof more;
    n = zmq_recv(F.d->sock, buf, sizeof buf, 0);
    if (n <= 0 || n > 255)
        return false;
    F.peer.len = (uint8_t)n;
    memcpy(F.peer.id, buf, (size_t)n);
    while (more && zmq_getsockopt(F.d->sock, ZMQ_RCVMORE, &more, &ml) == 0 && more)
        zmq_recv(F.d->sock, buf, sizeof buf, 0);
    return true;
}

static bool setup(void)
{
    if (F.d)
        return true;
    const char *tmp = getenv("TMPDIR");
    snprintf(F.dir, sizeof F.dir, "%s/gistd-fuzzd-XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
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
    return connect_peer();
}

/* Reads every reply that has arrived ([empty][payload]) and checks that it decodes. */
static void drain(void)
{
    static uint8_t buf[1u << 20];
    for (;;) {
        int n = zmq_recv(F.dealer, buf, sizeof buf, ZMQ_DONTWAIT);
        if (n < 0)
            return;
        int more = 0;
        size_t ml = sizeof more;
        while (zmq_getsockopt(F.dealer, ZMQ_RCVMORE, &more, &ml) == 0 && more)
            n = zmq_recv(F.dealer, buf, sizeof buf, 0);
        F.replies++;
        if (n < 0 || (size_t)n > sizeof buf)
            continue; /* larger than any reply to these inputs: not checked */
        Gistd__Reply *r = gistd__reply__unpack(NULL, (size_t)n, buf);
        if (!r)
            F.bad_replies++;
        gistd__reply__free_unpacked(r, NULL);
    }
}

static void steps(int max)
{
    for (int i = 0; i < max && dmn_sched_busy(F.d); i++) {
        dmn_sched_step(F.d);
        if (i % 8 == 7)
            drain();
    }
    drain();
}

/* Closes every session and puts back what requests may have changed. */
static void reset(void)
{
    while (F.d->n_sess)
        dmn_session_close(F.d, F.d->sess[F.d->n_sess - 1]);
    drain();
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

FUZZ_ENTRY(fuzz_request_one)
