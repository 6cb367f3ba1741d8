/* Generate's options through a real gistd: seeded sampling (temperature, top-k, top-p, min-p,
 * repetition penalty) gives exactly what `gist-model generate` gives with the same seed; stop
 * strings, the client's and the chat template's, end a generation where they first complete
 * (GC_STOP_STRING), in this request's text only; and control-token texts ("</s>") in a
 * client's text stay text unless the request says `special`. The stop tests run on a model
 * whose greedy text is known: a tiny model rewritten into a chain of byte tokens. */
#include "model/gguf.h"
#include "tests/test_daemon_util.h"

/* ------------------------------------------------------------------ sampling */

/* The bytes `gist-model generate` adds after prompt in n tokens sampled with s, into out (*len
 * of them: a sampled byte token may be NUL). */
static int sampled_reference(const char *model, const char *prompt, uint32_t n,
                             const gc_sampling_t *s, char *out, size_t cap, size_t *len)
{
    char a[8][32];
    snprintf(a[0], sizeof a[0], "%u", n);
    snprintf(a[1], sizeof a[1], "%g", s->temp);
    snprintf(a[2], sizeof a[2], "%d", s->top_k);
    snprintf(a[3], sizeof a[3], "%g", s->top_p);
    snprintf(a[4], sizeof a[4], "%g", s->min_p);
    snprintf(a[5], sizeof a[5], "%g", s->repeat_penalty);
    snprintf(a[6], sizeof a[6], "%d", s->repeat_last_n);
    snprintf(a[7], sizeof a[7], "%llu", (unsigned long long)s->seed);
    char *argv[] = {(char *)td_bin("gist-model"), "generate", (char *)model, "--prompt",
                    (char *)prompt, "-n", a[0], "--temp", a[1], "--top-k", a[2], "--top-p", a[3],
                    "--min-p", a[4], "--repeat-penalty", a[5], "--repeat-last-n", a[6], "--seed",
                    a[7], "--threads", "1", NULL};
    static char buf[65536];
    size_t bl = 0;
    if (td_run_bytes(argv, buf, sizeof buf, &bl) != 0)
        return -1;
    const size_t pl = strlen(prompt);
    if (bl < pl + 1 || strncmp(buf, prompt, pl) || buf[bl - 1] != '\n' || bl - pl - 1 > cap)
        return -1;
    *len = bl - pl - 1;
    memcpy(out, buf + pl, *len);
    return 0;
}

/* Every sampler stage through the daemon, one setting at a time and all together, each equal
 * to gist-model generate's text with the same seed; a different seed gives a different text
 * (so the seed is what made them equal), and the same seed on a second session the same. */
static void test_seeded_sampling_equals_gist_model(void)
{
    const char *model = td_tiny_model("tiny_sample.gguf", "71");
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    static const gc_sampling_t cases[] = {
        {.temp = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f,
         .seed = 7},
        {.temp = 0.8f, .top_k = 12, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f,
         .seed = 8},
        {.temp = 1.2f, .top_k = 0, .top_p = 0.7f, .min_p = 0.0f, .repeat_penalty = 1.0f,
         .seed = 9},
        {.temp = 0.9f, .top_k = 0, .top_p = 1.0f, .min_p = 0.1f, .repeat_penalty = 1.0f,
         .seed = 10},
        {.temp = 0.7f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.3f,
         .repeat_last_n = 16, .seed = 123456789012345ull},
    };
    const char *prompt = "Once upon a time";
    static char want[8192], other[8192];
    size_t want_len = 0, other_len = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const gc_sampling_t *sc = &cases[i];
        if (sampled_reference(model, prompt, 48, sc, want, sizeof want, &want_len)) {
            check_fail_(__FILE__, __LINE__, "gist-model generate failed (case %zu)", i);
            continue;
        }
        for (int rep = 0; rep < 2; rep++) { /* two sessions, the same seed */
            err_info_t e;
            uint32_t s;
            CHECK_OK(gc_open(c, NULL, &s, &e));
            gc_gen_opts_t o = {.session = s, .max_tokens = 48, .prompt = prompt, .sampling = sc};
            gc_result_t r = {0};
            CHECK_MSG(gc_generate(c, &o, NULL, &r, &e) == 0, "%s", err_msg(&e));
            CHECK_MSG(r.text && r.text_len == want_len && !memcmp(r.text, want, want_len),
                      "case %zu (temp %g top-k %d top-p %g min-p %g penalty %g seed %llu):\n"
                      "#   gistd      \"%.*s\" (%zu bytes)\n#   gist-model \"%.*s\" (%zu bytes)",
                      i, sc->temp, sc->top_k, sc->top_p, sc->min_p, sc->repeat_penalty,
                      (unsigned long long)sc->seed, (int)r.text_len, r.text ? r.text : "",
                      r.text_len, (int)want_len, want, want_len);
            gc_result_free(&r);
            CHECK_OK(gc_close(c, s, &e));
        }
        gc_sampling_t reseeded = *sc;
        reseeded.seed += 1000;
        CHECK_OK(sampled_reference(model, prompt, 48, &reseeded, other, sizeof other, &other_len));
        CHECK_MSG(other_len != want_len || memcmp(other, want, want_len), "case %zu: seeds %llu and %llu gave the same text", i,
                  (unsigned long long)sc->seed, (unsigned long long)reseeded.seed);
    }
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ a model with known text */

