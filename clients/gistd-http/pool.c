/*
 * clients/gistd-http/pool.c — the gateway's gistd connections: idle ones wait in a stack, a
 * request takes one (or a new one) for its thread, and gives it back when it is done.
 */
#include <stdlib.h>
#include <string.h>

#include "clients/gistd-http/http.h"

struct gh_pool {
    pthread_mutex_t mu;
    gc_connect_opts_t opts;
    char endpoint[256];
    char server_key[GC_KEY_LEN], public_key[GC_KEY_LEN], secret_key[GC_KEY_LEN];
    gc_client_t **idle;
    unsigned n_idle, cap_idle;
    gc_model_info_t model;
    bool have_model;
};

int gh_pool_new(const gc_connect_opts_t *o, gh_pool_t **out)
{
    gh_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return ERR_NOMEM;
    pthread_mutex_init(&p->mu, NULL);
    snprintf(p->endpoint, sizeof p->endpoint, "%s",
             o->endpoint && *o->endpoint ? o->endpoint : GC_DEFAULT_ENDPOINT);
    p->opts.endpoint = p->endpoint;
    p->opts.timeout_ms = o->timeout_ms;
    if (o->server_key) {
        snprintf(p->server_key, sizeof p->server_key, "%s", o->server_key);
        snprintf(p->public_key, sizeof p->public_key, "%s", o->public_key);
        snprintf(p->secret_key, sizeof p->secret_key, "%s", o->secret_key);
        p->opts.server_key = p->server_key;
        p->opts.public_key = p->public_key;
        p->opts.secret_key = p->secret_key;
    }
    *out = p;
    return 0;
}

void gh_pool_destroy(gh_pool_t **pp)
{
    gh_pool_t *p = *pp;
    if (!p)
        return;
    for (unsigned i = 0; i < p->n_idle; i++)
        gc_disconnect(&p->idle[i]);
    free(p->idle);
    pthread_mutex_destroy(&p->mu);
    free(p);
    *pp = NULL;
}

bool gh_transport_error(int rc)
{
    return rc == ERR_TIMEOUT || rc == ERR_IO || rc == ERR_PROTO || rc == ERR_CANCELLED ||
           rc == ERR_PERM || rc == ERR_UNSUPPORTED;
}

int gh_pool_get(gh_pool_t *p, gc_client_t **out, err_info_t *e)
{
    pthread_mutex_lock(&p->mu);
    gc_client_t *c = p->n_idle ? p->idle[--p->n_idle] : NULL;
    pthread_mutex_unlock(&p->mu);
    if (c) {
        *out = c;
        return 0;
    }
    int rc = gc_connect_opts(&p->opts, &c, e);
    if (rc)
        return rc;
    pthread_mutex_lock(&p->mu);
    p->model = *gc_model(c);
    p->have_model = true;
    pthread_mutex_unlock(&p->mu);
    *out = c;
    return 0;
}

void gh_pool_put(gh_pool_t *p, gc_client_t *c, int rc)
{
    if (!c)
        return;
    if (gh_transport_error(rc)) {
        gc_disconnect(&c);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (p->n_idle == p->cap_idle) {
        unsigned cap = p->cap_idle ? p->cap_idle * 2 : 16;
        gc_client_t **v = realloc(p->idle, cap * sizeof *v);
        if (v) {
            p->idle = v;
            p->cap_idle = cap;
        }
    }
    if (p->n_idle < p->cap_idle) {
        p->idle[p->n_idle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    gc_disconnect(&c); /* no room to keep it */
}

bool gh_pool_model(gh_pool_t *p, gc_model_info_t *out)
{
    pthread_mutex_lock(&p->mu);
    bool have = p->have_model;
    if (have)
        *out = p->model;
    pthread_mutex_unlock(&p->mu);
    return have;
}
