/*
 * daemon/auth.c — who a client is and how often it may ask: CURVE keys, the allow list, the
 * ZAP handler (ZeroMQ RFC 27), and per-client token buckets.
 *
 * With CURVE on, the ROUTER socket is a CURVE server and every handshake is put to the ZAP
 * handler: a REP socket on inproc://zeromq.zap.01 in the daemon's own ZeroMQ context. It is
 * serviced in the daemon's poll loop (dmn_run polls it beside the ROUTER socket), not in a
 * thread of its own: the allow list then needs no lock, the loop already wakes for any
 * socket, and a handshake waits at most one scheduler step. The handler accepts a CURVE
 * client whose public key is on the allow list and answers User-Id = that key in z85, which
 * ZeroMQ attaches to every frame the client sends: that text is the request's credential
 * (dmn_peer_t.cred). Anything else is refused (status 400) and logged at warn with the peer's
 * address. Without CURVE every client has the local credential "".
 *
 * Rates: one token bucket per (credential, peer address), kept in a small table; a bucket
 * that has been idle long enough to be full again is forgotten, so the table stays bounded.
 *
 * Threads: the daemon's one thread. Errors: 0 or a negative ERR_* code with a message in e.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/keyfile.h"
#include "daemon/dmn_impl.h"

#define ZAP_ENDPOINT   "inproc://zeromq.zap.01"
#define ZAP_MAX_FRAMES 8
#define MAX_BUCKETS    4096

_Static_assert(DMN_CRED_LEN >= KEY_Z85_LEN + 1, "a credential holds a z85 key");

/* ------------------------------------------------------------------ keys */

/* Writes text to path, created with mode (refusing to replace a file that exists). */
static int write_new(const char *path, const char *text, mode_t mode, err_info_t *e)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return err_set(e, errno == EEXIST ? ERR_EXISTS : ERR_IO, "cannot create %s: %s%s", path,
                       strerror(errno), errno == EEXIST ? " (keys are never overwritten)" : "");
    const size_t len = strlen(text);
    int rc = 0;
    if (fchmod(fd, mode) < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) < 0)
        rc = err_set(e, ERR_IO, "cannot write %s: %s", path, strerror(errno));
    if (close(fd) < 0 && !rc)
        rc = err_set(e, ERR_IO, "cannot write %s: %s", path, strerror(errno));
    if (rc)
        unlink(path);
    return rc;
}

int dmn_keygen(const char *prefix, err_info_t *e)
{
    char pub[41], sec[41];
    if (!zmq_has("curve"))
        return err_set(e, ERR_UNSUPPORTED, "this libzmq has no CURVE support");
    if (zmq_curve_keypair(pub, sec) < 0)
        return err_set(e, ERR_INTERNAL, "zmq_curve_keypair: %s", zmq_strerror(errno));
    char path_key[4096], path_pub[4096], text[256];
    snprintf(path_key, sizeof path_key, "%s.key", prefix);
    snprintf(path_pub, sizeof path_pub, "%s.pub", prefix);
    snprintf(text, sizeof text, "# gistd CURVE secret key (keep it private)\n%s\n", sec);
    int rc = write_new(path_key, text, 0600, e);
    if (rc)
        return rc;
    snprintf(text, sizeof text, "# gistd CURVE public key\n%s\n", pub);
    rc = write_new(path_pub, text, 0644, e);
    if (rc)
        unlink(path_key);
    return rc;
}

/* The allow list: "KEY [admin]" a line, '#' comments, blank lines. On error d's list may
 * hold the keys read so far (dmn_auth_reload loads into a scratch daemon). */
