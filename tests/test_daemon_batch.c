/* Integration tests of gistd's batches, against a real daemon on a loopback port: while N
 * sessions are all generating, every step decodes all N of them (the daemon's decode
 * counters, read between snapshots in which every session is generating), and the counters
 * count each generated token that is decoded exactly once. */
#include "tests/test_daemon_util.h"

#define N_SESS 8
/* Long enough that the client sees every session generating before the first one ends,
 * however slowly this machine runs it. */
#define N_TOKENS 400

static const char *const prompts[N_SESS] = {
    "Once upon a time", "The little dog", "She said hello to", "One day, a big",
    "Tom and Sue went", "The sun was",    "A bird sat on the", "In the garden there",
};

typedef struct tally {
    uint32_t tokens;
} tally_t;

static int count_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    ((tally_t *)ctx)->tokens++;
    return 0;
}

/* Snapshot of the daemon's decode counters and how many of sid[] are generating (state
 * "generate": a request running, its first token out). 0, or -1 after a failed check. */
typedef struct snap {
    uint64_t steps, items;
    int generating;
    bool gen[N_SESS]; /* sid[k] is generating */
} snap_t;

static int snap_take(gc_client_t *c, const uint32_t *sid, snap_t *out)
{
    gc_stats_t st;
    err_info_t e;
    if (gc_stats(c, true, &st, &e)) {
        check_fail_(__FILE__, __LINE__, "stats: %s", err_msg(&e));
        return -1;
    }
    out->steps = st.decode_steps;
    out->items = st.decode_items;
    out->generating = 0;
    for (int k = 0; k < N_SESS; k++) {
        out->gen[k] = false;
        for (uint32_t i = 0; i < st.n_session_list; i++)
            if (st.session_list[i].id == sid[k] && !strcmp(st.session_list[i].state, "generate"))
                out->gen[k] = true;
        out->generating += out->gen[k];
    }
    gc_stats_free(&st);
    return 0;
}

/* Eight generations at once. Between a snapshot in which all eight are generating and a
 * later one in which all eight still are, each of them was decoding in every step (a
 * generation decodes one token a step until it ends), so the steps in between decoded
 * eight tokens each: a scheduler that left a decoder out of a step, or split them over
 * steps, fails. Over the whole run the counters hold every generated token but each
 * generation's last (sampled, never fed back) exactly once. */
static void test_decode_steps_carry_every_session(void)
{
    const char *model = td_tmp_path("batch.gguf");
    char *argv[] = {(char *)td_bin("gist-model"),
                    "make-tiny",
                    (char *)model,
                    "--seed",
                    "21",
                    "--n-embd",
                    "128",
                    "--n-layer",
                    "4",
                    "--n-ctx",
                    "1024",
                    NULL};
    if (td_run(argv, NULL, 0) != 0) {
        check_fail_(__FILE__, __LINE__, "gist-model make-tiny %s failed", model);
        return;
    }
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t sid[N_SESS];
    uint64_t req[N_SESS];
    tally_t tally[N_SESS] = {0};
    snap_t s0, s1 = {0}, s2 = {0}, s;
    for (int i = 0; i < N_SESS; i++)
        CHECK_OK(gc_open(c, NULL, &sid[i], &e));
    if (snap_take(c, sid, &s0))
        goto out;
    for (int i = 0; i < N_SESS; i++) {
        gc_gen_opts_t o = {.session = sid[i],
                           .max_tokens = N_TOKENS,
                           .prompt = prompts[i],
                           .sampling = &td_greedy};
        gc_callbacks_t cb = {.ctx = &tally[i], .on_token = count_token};
        CHECK_OK(gc_generate_start(c, &o, &cb, &req[i], &e));
    }
    /* the first snapshot with all eight generating, then the last one before any ends */
    bool all = false;
    for (int k = 0; k < 1000000; k++) { /* a bound for generations that never stream */
        if (snap_take(c, sid, &s))
            goto out;
        if (s.generating == N_SESS) {
            if (!all)
                s1 = s;
            s2 = s;
            all = true;
            continue;
        }
        /* one has ended since all were generating, or one that streamed is no longer
         * generating: it ended before the others began */
        bool ended = all;
        for (int i = 0; i < N_SESS && !ended; i++)
            ended = tally[i].tokens > 0 && !s.gen[i];
        if (ended)
            break;
    }
    CHECK_MSG(all, "no snapshot saw all %d sessions generating", N_SESS);
    if (all) {
        CHECK_MSG(s2.steps > s1.steps, "no step ran between snapshots %llu and %llu",
                  (unsigned long long)s1.steps, (unsigned long long)s2.steps);
        CHECK_MSG(
            s2.items - s1.items == (uint64_t)N_SESS * (s2.steps - s1.steps),
            "while all %d sessions generated, %llu steps decoded %llu tokens (%.2f a step)", N_SESS,
            (unsigned long long)(s2.steps - s1.steps), (unsigned long long)(s2.items - s1.items),
            s2.steps > s1.steps ? (double)(s2.items - s1.items) / (double)(s2.steps - s1.steps)
                                : 0.0);
    }
    uint64_t decoded = 0;
    uint32_t longest = 0;
    for (int i = 0; i < N_SESS; i++) {
        gc_result_t res = {0};
        CHECK_OK(gc_wait(c, req[i], &res, &e));
        CHECK_INT(tally[i].tokens, ==, res.n_tokens);
        CHECK(res.usage.generated_tokens >= 1);
        /* every generated token but the last is fed back: an end-of-sequence token counts
         * among the generated (usage) but is not streamed (n_tokens) */
        const uint64_t gen = res.usage.generated_tokens;
        CHECK_INT(gen, ==, res.n_tokens + (res.reason == GC_STOP_EOS));
        decoded += gen - 1;
        longest = gen > longest ? (uint32_t)gen : longest;
        gc_result_free(&res);
    }
    if (snap_take(c, sid, &s))
        goto out;
    CHECK_INT(s.generating, ==, 0);
    CHECK_INT(s.items - s0.items, ==, decoded);
    /* the steps span the longest generation, and no two decode steps could have been one */
    CHECK_INT(s.steps - s0.steps, >=, longest - 1);
    CHECK_INT(s.steps - s0.steps, <, decoded);
out:
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_decode_steps_carry_every_session);
    return check_done();
}
