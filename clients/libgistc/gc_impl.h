/*
 * clients/libgistc/gc_impl.h — libgistc's insides, shared by its .c files and nobody else.
 *
 * The client keeps a table of outstanding requests. The receive pump decodes each reply,
 * streams its events to the request's callbacks, and, when the final reply comes, keeps it
 * in the request's entry: the call that waits for it takes the decoded reply over, reads it
 * and frees it. Errors: 0 or a negative ERR_* code with a message in e.
 */
#ifndef GISTD_CLIENTS_GC_IMPL_H
#define GISTD_CLIENTS_GC_IMPL_H

#include "clients/libgistc/gistc.h"
#include "proto/gistd.pb-c.h"

typedef struct gc_pending {
    uint64_t id;
    uint32_t session;
    bool done;
    bool cancel_sent;
    int rc; /* the daemon's error, 0 when the request succeeded */
    err_info_t err;
    gc_callbacks_t cb;
    gc_result_t res;     /* generate: filled by the pump */
    Gistd__Reply *final; /* the final reply, for the waiting call to take (NULL after an error) */
} gc_pending_t;

struct gc_client {
    void *zctx, *sock;
    void *mon;  /* PAIR socket reading the DEALER's handshake failures */
    bool curve; /* this client authenticates with CURVE */
    char endpoint[256];
    int timeout_ms;
    uint64_t next_id;
    gc_model_info_t model;
    gc_pending_t *pend;
    uint32_t n_pend, cap_pend;
};

/* Sends r (its id is set here) and registers it as outstanding with callbacks cb (may be
 * NULL). *id gets the request id. */
int gc_send_request(gc_client_t *c, Gistd__Request *r, const gc_callbacks_t *cb, uint64_t *id,
                    err_info_t *e);
/* Waits for request id's final reply. On success *final (may be NULL: freed here) owns the
 * decoded reply (gistd__reply__free_unpacked), and res (may be NULL) gets a generation's
 * result. The entry is gone afterwards, whatever happened. */
int gc_wait_final(gc_client_t *c, uint64_t id, Gistd__Reply **final, gc_result_t *res,
                  err_info_t *e);
/* Sends r and waits for its final reply, which must have body `want`. */
int gc_call(gc_client_t *c, Gistd__Request *r, Gistd__Reply__BodyCase want, Gistd__Reply **out,
            err_info_t *e);

/* A Usage message as gc_usage_t (zeros when u is NULL). */
void gc_usage_from_wire(const Gistd__Usage *u, gc_usage_t *out);

#endif
