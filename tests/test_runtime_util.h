/* tests/test_runtime_util.h — what the session-runtime tests share: feeding one session a step
 * at a time, and token ids from a seed. */
#ifndef GISTD_TEST_RUNTIME_UTIL_H
#define GISTD_TEST_RUNTIME_UTIL_H

#include <stdint.h>

#include "runtime/runtime.h"

/* Runs tok[0..n) through s a step at a time (as many as each step takes), the policy's hooks
 * after each; the first error's code. */
static inline int rtu_feed(rt_t *rt, rt_sess_t *s, const int32_t *tok, uint32_t n, err_info_t *e)
{
    for (uint32_t i = 0; i < n;) {
        uint32_t k;
        rt_step_begin(rt);
        int rc = rt_step_add(rt, s, tok + i, n - i, false, &k, e);
        if (!rc)
            rc = rt_step_run(rt, e);
        if (!rc)
            rc = rt_step_commit(rt, 0, e);
        if (!rc)
            rc = rt_step_policy(rt, 0, e);
        if (rc)
            return rc;
        i += k;
    }
    return 0;
}

/* n token ids in [3, 303) from a seed (a linear congruential sequence). */
static inline void rtu_tokens(int32_t *tok, uint32_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (uint32_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        tok[i] = 3 + (int32_t)((x >> 8) % 300);
    }
}

#endif
