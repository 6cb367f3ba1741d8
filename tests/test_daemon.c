/* Integration tests of gistd through libgistc, against a real daemon on a loopback port:
 * concurrent sessions produce exactly what `gist-model generate` produces alone (the
 * batched forward equals single-sequence runs), append-then-generate equals one prompt,
 * score matches log-softmax of `gist-model logits`, and prefill never starves decoders. */
#include <math.h>

#include "tests/test_daemon_util.h"

static const char *const prompts[8] = {
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

/* Eight sessions generating at once give, token for token, the text gist-model generate
 * gives for each prompt alone. */
static void eight_sessions(const char *model, const char *n_tokens)
{
    char ref[8][4096];
    for (int i = 0; i < 8; i++)
        if (td_reference(model, prompts[i], n_tokens, ref[i], sizeof ref[i])) {
            check_fail_(__FILE__, __LINE__, "gist-model generate failed for '%s'", prompts[i]);
            return;
        }
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t sid[8];
    uint64_t req[8];
    tally_t tally[8] = {0};
    uint64_t total = 0; /* tokens generated, all sessions */
    /* every session first: an open is a round trip, in which the daemon could run a
     * generation already started to its end */
    for (int i = 0; i < 8; i++)
        CHECK_OK(gc_open(c, NULL, &sid[i], &e));
    for (int i = 0; i < 8; i++) {
        gc_gen_opts_t o = {.session = sid[i],
                           .max_tokens = (uint32_t)atoi(n_tokens),
                           .prompt = prompts[i],
                           .sampling = &td_greedy};
        gc_callbacks_t cb = {.ctx = &tally[i], .on_token = count_token};
        CHECK_OK(gc_generate_start(c, &o, &cb, &req[i], &e));
    }
    for (int i = 0; i < 8; i++) {
        gc_result_t res = {0};
        CHECK_OK(gc_wait(c, req[i], &res, &e));
        CHECK_MSG(res.text && !strcmp(res.text, ref[i]),
                  "prompt '%s': daemon \"%s\" vs gist-model \"%s\"", prompts[i],
                  res.text ? res.text : "(none)", ref[i]);
        CHECK_INT(tally[i].tokens, ==, res.n_tokens);
        CHECK_INT(res.usage.generated_tokens, >=, res.n_tokens);
        total += res.n_tokens;
        gc_result_free(&res);
    }
    /* They ran together. Run one after another, each session takes a step per generated
     * token (the prefill step yields the first), so the steps would equal the tokens; any two
     * sessions sharing a step make fewer. The eight generates were sent one after another
     * with no reply read between them, and the daemon reads what has arrived before each
     * step, so only a daemon that serialises sessions fails this (or a client held off the
     * processor between two sends for as long as a whole generation takes, seven times in a
     * row). With an open before each generate, a busy machine failed it 2 times in 12.
     * tests/test_daemon_batch.c holds the batches to every session, step by step. */
    gc_stats_t st;
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_MSG(st.steps < total, "%llu steps for %llu generated tokens: no two sessions shared a step",
              (unsigned long long)st.steps, (unsigned long long)total);
    CHECK_INT(st.sessions, ==, 8);
    gc_stats_free(&st);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

static void test_eight_sessions_tiny(void)
{
    const char *model = td_tiny_model("tiny8.gguf", "11");
    if (model)
        eight_sessions(model, "24");
}

static void test_eight_sessions_stories(void)
{
    const char *model = check_shared_or_skip("models/stories260K-f32.gguf");
    if (!model)
        return;
    eight_sessions(model, "40");
}

/* Append then generate (no prompt) gives what one generate with the prompt gives; two
 * generates in a row continue the same text as one generate of the sum. */
static void test_append_then_generate(void)
{
    char ref[4096];
    const char *model =
        td_tiny_reference("tiny_append.gguf", "12", "Once upon a time", "20", ref, sizeof ref);
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    gc_usage_t u;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    CHECK_OK(gc_append(c, s, "Once upon a time", 0, GC_ROLE_NONE, &u, &e));
    CHECK(u.prompt_tokens > 1);
    gc_gen_opts_t o = {.session = s, .max_tokens = 8, .sampling = &td_greedy};
    gc_result_t a = {0}, b = {0};
    CHECK_OK(gc_generate(c, &o, NULL, &a, &e));
    o.max_tokens = 12;
    CHECK_OK(gc_generate(c, &o, NULL, &b, &e));
    char both[8192];
    snprintf(both, sizeof both, "%s%s", a.text ? a.text : "", b.text ? b.text : "");
    CHECK_MSG(!strcmp(both, ref), "8 + 12 tokens \"%s\" vs 20 tokens \"%s\"", both, ref);
    CHECK_INT(a.reason, ==, GC_STOP_LENGTH);
    /* the transcript is the prompt and both generations */
    char *text = NULL;
    uint32_t total = 0, n = 0;
    CHECK_OK(gc_transcript(c, s, 0, 0, &text, NULL, NULL, &n, &total, &e));
    char full[8192];
    snprintf(full, sizeof full, "Once upon a time%s", ref);
    CHECK_MSG(text && !strcmp(text, full), "transcript \"%s\" vs \"%s\"", text, full);
    CHECK_INT(n, ==, total);
    free(text);
    gc_result_free(&a);
    gc_result_free(&b);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* Score's log-probabilities equal the log-softmax of gist-model logits at each position. */
static void test_score_matches_logits(void)
{
    const char *model = td_tiny_model("tiny_score.gguf", "13");
    if (!model)
        return;
    const int32_t ids[] = {1, 40, 77, 120, 5, 300, 261, 99, 14, 200};
    const size_t n = sizeof ids / sizeof ids[0];
    char path[600], list[256] = "";
    snprintf(path, sizeof path, "%s/score_logits.bin", check_tmpdir());
    for (size_t i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? " " : "", ids[i]);
    char *argv[] = {(char *)td_bin("gist-model"),
                    "logits",
                    (char *)model,
                    "--tokens",
                    list,
                    "--out",
                    path,
                    NULL};
    if (td_run(argv, NULL, 0) != 0) {
        CHECK(!"gist-model logits failed");
        return;
    }
    FILE *f = fopen(path, "rb");
    static float logits[10][384];
    CHECK(f && fread(logits, sizeof logits, 1, f) == 1);
    if (f)
        fclose(f);

    /* f32 rows, as the flat cache keeps them: the first token's row is read back from the
     * store, and f16 would round it (2e-4 in a log-probability) */
    const char *const extra[] = {"--kv-type", "f32", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    gc_open_opts_t oo = {.no_bos = true};
    CHECK_OK(gc_open(c, &oo, &s, &e));
    /* the first token alone, then the rest: the first scored token of the second call is
     * predicted by logits the session kept from the first */
    float *lp = NULL;
    int32_t *tk = NULL;
    size_t got = 0;
    double total = 0;
    CHECK_OK(gc_score(c, s, NULL, ids, 1, &lp, &tk, &got, &total, &e));
    CHECK_INT(got, ==, 1);
    CHECK(lp && isnan(lp[0])); /* nothing before it */
    free(lp);
    free(tk);
    CHECK_OK(gc_score(c, s, NULL, ids + 1, n - 1, &lp, &tk, &got, &total, &e));
    CHECK_INT(got, ==, n - 1);
    double sum = 0;
    for (size_t i = 0; lp && i + 1 < n; i++) {
        const float *row = logits[i]; /* predicts ids[i + 1] */
        double mx = row[0], z = 0;
        for (int v = 1; v < 384; v++)
            mx = row[v] > mx ? row[v] : mx;
        for (int v = 0; v < 384; v++)
            z += exp(row[v] - mx);
        const double want = row[ids[i + 1]] - mx - log(z);
        CHECK_INT(tk[i], ==, ids[i + 1]);
        CHECK_NEAR(lp[i], want, 1e-4);
        sum += want;
    }
    CHECK_NEAR(total, sum, 1e-3);
    free(lp);
    free(tk);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* A long prefill goes in chunks beside a decoding session: the decoder gets a token every
 * step while the prompt is prefilled, instead of waiting for it. */
static void test_prefill_does_not_starve(void)
{
    const char *model = td_tiny_model("tiny_fair.gguf", "14");
    const char *extra[] = {"--prefill-chunk", "16", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t a, b;
    CHECK_OK(gc_open(c, NULL, &a, &e));
    CHECK_OK(gc_open(c, NULL, &b, &e));
    tally_t ta = {0};
    gc_gen_opts_t o = {.session = a, .max_tokens = 200, .prompt = "go", .sampling = &td_greedy};
    gc_callbacks_t cb = {.ctx = &ta, .on_token = count_token};
    uint64_t req;
    CHECK_OK(gc_generate_start(c, &o, &cb, &req, &e));
    int32_t ids[200];
    for (int i = 0; i < 200; i++)
        ids[i] = 3 + (i * 7) % 250;
    gc_usage_t u;
    /* while this blocks, a's tokens stream to its callback */
    CHECK_OK(gc_append_tokens(c, b, ids, 200, &u, &e));
    const uint32_t seen = ta.tokens;
    CHECK_INT(u.prompt_tokens, >=, 200);
    CHECK_MSG(seen >= 10, "a decoder saw %u tokens during a 200-token prefill in 16-token chunks",
              seen);
    gc_result_t res = {0};
    CHECK_OK(gc_cancel(c, a, &e));
    CHECK_OK(gc_wait(c, req, &res, &e));
    CHECK(res.reason == GC_STOP_CANCELLED || res.reason == GC_STOP_LENGTH ||
          res.reason == GC_STOP_EOS);
    gc_result_free(&res);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_eight_sessions_tiny);
    RUN(test_eight_sessions_stories);
    RUN(test_append_then_generate);
    RUN(test_score_matches_logits);
    RUN(test_prefill_does_not_starve);
    return check_done();
}