static int allow_load(dmn_t *d, const char *path, err_info_t *e)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return err_set(e, ERR_IO, "--allow-keys %s: %s", path, strerror(errno));
    char line[1024];
    unsigned ln = 0;
    int rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        ln++;
        if (!strchr(line, '\n') && !feof(f)) {
            rc = err_set(e, ERR_FORMAT, "%s:%u: line too long", path, ln);
            break;
        }
        key_comment_cut(line);
        char key[64], word[64], extra[8];
        const int n = sscanf(line, "%63s %63s %7s", key, word, extra);
        if (n <= 0)
            continue;
        if (!key_z85_valid(key)) {
            rc = err_set(e, ERR_FORMAT,
                         "%s:%u: '%.63s' is not a CURVE public key (40 z85 characters)", path, ln,
                         key);
        } else if (n == 3 || (n == 2 && strcmp(word, "admin"))) {
            rc = err_set(e, ERR_FORMAT, "%s:%u: after the key only the word 'admin' may follow",
                         path, ln);
        } else {
            if (d->n_allow == d->cap_allow) {
                uint32_t cap = d->cap_allow ? d->cap_allow * 2 : 16;
                dmn_allow_t *t = realloc(d->allow, sizeof *t * cap);
                if (!t) {
                    rc = err_set(e, ERR_NOMEM, "out of memory");
                    break;
                }
                d->allow = t;
                d->cap_allow = cap;
            }
            dmn_allow_t *a = &d->allow[d->n_allow++];
            memcpy(a->key, key, KEY_Z85_LEN + 1); /* valid: 40 characters and the NUL */
            a->admin = n == 2;
        }
    }
    fclose(f);
    if (!rc && d->n_allow == 0)
        rc = err_set(e, ERR_FORMAT, "--allow-keys %s holds no client keys", path);
    return rc;
}

static const dmn_allow_t *allow_find(const dmn_t *d, const char *key)
{
    for (uint32_t i = 0; i < d->n_allow; i++)
        if (!strcmp(d->allow[i].key, key))
            return &d->allow[i];
    return NULL;
}

int dmn_auth_reload(dmn_t *d, err_info_t *e)
{
    if (!d->curve)
        return err_set(e, ERR_UNSUPPORTED, "no allow list to reload: CURVE is off");
    dmn_t scratch = {0};
    int rc = allow_load(&scratch, d->cfg.allow_keys, e);
    if (rc) {
        free(scratch.allow);
        return err_prefix(e, "reloading the allow list: ");
    }
    free(d->allow);
    d->allow = scratch.allow;
    d->n_allow = scratch.n_allow;
    d->cap_allow = scratch.cap_allow;
    dmn_log(d, DMN_LOG_INFO, "reloaded %u client key(s) from %s", d->n_allow, d->cfg.allow_keys);
    return 0;
}

/* ------------------------------------------------------------------ setup */

bool dmn_endpoint_is_local(const char *ep)
{
    static const char *const local[] = {"ipc://", "inproc://", "tcp://127.",
                                        "tcp://[::1]:", "tcp://localhost:"};
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        if (!strncmp(ep, local[i], strlen(local[i])))
            return !strchr(ep, ';'); /* "src;dst" names another address */
    return false;
}

int dmn_auth_check(const dmn_cfg_t *cfg, err_info_t *e)
{
    const char *listen = cfg->listen ? cfg->listen : DMN_DEFAULT_LISTEN;
    if (!cfg->curve_secret != !cfg->allow_keys)
        return err_set(e, ERR_INVAL,
                       "--curve-secret FILE and --allow-keys FILE go together: CURVE needs the "
                       "daemon's secret key and the list of client keys it accepts");
    if (!cfg->curve_secret && !cfg->insecure && !dmn_endpoint_is_local(listen))
        return err_set(e, ERR_PERM,
                       "refusing to listen on %s without CURVE: an address other than loopback "
                       "or ipc:// needs --curve-secret FILE (the daemon's secret key) and "
                       "--allow-keys FILE (the client public keys it accepts; make keys with "
                       "gistd --keygen PREFIX), or --insecure to serve it unencrypted to anyone",
                       listen);
    if (cfg->curve_secret && !zmq_has("curve"))
        return err_set(e, ERR_UNSUPPORTED, "--curve-secret: this libzmq has no CURVE support");
    return 0;
}

