/*
 * tests/test_fuzz_regress_daemon.c — the request fuzz target's check (daemon/fuzz_request.c)
 * on its checked-in seeds (fuzz/corpus/fuzz_request/) and on every input that once broke
 * something (tests/data/fuzz/fuzz_request/): each runs against a daemon made in-process, so
 * the normal, asan, valgrind and tsan builds all replay them. And the target's
 * structure-aware mutation (fuzz_request_mutate): what it makes fits, decodes, repeats for
 * a seed, reaches every body of a Request and the extremes of its numeric fields, and the
 * daemon holds under a sample of it.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz/replay.h"
#include "proto/gistd.pb-c.h"

static void test_replay_request(void)
{
    fuzz_replay("fuzz_request", fuzz_request_one);
}

typedef struct seen {
    bool body[64];      /* Request body cases */
    bool window_max;    /* sampling.repeat_last_n INT32_MAX, in an open or a generate */
    bool top_k_neg;     /* sampling.top_k < 0 */
    bool top_p_nan;     /* sampling.top_p NaN */
    bool budget_max;    /* set_budget.hard_bytes 2^64 - 1 */
    bool budget_zero;   /* set_budget of the global limit to 0 */
} seen_t;

static void note_sampling(const Gistd__Sampling *smp, seen_t *sn)
{
    if (!smp)
        return;
    sn->window_max |= smp->repeat_last_n == INT32_MAX;
    sn->top_k_neg |= smp->top_k < 0;
    sn->top_p_nan |= smp->top_p != smp->top_p;
}

/* Notes what the records of an input hold; the number of records that do not decode. */
static int note_records(const uint8_t *p, size_t n, seen_t *sn)
{
    int bad = 0;
    size_t off = 0;
    while (off + 2 <= n) {
        const size_t want = (size_t)p[off] | (size_t)p[off + 1] << 8;
        off += 2;
        const size_t len = want < n - off ? want : n - off;
        Gistd__Request *q = gistd__request__unpack(NULL, len, p + off);
        off += len;
        if (!q) {
            bad++;
            continue;
        }
        if ((unsigned)q->body_case < 64)
            sn->body[q->body_case] = true;
        if (q->body_case == GISTD__REQUEST__BODY_GENERATE)
            note_sampling(q->generate->sampling, sn);
        if (q->body_case == GISTD__REQUEST__BODY_OPEN)
            note_sampling(q->open->sampling, sn);
        if (q->body_case == GISTD__REQUEST__BODY_SET_BUDGET) {
            sn->budget_max |= q->set_budget->hard_bytes == UINT64_MAX;
            sn->budget_zero |= !q->set_budget->session && !q->set_budget->hard_bytes;
        }
        gistd__request__free_unpacked(q, NULL);
    }
    return bad;
}

static void test_mutator_reaches_extremes(void)
{
    enum { MAX = 4096, CHAIN = 40 };
    const bool quick = getenv("GISTD_TEST_QUICK") != NULL;
    const int steps = 20000, daemon_runs = quick ? 20 : 200;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fuzz/corpus/fuzz_request", check_root());
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    uint8_t *seeds[64];
    size_t seed_len[64];
    int n_seeds = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) && n_seeds < 64) {
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "malformed"))
            continue; /* the malformed seed's records do not decode, by design */
        char file[sizeof dir + 260];
        snprintf(file, sizeof file, "%s/%s", dir, de->d_name);
        seeds[n_seeds] = fuzz_slurp(file, &seed_len[n_seeds]);
        if (seeds[n_seeds] && seed_len[n_seeds] <= MAX)
            n_seeds++;
        else
            free(seeds[n_seeds]);
    }
    if (d)
        closedir(d);
    CHECK(n_seeds > 0);
    if (n_seeds == 0)
        return;

    static uint8_t buf[MAX], again[MAX];
    seen_t sn = {0};
    size_t size = 0;
    int runs = 0, undecodable = 0;
    for (int i = 0; i < steps; i++) {
        if (i % CHAIN == 0) { /* a chain of mutations from a seed */
            const int k = (i / CHAIN) % n_seeds;
            memcpy(buf, seeds[k], seed_len[k]);
            size = seed_len[k];
        }
        const unsigned seed = (unsigned)i * 2654435761u;
        memcpy(again, buf, size);
        const size_t n = fuzz_request_mutate(buf, size, MAX, seed);
        const size_t n2 = fuzz_request_mutate(again, size, MAX, seed);
        CHECK_MSG(n == n2 && !memcmp(buf, again, n), "step %d: seed %u gave two outputs", i, seed);
        CHECK(n <= MAX);
        if (!n)
            continue;
        size = n;
        undecodable += note_records(buf, size, &sn);
        if (i % (steps / daemon_runs) == 0) {
            char why[512] = "";
            CHECK_MSG(fuzz_request_one(buf, size, why, sizeof why) == 0, "step %d: %s", i, why);
            runs++;
        }
    }
    CHECK_MSG(undecodable == 0, "%d records the mutation made do not decode", undecodable);
    const ProtobufCMessageDescriptor *rd = &gistd__request__descriptor;
    for (unsigned f = 0; f < rd->n_fields; f++)
        if (rd->fields[f].flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            CHECK_MSG(sn.body[rd->fields[f].id], "no %s body in %d mutations", rd->fields[f].name,
                      steps);
    CHECK(sn.window_max && sn.top_k_neg && sn.top_p_nan);
    CHECK(sn.budget_max && sn.budget_zero);
    CHECK_INT(runs, >=, daemon_runs / 2);
    for (int k = 0; k < n_seeds; k++)
        free(seeds[k]);
}

int main(void)
{
    RUN(test_replay_request);
    RUN(test_mutator_reaches_extremes);
    return check_done();
}