/* The chain model's text: greedy decoding from any token outside it starts at CHAIN[0], and
 * each of its bytes is followed by the next, round and round. Its bytes are all different. */
static const char CHAIN[] = "ab\nUser: cd";
#define CHAIN_LEN (sizeof CHAIN - 1)

static bool ends_with(gguf_str_t s, const char *suffix)
{
    const size_t n = strlen(suffix);
    return s.len >= n && !memcmp(s.ptr + s.len - n, suffix, n);
}

/* A tiny model (make-tiny, n_embd 64, 384 tokens whose byte tokens are 3 + byte) rewritten so
 * that greedy decoding follows CHAIN: every layer's attn_output and ffn_down are zero (the
 * residual stream is the token's embedding), the embedding of CHAIN's k-th byte token is the
 * unit vector k + 1 and every other token's is unit vector 0, and the output row of each
 * successor has a 1 where its predecessor's embedding does. Its path, or NULL after a failed
 * check. */
static const char *chain_model(void)
{
    const char *base = td_tiny_model("tiny_chain_base.gguf", "72");
    if (!base)
        return NULL;
    gguf_t *g = NULL;
    err_info_t e;
    size_t len = 0;
    char *buf = check_slurp(base, &len);
    CHECK_MSG(buf && gguf_open(base, &g, &e) == 0, "%s: %s", base, buf ? e.msg : "unreadable");
    if (!g) {
        free(buf);
        return NULL;
    }
    const uint64_t data = gguf_data_offset(g);
    int patched = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        float *w = (float *)(buf + data + t->offset);
        const bool zero =
            ends_with(t->name, ".attn_output.weight") || ends_with(t->name, ".ffn_down.weight");
        const bool embd = gguf_str_eq(t->name, "token_embd.weight");
        const bool out = gguf_str_eq(t->name, "output.weight");
        if (!zero && !embd && !out)
            continue;
        CHECK_INT(t->type, ==, GGML_TYPE_F32);
        memset(w, 0, t->nbytes);
        patched++;
        if (embd) { /* [384][64] */
            for (uint32_t tok = 0; tok < 384; tok++)
                w[tok * 64] = 1.0f;
            for (uint32_t k = 0; k < CHAIN_LEN; k++) {
                const uint32_t tok = 3 + (uint8_t)CHAIN[k];
                w[tok * 64] = 0.0f;
                w[tok * 64 + k + 1] = 1.0f;
            }
        } else if (out) { /* [384][64]: row = the token the logit is for */
            w[(3 + (uint8_t)CHAIN[0]) * 64 + 0] = 1.0f;
            for (uint32_t k = 0; k < CHAIN_LEN; k++) {
                const uint32_t next = 3 + (uint8_t)CHAIN[(k + 1) % CHAIN_LEN];
                w[next * 64 + k + 1] = 1.0f;
            }
        }
    }
    CHECK_INT(patched, ==, 2 + 2 * 2); /* embeddings, output, two layers of two */
    gguf_close(&g);
    const char *path = td_tmp_path("tiny_chain.gguf");
    CHECK(td_spew(path, buf, len) == 0);
    free(buf);
    return check_failed() ? NULL : path;
}