int dmn_auth_init(dmn_t *d, err_info_t *e)
{
    const dmn_cfg_t *cfg = &d->cfg;
    int rc = dmn_auth_check(cfg, e);
    if (rc)
        return rc;
    /* Limits: the defaults hold per client key; without CURVE every client shares the local
     * credential, so they apply only when asked for. */
    const double rate = cfg->rate_limit >= 0 ? cfg->rate_limit
                        : cfg->curve_secret  ? DMN_DEFAULT_RATE
                                             : 0;
    d->req_rate = rate;
    d->req_burst = cfg->rate_burst > 0 ? cfg->rate_burst : 2 * rate;
    if (d->req_burst < 1)
        d->req_burst = 1;
    d->max_client_sessions = cfg->max_client_sessions >= 0 ? (uint32_t)cfg->max_client_sessions
                             : cfg->curve_secret           ? DMN_DEFAULT_CLIENT_SESSIONS
                                                           : 0;
    if (!cfg->curve_secret) {
        if (!dmn_endpoint_is_local(d->listen))
            dmn_log(d, DMN_LOG_WARN,
                    "--insecure: serving %s without encryption or authentication; anyone who "
                    "reaches it may use every session",
                    d->listen);
        return 0;
    }
    d->curve = true;
    char secret[DMN_CRED_LEN];
    rc = key_file_read(cfg->curve_secret, secret, e);
    if (rc)
        return err_prefix(e, "--curve-secret: ");
    struct stat st;
    if (stat(cfg->curve_secret, &st) == 0 && (st.st_mode & 077))
        dmn_log(d, DMN_LOG_WARN, "the secret key %s can be read by others (mode %03o)",
                cfg->curve_secret, (unsigned)(st.st_mode & 0777));
    rc = allow_load(d, cfg->allow_keys, e);
    if (rc)
        return rc;

    /* the handler first: a handshake that finds no handler is let through */
    d->zap = zmq_socket(d->zctx, ZMQ_REP);
    int zero = 0, one = 1;
    if (!d->zap || zmq_setsockopt(d->zap, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_bind(d->zap, ZAP_ENDPOINT) < 0)
        return err_set(e, ERR_IO, "cannot start the ZAP handler on %s: %s", ZAP_ENDPOINT,
                       zmq_strerror(errno));
    /* handshakes that fail before the ZAP handler sees them (a plain client, a wrong server
     * key) are only logged: ZeroMQ names no peer address for them */
    if (zmq_socket_monitor(d->sock, "inproc://gistd-handshakes",
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) == 0) {
        d->mon = zmq_socket(d->zctx, ZMQ_PAIR);
        if (d->mon && (zmq_setsockopt(d->mon, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
                       zmq_connect(d->mon, "inproc://gistd-handshakes") < 0)) {
            zmq_close(d->mon);
            d->mon = NULL;
        }
    }
    char pub[41];
    if (zmq_setsockopt(d->sock, ZMQ_CURVE_SERVER, &one, sizeof one) < 0 ||
        zmq_setsockopt(d->sock, ZMQ_CURVE_SECRETKEY, secret, KEY_Z85_LEN) < 0 ||
        zmq_setsockopt(d->sock, ZMQ_ZAP_DOMAIN, "gistd", 5) < 0 || zmq_curve_public(pub, secret))
        return err_set(e, ERR_IO, "cannot turn CURVE on: %s", zmq_strerror(errno));
    dmn_log(d, DMN_LOG_INFO, "CURVE on: server public key %s, %u client key(s) from %s", pub,
            d->n_allow, cfg->allow_keys);
    return 0;
}

void dmn_auth_stop_monitor(dmn_t *d)
{
    if (d->mon) {
        if (d->sock)
            zmq_socket_monitor(d->sock, NULL, 0);
        zmq_close(d->mon);
    }
    d->mon = NULL;
}

void dmn_auth_fini(dmn_t *d)
{
    dmn_auth_stop_monitor(d);
    if (d->zap)
        zmq_close(d->zap);
    d->zap = NULL;
    free(d->allow);
    d->allow = NULL;
    d->n_allow = d->cap_allow = 0;
    free(d->buckets);
    d->buckets = NULL;
    d->n_buckets = d->cap_buckets = 0;
}

/* ------------------------------------------------------------------ ZAP */

static void zap_send(void *s, const char *text, size_t len, bool more)
{
    zmq_send(s, text, len, more ? ZMQ_SNDMORE : 0);
}

/* Answers one ZAP request (RFC 27). 1 when one was read, 0 when none waited. */
static int zap_one(dmn_t *d)
{
    zmq_msg_t f[ZAP_MAX_FRAMES];
    int n = 0;
    bool more = true;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, d->zap, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&part);
            for (int i = 0; i < n && i < ZAP_MAX_FRAMES; i++)
                zmq_msg_close(&f[i]);
            return 0;
        }
        more = zmq_msg_more(&part);
        if (n < ZAP_MAX_FRAMES) {
            zmq_msg_init(&f[n]);
            zmq_msg_move(&f[n], &part);
        }
        zmq_msg_close(&part);
        n++;
    }
    const int kept = n < ZAP_MAX_FRAMES ? n : ZAP_MAX_FRAMES;
    char address[128] = "?", mech[16] = "", user[DMN_CRED_LEN] = "";
    const char *status = "400", *text = "no such client key";
    /* version, request id, domain, address, routing id, mechanism, credentials... */
    if (kept < 6 || zmq_msg_size(&f[0]) != 3 || memcmp(zmq_msg_data(&f[0]), "1.0", 3)) {
        status = "500";
        text = "malformed ZAP request";
    } else {
        snprintf(address, sizeof address, "%.*s", (int)zmq_msg_size(&f[3]),
                 (const char *)zmq_msg_data(&f[3]));
        snprintf(mech, sizeof mech, "%.*s", (int)zmq_msg_size(&f[5]),
                 (const char *)zmq_msg_data(&f[5]));
        if (strcmp(mech, "CURVE") || kept < 7 || zmq_msg_size(&f[6]) != 32) {
            text = "this daemon accepts CURVE clients only";
        } else {
            char z[41];
            zmq_z85_encode(z, zmq_msg_data(&f[6]), 32);
            if (allow_find(d, z)) {
                status = "200";
                text = "OK";
                snprintf(user, sizeof user, "%s", z);
            } else {
                snprintf(user, sizeof user, "%s", z); /* for the log only */
            }
        }
    }
    if (strcmp(status, "200"))
        dmn_log(d, DMN_LOG_WARN, "refused a %s client from %s%s%s: %s", *mech ? mech : "?", address,
                *user ? " with key " : "", user, text);
    else
        dmn_log(d, DMN_LOG_DEBUG, "accepted key %s from %s", user, address);
    zap_send(d->zap, "1.0", 3, true);
    if (kept >= 2)
        zmq_send(d->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    else
        zap_send(d->zap, "", 0, true);
    zap_send(d->zap, status, 3, true);
    zap_send(d->zap, text, strlen(text), true);
    zap_send(d->zap, !strcmp(status, "200") ? user : "", !strcmp(status, "200") ? strlen(user) : 0,
             true);
    zap_send(d->zap, "", 0, false);
    for (int i = 0; i < kept; i++)
        zmq_msg_close(&f[i]);
    return 1;
}

