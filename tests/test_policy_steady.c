/*
 * A long feed at steady state under a tight budget, for every policy that compacts: crossing
 * the soft watermark compacts down to the low watermark in one round (hysteresis), so events
 * come a few per round and rounds come as often as the gap between the two watermarks fills,
 * not once per token. After every token: the hard limit holds, and every event frees bytes
 * (a step that cannot free a block leaves the rows alone). The same feed with low=1 (back
 * under the watermark only, as before) shows what the hysteresis saves.
 */
#include "tests/test_policy_util.h"

#define STEADY_TOKENS 12000u
#define STEADY_WARM   3000u /* tokens before the figures count: the budget fills first */
#define STEADY_BLOCKS 24u   /* blocks per lane the soft watermark holds, about */

typedef struct steady {
    uint64_t events;    /* after the warm-up */
    uint64_t rounds;    /* commits after the warm-up that compacted */
    uint64_t zero;      /* events that freed no bytes (or fewer than none) */
    uint64_t over;      /* calls after which the session was above its hard limit */
    size_t soft, hard;  /* the limits */
    size_t token_bytes; /* raw bytes a token takes in every lane, rounded to blocks */
} steady_t;

/* Sentence lengths from 3 to 25 tokens, reproducibly. */
static const char **steady_text(uint32_t n)
{
    const char **p = malloc(sizeof *p * n);
    uint32_t left = 0, k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (left == 0) {
            left = 3 + (uint32_t)(pt_mix(k++) % 23);
            p[i] = i == 0 ? "" : ".";
        } else {
            p[i] = " w";
        }
        left--;
    }
    return p;
}

static void steady_run(const char *name, const char *low, bool gates, steady_t *r)
{
    memset(r, 0, sizeof *r);
    pt_fx_t *f = malloc(sizeof *f);
    err_info_t e;
    err_clear(&e);
    pol_param_t ps[] = {{"low", low}};
    pt_opts_t o = {.name = name, .params = ps, .n_params = low ? 1 : 0, .gates = gates};
    CHECK_OK(pt_open(f, &o, &e));
    size_t blk = kv_block_bytes(f->st, DT_F32);
    if (pol_wants_attn_acc(f->p))
        blk += kv_block_rows(f->st) * sizeof(float);
    const size_t head = pol_headroom(f->p, 1);
    r->soft = pt_bytes(f) + (size_t)PT_LANES * STEADY_BLOCKS * blk + 16384;
    r->hard = r->soft + head;
    r->token_bytes = PT_LANES * blk / kv_block_rows(f->st);
    CHECK_OK(kv_session_set_limits(f->st, f->sid, r->hard, r->soft, NULL));

    const char **text = steady_text(STEADY_TOKENS);
    for (uint32_t i = 0; i < STEADY_TOKENS; i++) {
        pol_text_t t = {text[i], (uint32_t)strlen(text[i])};
        int32_t id = 10 + (int32_t)(i % 400);
        uint32_t k;
        f->n_ev = 0;
        int rc = pol_next(f->p, &t, 1, &k, &e);
        if (!rc)
            rc = pol_reserve(f->p, 1, &e);
        CHECK_MSG(rc == 0, "%s: token %u: %s", name, i, err_msg(&e));
        if (rc)
            break;
        CHECK_OK(pt_commit_rows(f, &id, 1, 1.0f));
        CHECK_OK(pol_commit(f->p, &t, 1, &e));
        r->over += pt_bytes(f) > r->hard;
        for (uint32_t j = 0; j < f->n_ev; j++)
            if (f->ev[j].bytes_freed <= 0) {
                if (r->zero++ == 0)
                    CHECK_MSG(
                        false,
                        "%s low=%s: token %u: %s %s (%s) freed %lld bytes (%llu rows -> %llu)",
                        name, low ? low : "default", i, pol_action_name(f->ev[j].action),
                        pol_reason_name(f->ev[j].reason), pol_method_name(f->ev[j].method),
                        (long long)f->ev[j].bytes_freed, (unsigned long long)f->ev[j].rows_before,
                        (unsigned long long)f->ev[j].rows_after);
            }
        if (i >= STEADY_WARM) {
            r->events += f->n_ev;
            r->rounds += f->n_ev > 0;
        }
    }
    CHECK_OK(kv_store_check(f->st, &e));
    free(text);
    pt_close(f);
    free(f);
}

/* Every compacting policy: events per 1,000 tokens bounded by the rounds the watermark gap
 * allows (each round frees (1 - low) of the soft watermark; a token adds token_bytes), a
 * few events a round; no event frees nothing; the hard limit holds. */
static void test_steady_state_every_policy(void)
{
    static const struct {
        const char *name;
        bool gates;
    } pols[] = {{"auto", false}, {"auto", true}, {"pool", false},  {"h2o", false},
                {"tova", false}, {"trim", true}, {"window", false}};
    for (size_t i = 0; i < sizeof pols / sizeof pols[0]; i++) {
        steady_t r, old;
        steady_run(pols[i].name, NULL, pols[i].gates, &r);
        steady_run(pols[i].name, "1", pols[i].gates, &old);
        const double k = 1000.0 / (STEADY_TOKENS - STEADY_WARM);
        const double per_round = 1000.0 * (double)r.token_bytes / (0.15 * (double)r.soft);
        printf("# %-6s%s: %.1f events, %.1f rounds per 1,000 tokens (the watermark gap allows "
               "%.1f rounds); low=1: %.1f events, %.1f rounds\n",
               pols[i].name, pols[i].gates ? " (gates)" : "", k * (double)r.events,
               k * (double)r.rounds, per_round, k * (double)old.events, k * (double)old.rounds);
        CHECK_INT(r.zero, ==, 0);
        CHECK_INT(r.over, ==, 0);
        CHECK_INT(old.over, ==, 0);
        CHECK(r.rounds > 0);
        /* the gap also takes the transcript's growth and the gists a round makes: 25% */
        CHECK_MSG(k * (double)r.rounds <= 1.25 * per_round + 1.0,
                  "%s: %.1f rounds per 1,000 tokens", pols[i].name, k * (double)r.rounds);
        CHECK_MSG(3 * r.rounds < old.rounds, "%s: %llu rounds, %llu with low=1", pols[i].name,
                  (unsigned long long)r.rounds, (unsigned long long)old.rounds);
        CHECK_MSG(r.events <= 4 * r.rounds, "%s: %llu events in %llu rounds", pols[i].name,
                  (unsigned long long)r.events, (unsigned long long)r.rounds);
    }
}

/* The low watermark is a fraction in (0, 1], and the help says so. */
static void test_low_parameter(void)
{
    static const char *const bad[] = {"0", "1.5", "-0.2", "x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pt_fx_t *f = malloc(sizeof *f);
        err_info_t e;
        err_clear(&e);
        pol_param_t ps[] = {{"low", bad[i]}};
        pt_opts_t o = {.name = "auto", .params = ps, .n_params = 1};
        CHECK_INT(pt_open(f, &o, &e), ==, ERR_INVAL);
        CHECK_MSG(strstr(e.msg, "low") != NULL, "low=%s: %s", bad[i], e.msg);
        pt_close(f);
        free(f);
    }
    CHECK(strstr(pol_param_help(), "low=F") != NULL);
}

int main(void)
{
    RUN(test_low_parameter);
    RUN(test_steady_state_every_policy);
    return check_done();
}
