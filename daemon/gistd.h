/*
 * daemon/gistd.h — the gistd daemon as an object: configure, start, run, stop.
 *
 * A dmn_t owns the model, the KV store, every session, the scheduler and the one ROUTER
 * socket clients talk to (proto/gistd.proto). dmn_run is its event loop: it polls the
 * socket and a stop descriptor (the self-pipe main.c's signal handlers write to), answers
 * requests, and runs one batched scheduler step whenever a session has work.
 *
 * Access (daemon/auth.c): with CURVE (curve_secret and allow_keys) a client is known by its
 * public key and owns the sessions it opens; without it every client is the one local
 * credential. CURVE is required to listen beyond loopback and ipc:// unless `insecure`.
 *
 * Threads: everything runs on the thread that calls dmn_run (the model's OpenMP threads
 * work inside each forward pass). Errors: 0 or a negative ERR_* code, with a message in e.
 */
#ifndef GISTD_DAEMON_GISTD_H
#define GISTD_DAEMON_GISTD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define DMN_DEFAULT_LISTEN          "tcp://127.0.0.1:5557"
#define DMN_DEFAULT_RATE            200.0  /* requests/s per client key and address (CURVE) */
#define DMN_DEFAULT_CLIENT_SESSIONS 16     /* sessions per client key (CURVE) */
#define DMN_DEFAULT_IDLE_TIMEOUT    1800.0 /* seconds an idle session is kept live */

enum dmn_log_level { DMN_LOG_ERROR = 0, DMN_LOG_WARN, DMN_LOG_INFO, DMN_LOG_DEBUG };

typedef struct dmn_cfg {
    const char *model_path;
    const char *listen;       /* endpoint to bind; "tcp://127.0.0.1:*" picks a free port */
    const char *snapshot_dir; /* NULL: no snapshots */
    const char *spill_dir;    /* where sessions' transcript pages that no row holds raw go
                               * (kvstore spill files, unlinked at creation); NULL: kept in
                               * memory. Default (dmn_cfg_default): $TMPDIR, else /var/tmp */
    bool spill_default;       /* spill_dir is the default: if unusable, a warning, not an error */
    const char *policy;       /* for sessions that name none (NULL: "full") */
    size_t kv_budget;         /* global hard limit in bytes (0: none) */
    size_t kv_budget_max;     /* the highest global limit SetBudget may set (0: kv_budget, or
                               * the machine's physical memory when kv_budget is 0) */
    size_t session_budget;    /* default per-session hard limit (0: none) */
    size_t max_request;       /* largest request payload accepted, bytes */
    int threads;              /* forward-pass threads (0: all processors) */
    uint32_t max_sessions;
    uint32_t prefill_chunk; /* prefill tokens per scheduler step, all sessions together */
    uint32_t kv_type;       /* DT_F32, DT_F16 (default) or DT_Q8_0: payload of new rows */
    uint32_t block_rows;    /* rows per KV block */
    int log_level;          /* enum dmn_log_level */
    double idle_timeout;    /* seconds a session may stay idle before it is closed (0: never);
                             * with a snapshot folder it is snapshotted first (restorable) */
    /* access (daemon/auth.c) */
    const char *curve_secret;    /* file with the daemon's CURVE secret key (z85); NULL: no CURVE */
    const char *allow_keys;      /* file of client public keys ("KEY [admin]" a line) */
    bool insecure;               /* serve a non-loopback address without CURVE */
    double rate_limit;           /* requests/s per credential and address; 0: off; < 0: default */
    double rate_burst;           /* bucket size; 0: twice the rate */
    int64_t max_client_sessions; /* sessions per credential; 0: off; < 0: default */
} dmn_cfg_t;

typedef struct dmn dmn_t;

/* Defaults: listen DMN_DEFAULT_LISTEN, no budgets, transcripts spilled under $TMPDIR (else
 * /var/tmp), max_request 1 MiB, 64 sessions,
 * prefill_chunk 64, f32 rows in blocks of 64, log level warn, idle timeout
 * DMN_DEFAULT_IDLE_TIMEOUT, no CURVE; with CURVE,
 * DMN_DEFAULT_RATE requests/s (burst twice that) and DMN_DEFAULT_CLIENT_SESSIONS sessions per
 * client key, without it no per-client limits (every local client shares one credential). */
void dmn_cfg_default(dmn_cfg_t *cfg);

/* Writes a new CURVE key pair: PREFIX.key (the secret, mode 0600) and PREFIX.pub (the public
 * key), z85 text each; never replaces a file (ERR_EXISTS). */
int dmn_keygen(const char *prefix, err_info_t *e);

/* Checks the access options against the listen address without starting anything: CURVE is
 * required (ERR_PERM, saying what to give) for an address other than loopback or ipc://
 * unless cfg->insecure. */
int dmn_auth_check(const dmn_cfg_t *cfg, err_info_t *e);

/* Whether ep names a transport gistd can listen on (tcp://, ipc://, inproc://); ERR_INVAL
 * saying which transports there are when it does not. */
int dmn_listen_check(const char *ep, err_info_t *e);

/* Loads the model, makes the store, binds the socket and restores the sessions found in
 * the snapshot folder. On error nothing is left behind and e says what went wrong; a model
 * file that cannot be loaded is ERR_MODEL whatever the reason (missing, unreadable, not a
 * model this daemon can run), and a budget below the smallest usable one is ERR_INVAL. */
int dmn_new(const dmn_cfg_t *cfg, dmn_t **out, err_info_t *e);
void dmn_destroy(dmn_t **d);

/* The smallest usable session budget: one KV block for every lane and the session's
 * bookkeeping, what holding one token costs. */
size_t dmn_session_min_bytes(const dmn_t *d);

/* The endpoint actually bound (the port resolved when the configuration asked for "*"). */
const char *dmn_endpoint(const dmn_t *d);

/* A byte of this value on dmn_run's stop_fd reloads the --allow-keys file (SIGHUP). */
#define DMN_CTL_RELOAD 'r'

/* Serves until stop_fd gives a byte other than DMN_CTL_RELOAD (or end of file), then stops
 * accepting work, ends every running request (its stream ends with reason CANCELLED),
 * snapshots every session when there is a snapshot folder, and returns 0 (or the first
 * error that stopped the loop). DMN_CTL_RELOAD reloads the allow list: a list that does not
 * load is logged and the previous one stays. */
int dmn_run(dmn_t *d, int stop_fd);

#endif