/* The text the chain model gives after a token outside the chain, n bytes of it. */
static void chain_text(uint32_t from, uint32_t n, char *out)
{
    for (uint32_t i = 0; i < n; i++)
        out[i] = CHAIN[(from + i) % CHAIN_LEN];
    out[n] = 0;
}

/* A generation on s; its result into r (freed by the caller). */
static void gen(gc_client_t *c, uint32_t s, const char *prompt, gc_role_t prompt_role,
                gc_role_t role, uint32_t max_tokens, const char *const *stop, uint32_t n_stop,
                gc_result_t *r)
{
    err_info_t e;
    gc_gen_opts_t o = {.session = s,
                       .max_tokens = max_tokens,
                       .prompt = prompt,
                       .prompt_role = prompt_role,
                       .role = role,
                       .sampling = &td_greedy,
                       .stop = stop,
                       .n_stop = n_stop};
    *r = (gc_result_t){0};
    CHECK_MSG(gc_generate(c, &o, NULL, r, &e) == 0, "%s", err_msg(&e));
}

/* r ended for `why` after n tokens whose text is `text`. */
#define CHECK_GEN(r, why, n, text) check_gen(&(r), (why), (n), (text), __LINE__)
static void check_gen(const gc_result_t *r, gc_stop_t why, uint32_t n, const char *text, int line)
{
    if (r->reason != why || r->n_tokens != n || !r->text || strcmp(r->text, text))
        check_fail_(__FILE__, line, "reason %d after %u tokens, \"%s\"; expected %d, %u, \"%s\"",
                    (int)r->reason, r->n_tokens, r->text ? r->text : "(none)", (int)why, n, text);
}

/*
 * The client's stop strings: a generation ends on the token that completes the first stop
 * string to appear (one across several tokens included), with that token's text; of two, the
 * one that completes first wins; a stop that never comes leaves max_tokens; the stopped
 * tokens stay in the session, and the next request looks for its stops in its own text only.
 */