void dmn_zap_serve(dmn_t *d)
{
    if (!d->zap)
        return;
    for (int i = 0; i < 64 && zap_one(d); i++) {
    }
    uint8_t head[6];
    char where[256];
    while (d->mon && zmq_recv(d->mon, head, sizeof head, ZMQ_DONTWAIT) >= 0) {
        int more = 0;
        size_t ml = sizeof more;
        zmq_getsockopt(d->mon, ZMQ_RCVMORE, &more, &ml);
        int n = more ? zmq_recv(d->mon, where, sizeof where - 1, 0) : 0;
        where[n > 0 ? (n < (int)sizeof where ? n : (int)sizeof where - 1) : 0] = 0;
        uint16_t ev;
        uint32_t value;
        memcpy(&ev, head, 2);
        memcpy(&value, head + 2, 4);
        dmn_log(d, DMN_LOG_WARN,
                "a client on %s failed the CURVE handshake (%s 0x%x): a client without CURVE "
                "keys, or one with another server key",
                where, ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ? "protocol error" : "event",
                ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ? value : ev);
    }
}

/* ------------------------------------------------------------------ who may do what */

bool dmn_peer_admin(const dmn_t *d, const dmn_peer_t *p)
{
    return !d->curve || p->admin;
}

void dmn_peer_identify(const dmn_t *d, dmn_peer_t *p, const char *user_id)
{
    snprintf(p->cred, sizeof p->cred, "%s", user_id ? user_id : "");
    const dmn_allow_t *a = d->curve && *p->cred ? allow_find(d, p->cred) : NULL;
    p->admin = a && a->admin;
    p->revoked = d->curve && !a;
}

