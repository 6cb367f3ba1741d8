/*
 * daemon/policy.c — the table of compaction policies, and `full`: keep every row.
 *
 * `full` is the baseline every other policy is measured against: the full cache. It never
 * frees anything, so when a budget refuses a reservation the request fails with ERR_BUDGET
 * and the session keeps everything it had.
 */
#include <string.h>

#include "daemon/policy.h"

static int full_create(const dmn_pol_param_t *params, uint32_t n_params, void **state,
                       err_info_t *e)
{
    *state = NULL;
    if (n_params > 0)
        return err_set(e, ERR_INVAL, "policy 'full' takes no parameters (got '%s')", params[0].key);
    return 0;
}

static void full_destroy(void *state)
{
    (void)state;
}

static int full_make_room(void *state, const dmn_pol_ctx_t *c, size_t need, err_info_t *e)
{
    return err_set(e, ERR_BUDGET,
                   "policy 'full' never compacts, and %zu more bytes are needed; raise the "
                   "budget or close sessions",
                   need);
}

static int full_after_step(void *state, const dmn_pol_ctx_t *c, uint32_t pos0, uint32_t n,
                           err_info_t *e)
{
    return 0;
}

static int full_shrink(void *state, const dmn_pol_ctx_t *c, size_t target, err_info_t *e)
{
    return 0; /* frees nothing; the caller sees the session is still above target */
}

static int full_compact(void *state, const dmn_pol_ctx_t *c, const dmn_compact_req_t *r,
                        err_info_t *e)
{
    return err_set(e, ERR_UNSUPPORTED, "policy 'full' never compacts");
}

static const dmn_pol_ops_t pol_full = {
    .name = "full",
    .create = full_create,
    .destroy = full_destroy,
    .make_room = full_make_room,
    .after_step = full_after_step,
    .shrink = full_shrink,
    .compact = full_compact,
    .save = NULL,
    .load = NULL,
};

static const dmn_pol_ops_t *const policies[] = {&pol_full};

const dmn_pol_ops_t *dmn_pol_find(const char *name)
{
    if (!name || !*name)
        return &pol_full;
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++)
        if (!strcmp(policies[i]->name, name))
            return policies[i];
    return NULL;
}

const char *dmn_pol_names(void)
{
    return "full";
}
