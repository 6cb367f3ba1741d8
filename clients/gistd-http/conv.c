/*
 * clients/gistd-http/conv.c — the conversations the gateway holds, each in a gistd session,
 * found again by the hashes of their messages (or by an explicit binding).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistd-http/http.h"

struct gh_convs {
    pthread_mutex_t mu;
    gh_conv_t **v;
    unsigned n, cap, max;
    double idle_s;
};

uint64_t gh_message_hash(int role, const char *text, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, 64 bits */
    h = (h ^ (uint8_t)role) * 0x100000001b3ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)text[i]) * 0x100000001b3ull;
    return h;
}

int gh_convs_new(unsigned max, double idle_s, gh_convs_t **out)
{
    gh_convs_t *t = calloc(1, sizeof *t);
    if (!t)
        return ERR_NOMEM;
    pthread_mutex_init(&t->mu, NULL);
    t->max = max ? max : 1;
    t->idle_s = idle_s;
    *out = t;
    return 0;
}

static void conv_free(gh_conv_t *c)
{
    if (c)
        free(c->hash);
    free(c);
}

void gh_convs_destroy(gh_convs_t **tp, uint32_t **sessions, unsigned *n)
{
    gh_convs_t *t = *tp;
    *sessions = NULL;
    *n = 0;
    if (!t)
        return;
    uint32_t *s = malloc((t->n ? t->n : 1) * sizeof *s);
    for (unsigned i = 0; i < t->n; i++) {
        if (s && t->v[i]->owned && t->v[i]->session)
            s[(*n)++] = t->v[i]->session;
        conv_free(t->v[i]);
    }
    *sessions = s;
    free(t->v);
    pthread_mutex_destroy(&t->mu);
    free(t);
    *tp = NULL;
}

/* Removes entry i (the table's lock held); its owned session goes to gone when there is room
 * (there always is for the callers, which remove at most one each). */
static void remove_at(gh_convs_t *t, unsigned i, gh_closing_t *gone)
{
    gh_conv_t *c = t->v[i];
    if (c->owned && c->session && gone && gone->n < sizeof gone->session / sizeof gone->session[0])
        gone->session[gone->n++] = c->session;
    conv_free(c);
    t->v[i] = t->v[--t->n];
}

/* Makes room for one more conversation: the least recently used idle one goes. */
static void make_room(gh_convs_t *t, gh_closing_t *gone)
{
    while (t->n >= t->max) {
        int lru = -1;
        for (unsigned i = 0; i < t->n; i++)
            if (!t->v[i]->busy && (lru < 0 || t->v[i]->t_used < t->v[lru]->t_used))
                lru = (int)i;
        if (lru < 0)
            return; /* every one is in use: the table grows past its limit for now */
        remove_at(t, (unsigned)lru, gone);
    }
}

static bool is_prefix(const gh_conv_t *c, const uint64_t *hash, uint32_t n)
{
    if (c->n_hash > n)
        return false;
    for (uint32_t i = 0; i < c->n_hash; i++)
        if (c->hash[i] != hash[i])
            return false;
    return true;
}

/* A numeric binding names a gistd session; any other names a conversation. */
static bool bind_session(const char *bind, uint32_t *id)
{
    char *end;
    unsigned long v = strtoul(bind, &end, 10);
    if (*end || end == bind || bind[0] == '-' || bind[0] == '+' || v == 0 || v > UINT32_MAX)
        return false;
    *id = (uint32_t)v;
    return true;
}

int gh_convs_acquire(gh_convs_t *t, const char *bind, const uint64_t *hash, uint32_t n,
                     gh_conv_t **out, uint32_t *matched, gh_closing_t *gone, err_info_t *e)
{
    const bool bound = bind && *bind;
    uint32_t sid = 0;
    const bool by_id = bound && bind_session(bind, &sid);
    if (bound && strlen(bind) >= sizeof((gh_conv_t *)0)->bind)
        return err_set(e, ERR_INVAL, "session binding '%.40s...' is longer than %zu bytes", bind,
                       sizeof((gh_conv_t *)0)->bind - 1);
    pthread_mutex_lock(&t->mu);
    gh_conv_t *best = NULL;
    for (unsigned i = 0; i < t->n; i++) {
        gh_conv_t *c = t->v[i];
        if (bound) {
            if (by_id ? c->session == sid : !strcmp(c->bind, bind)) {
                best = c;
                break;
            }
        } else if (!c->bind[0] && !c->busy && is_prefix(c, hash, n) &&
                   (!best || c->n_hash > best->n_hash)) {
            best = c;
        }
    }
    if (best && best->busy) {
        pthread_mutex_unlock(&t->mu);
        return err_set(e, ERR_BUSY,
                       "session %s is answering another request; send one request at a time "
                       "to a bound session",
                       bind);
    }
    if (best) {
        best->busy = true;
        *matched = is_prefix(best, hash, n) ? best->n_hash : 0;
        pthread_mutex_unlock(&t->mu);
        *out = best;
        return 0;
    }
    make_room(t, gone);
    if (t->n == t->cap) {
        const unsigned cap = t->cap ? t->cap * 2 : 16;
        gh_conv_t **v = realloc(t->v, cap * sizeof *v);
        if (!v) {
            pthread_mutex_unlock(&t->mu);
            return err_set(e, ERR_NOMEM, "out of memory for a conversation");
        }
        t->v = v;
        t->cap = cap;
    }
    gh_conv_t *c = calloc(1, sizeof *c);
    if (!c) {
        pthread_mutex_unlock(&t->mu);
        return err_set(e, ERR_NOMEM, "out of memory for a conversation");
    }
    c->busy = true;
    c->owned = !by_id; /* a session named by id was opened elsewhere: adopted, not closed */
    c->session = by_id ? sid : 0;
    if (bound)
        snprintf(c->bind, sizeof c->bind, "%s", bind);
    t->v[t->n++] = c;
    pthread_mutex_unlock(&t->mu);
    *matched = 0;
    *out = c;
    return 0;
}

void gh_convs_release(gh_convs_t *t, gh_conv_t *c, bool ok, gh_closing_t *gone)
{
    pthread_mutex_lock(&t->mu);
    for (unsigned i = 0; i < t->n; i++) {
        if (t->v[i] != c)
            continue;
        if (ok && c->session) {
            c->busy = false;
            c->t_used = gh_now();
        } else {
            remove_at(t, i, gone);
        }
        break;
    }
    pthread_mutex_unlock(&t->mu);
}

void gh_convs_reap(gh_convs_t *t, double now, gh_closing_t *gone)
{
    pthread_mutex_lock(&t->mu);
    for (unsigned i = 0; i < t->n && gone->n < sizeof gone->session / sizeof gone->session[0];) {
        gh_conv_t *c = t->v[i];
        if (!c->busy && now - c->t_used > t->idle_s)
            remove_at(t, i, gone); /* the last entry moved to i */
        else
            i++;
    }
    pthread_mutex_unlock(&t->mu);
}

bool gh_convs_evict(gh_convs_t *t, gh_closing_t *gone)
{
    pthread_mutex_lock(&t->mu);
    const unsigned n = t->n;
    const unsigned max = t->max;
    t->max = n ? n - 1 : 0;
    make_room(t, gone);
    t->max = max;
    const bool freed = t->n < n;
    pthread_mutex_unlock(&t->mu);
    return freed;
}

unsigned gh_convs_count(gh_convs_t *t)
{
    pthread_mutex_lock(&t->mu);
    unsigned n = t->n;
    pthread_mutex_unlock(&t->mu);
    return n;
}