bool dmn_peer_owns(const dmn_t *d, const dmn_peer_t *p, const dmn_session_t *s)
{
    return dmn_peer_admin(d, p) || !strcmp(s->cred, p->cred);
}

bool dmn_peer_owns_text(const dmn_t *d, const dmn_peer_t *p, const dmn_session_t *s)
{
    return !d->curve || !strcmp(s->cred, p->cred);
}

uint32_t dmn_cred_sessions(const dmn_t *d, const char *cred)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < d->n_sess; i++)
        n += !strcmp(d->sess[i]->cred, cred);
    return n;
}

/* ------------------------------------------------------------------ rates */

int dmn_rate_take(dmn_t *d, const char *cred, const char *addr, double now, double *wait_s)
{
    if (d->req_rate <= 0)
        return 0;
    dmn_bucket_t *b = NULL;
    const double full_after =
        d->req_burst / d->req_rate; /* an idle bucket is full again after this */
    for (uint32_t i = 0; i < d->n_buckets && !b; i++) {
        dmn_bucket_t *x = &d->buckets[i];
        if (!strcmp(x->cred, cred) && !strcmp(x->addr, addr))
            b = x;
    }
    if (!b) {
        /* forget buckets that are full by now: they behave as new ones would */
        for (uint32_t i = 0; i < d->n_buckets;)
            if (now - d->buckets[i].t >= full_after)
                d->buckets[i] = d->buckets[--d->n_buckets];
            else
                i++;
        if (d->n_buckets == d->cap_buckets) {
            uint32_t cap = d->cap_buckets ? d->cap_buckets * 2 : 16;
            dmn_bucket_t *t = cap <= MAX_BUCKETS ? realloc(d->buckets, sizeof *t * cap) : NULL;
            if (t) {
                d->buckets = t;
                d->cap_buckets = cap;
            }
        }
        if (d->n_buckets == d->cap_buckets) {
            /* a table full of busy clients: the least recently seen one starts again */
            uint32_t old = 0;
            for (uint32_t i = 1; i < d->n_buckets; i++)
                if (d->buckets[i].t < d->buckets[old].t)
                    old = i;
            if (d->n_buckets == 0)
                return 0; /* no memory for a table: let the request through */
            b = &d->buckets[old];
        } else {
            b = &d->buckets[d->n_buckets++];
        }
        snprintf(b->cred, sizeof b->cred, "%s", cred);
        snprintf(b->addr, sizeof b->addr, "%s", addr);
        b->tokens = d->req_burst;
        b->t = now;
    }
    b->tokens += (now - b->t) * d->req_rate;
    if (b->tokens > d->req_burst)
        b->tokens = d->req_burst;
    b->t = now;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    *wait_s = (1.0 - b->tokens) / d->req_rate;
    return ERR_RATE;
}