static void test_stop_strings(void)
{
    const char *model = chain_model();
    if (!model)
        return;
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    char want[128];
    err_info_t e;
    uint32_t s;
    gc_result_t r;

    /* no stop: the chain, twice round and more */
    CHECK_OK(gc_open(c, NULL, &s, &e));
    gen(c, s, "x", GC_ROLE_NONE, GC_ROLE_NONE, 30, NULL, 0, &r);
    chain_text(0, 30, want);
    CHECK_GEN(r, GC_STOP_LENGTH, 30, want);
    gc_result_free(&r);
    CHECK_OK(gc_close(c, s, &e));

    /* "User" takes four tokens: it completes on the 7th */
    CHECK_OK(gc_open(c, NULL, &s, &e));
    gen(c, s, "x", GC_ROLE_NONE, GC_ROLE_NONE, 30, (const char *[]){"User"}, 1, &r);
    CHECK_GEN(r, GC_STOP_STRING, 7, "ab\nUser");
    gc_result_free(&r);
    /* the next request continues the chain; "ab" is in the session's text already, but this
     * request's text has it only when the chain comes round */
    gen(c, s, NULL, GC_ROLE_NONE, GC_ROLE_NONE, 30, (const char *[]){"ab"}, 1, &r);
    CHECK_GEN(r, GC_STOP_STRING, 6, ": cdab");
    gc_result_free(&r);
    uint32_t n = 0;
    int32_t *ids = td_transcript_ids(c, s, &n);
    CHECK_MSG(n >= 13 && ids[n - 13] == 3 + 'a' && ids[n - 1] == 3 + 'b',
              "the stopped tokens are not all in the session (%u tokens)", n);
    free(ids);
    CHECK_OK(gc_close(c, s, &e));

    /* two stops: ": c" completes (10th token) before "cd" (11th) */
    CHECK_OK(gc_open(c, NULL, &s, &e));
    gen(c, s, "x", GC_ROLE_NONE, GC_ROLE_NONE, 30, (const char *[]){"cd", ": c"}, 2, &r);
    CHECK_GEN(r, GC_STOP_STRING, 10, "ab\nUser: c");
    gc_result_free(&r);
    /* a stop that never comes */
    gen(c, s, NULL, GC_ROLE_NONE, GC_ROLE_NONE, 12, (const char *[]){"zz", "ba"}, 2, &r);
    chain_text(10, 12, want);
    CHECK_GEN(r, GC_STOP_LENGTH, 12, want);
    gc_result_free(&r);
    CHECK_OK(gc_close(c, s, &e));

    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/*
 * The chat template's stop string: an assistant turn under the `plain` template ends where the
 * model starts the next user turn ("\nUser:"), and the text of that turn ends there; without
 * the assistant role (no template stop) the same model runs on to max_tokens.
 */
static void test_template_stop(void)
{
    const char *model = chain_model();
    if (!model)
        return;
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    gc_result_t r;
    gc_open_opts_t oo = {.chat_template = "plain"};
    CHECK_OK(gc_open(c, &oo, &s, &e));
    gen(c, s, "hi", GC_ROLE_USER, GC_ROLE_ASSISTANT, 40, NULL, 0, &r);
    CHECK_INT(r.reason, ==, GC_STOP_STRING);
    const size_t tl = r.text ? strlen(r.text) : 0;
    CHECK_MSG(tl >= 6 && !strcmp(r.text + tl - 6, "\nUser:") &&
                  strstr(r.text, "\nUser:") == r.text + tl - 6,
              "the assistant's turn: \"%s\"", r.text ? r.text : "(none)");
    char twice[2 * CHAIN_LEN + 1];
    chain_text(0, 2 * CHAIN_LEN, twice);
    CHECK_MSG(r.text && strstr(twice, r.text), "\"%s\" is not the chain's text", r.text);
    CHECK_INT(r.n_tokens, ==, tl); /* one byte a token */
    gc_result_free(&r);
    CHECK_OK(gc_close(c, s, &e));

    CHECK_OK(gc_open(c, &oo, &s, &e));
    gen(c, s, "hi", GC_ROLE_USER, GC_ROLE_NONE, 40, NULL, 0, &r);
    CHECK_INT(r.reason, ==, GC_STOP_LENGTH);
    CHECK(r.text && strstr(r.text, "\nUser:"));
    gc_result_free(&r);
    CHECK_OK(gc_close(c, s, &e));
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ special */

/* Appends text to session s on a raw socket, with the special flag as given; checked. */
static void raw_append(void *sock, uint32_t s, const char *text, gc_role_t role, bool special)
{
    Gistd__Append ap = GISTD__APPEND__INIT;
    ap.session = s;
    ap.text.data = (uint8_t *)text;
    ap.text.len = strlen(text);
    ap.role = (Gistd__Role)role;
    ap.special = special;
    Gistd__Request rq = GISTD__REQUEST__INIT;
    rq.id = 40 + s;
    rq.body_case = GISTD__REQUEST__BODY_APPEND;
    rq.append = &ap;
    CHECK(td_raw_request(sock, &rq) == 0);
    Gistd__Reply *r = td_raw_recv(sock);
    CHECK_MSG(r && r->id == rq.id && r->body_case == GISTD__REPLY__BODY_ACK, "append: %s",
              r && r->body_case == GISTD__REPLY__BODY_ERROR ? r->error->message : "no ack");
    if (r)
        gistd__reply__free_unpacked(r, NULL);
}

/* How many of session s's tokens are id, leaving out the last `but_last`. */
static uint32_t count_id(gc_client_t *c, uint32_t s, int32_t id, uint32_t but_last)
{
    uint32_t n = 0, k = 0;
    int32_t *ids = td_transcript_ids(c, s, &n);
    for (uint32_t i = 0; ids && i + but_last < n; i++)
        k += ids[i] == id;
    free(ids);
    return k;
}

/*
 * "</s>" in a client's text is the end-of-sequence token only when the request says special:
 * otherwise (the default, and a user turn under a chat template) it stays text, token for
 * token what gist-model tokenize makes of it, and reads back as the same bytes; with special
 * it is one token, id 2. The same for a Generate's prompt.
 */
static void test_special_flag(void)
{
    const char *model = td_tiny_model("tiny_special.gguf", "73");
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    void *ctx = zmq_ctx_new();
    void *sock = td_raw_open(ctx, d.endpoint);
    err_info_t e;
    const char *text = "one</s>two";
    uint32_t plain, special, turn;
    gc_open_opts_t chat = {.chat_template = "plain"};
    CHECK_OK(gc_open(c, NULL, &plain, &e));
    CHECK_OK(gc_open(c, NULL, &special, &e));
    CHECK_OK(gc_open(c, &chat, &turn, &e));
    raw_append(sock, plain, text, GC_ROLE_NONE, false);
    raw_append(sock, special, text, GC_ROLE_NONE, true);
    raw_append(sock, turn, text, GC_ROLE_USER, false);
    CHECK_INT(count_id(c, plain, 2, 0), ==, 0);
    CHECK_INT(count_id(c, turn, 2, 0), ==, 0);
    CHECK_INT(count_id(c, special, 2, 0), ==, 1);

    /* as text: the tokens gist-model tokenize gives (BOS first), and the bytes read back */
    char out[4096];
    char *argv[] = {(char *)td_bin("gist-model"), "tokenize", (char *)model, "--bos", "--text",
                    (char *)text, NULL};
    CHECK_INT(td_run(argv, out, sizeof out), ==, 0);
    uint32_t n = 0;
    int32_t *ids = td_transcript_ids(c, plain, &n);
    char got[4096] = "";
    for (uint32_t i = 0; ids && i < n; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%d", i ? " " : "", ids[i]);
    out[strcspn(out, "\n")] = 0;
    CHECK_STR(got, out);
    free(ids);
    char *t = NULL;
    size_t tlen = 0;
    int32_t *tt = NULL;
    uint32_t tn = 0, total = 0;
    CHECK_OK(gc_transcript(c, plain, 0, 0, &t, &tlen, &tt, &tn, &total, &e));
    CHECK_MSG(t && tlen == strlen(text) && !memcmp(t, text, tlen), "read back \"%.*s\"",
              (int)tlen, t ? t : "");
    free(t);
    free(tt);

    /* a Generate's prompt: the same rule (raw, for the flag) */
    for (int sp = 0; sp < 2; sp++) {
        uint32_t s;
        CHECK_OK(gc_open(c, NULL, &s, &e));
        Gistd__Sampling g = GISTD__SAMPLING__INIT; /* temp 0: greedy */
        Gistd__Generate ge = GISTD__GENERATE__INIT;
        ge.session = s;
        ge.max_tokens = 1;
        ge.prompt.data = (uint8_t *)text;
        ge.prompt.len = strlen(text);
        ge.special = sp;
        ge.sampling = &g;
        Gistd__Request rq = GISTD__REQUEST__INIT;
        rq.id = 90 + sp;
        rq.body_case = GISTD__REQUEST__BODY_GENERATE;
        rq.generate = &ge;
        CHECK(td_raw_request(sock, &rq) == 0);
        bool done = false;
        while (!done) {
            Gistd__Reply *r = td_raw_recv(sock);
            CHECK(r && r->id == rq.id && r->body_case != GISTD__REPLY__BODY_ERROR);
            done = !r || r->final;
            if (r)
                gistd__reply__free_unpacked(r, NULL);
        }
        CHECK_INT(count_id(c, s, 2, 1), ==, sp ? 1 : 0); /* the prompt's tokens */
        CHECK_OK(gc_close(c, s, &e));
    }
    zmq_close(sock);
    zmq_ctx_term(ctx);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_seeded_sampling_equals_gist_model);
    RUN(test_stop_strings);
    RUN(test_template_stop);
    RUN(test_special_flag);
    return check_done();
}
