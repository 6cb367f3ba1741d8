/*
 * Tests for model/hparams (reading llama hyperparameters, checking tensor shapes) and
 * model/tiny (the random-weight model writer): files written by mdl_tiny_write read back
 * with the configured shape, tokenizer and extensions; hand-built files exercise each
 * rule of mdl_hparams_read and mdl_hparams_check_tensors; the shared real files give
 * known facts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/gguf.h"
#include "model/gguf_write.h"
#include "model/hparams.h"
#include "model/tiny.h"
#include "tests/check.h"

/* ---- tiny models ---- */

static const char *tmp_path(const char *name)
{
    static char path[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/%s", check_tmpdir(), name);
    return path[k];
}

/* Writes cfg to name under the temp folder and opens it; NULL (after a failed CHECK) on
 * error. */
static gguf_t *write_open(const mdl_tiny_cfg_t *cfg, const char *name)
{
    err_info_t e;
    gguf_t *g = NULL;
    const char *path = tmp_path(name);
    int rc = mdl_tiny_write(path, cfg, &e);
    CHECK_MSG(rc == 0, "mdl_tiny_write: %s", e.msg);
    if (rc)
        return NULL;
    rc = gguf_open(path, &g, &e);
    CHECK_MSG(rc == 0, "gguf_open: %s", e.msg);
    return g;
}

static void test_tiny_default(void)
{
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    gguf_t *g = write_open(&cfg, "default.gguf");
    if (!g)
        return;
    mdl_hparams_t hp;
    err_info_t e;
    CHECK_MSG(mdl_hparams_read(g, &hp, &e) == 0, "%s", e.msg);
    CHECK_INT(hp.n_vocab, ==, 384);
    CHECK_INT(hp.n_ctx, ==, 256);
    CHECK_INT(hp.n_embd, ==, 64);
    CHECK_INT(hp.n_layer, ==, 2);
    CHECK_INT(hp.n_ff, ==, 128);
    CHECK_INT(hp.n_head, ==, 4);
    CHECK_INT(hp.n_head_kv, ==, 2);
    CHECK_INT(hp.head_dim, ==, 16);
    CHECK_INT(hp.n_rot, ==, 16);
    CHECK_NEAR(hp.rms_eps, 1e-5, 1e-12);
    CHECK_NEAR(hp.rope_freq_base, 10000, 0);
    CHECK_INT(hp.rope_scaling.type, ==, MDL_ROPE_SCALING_NONE);
    CHECK(!hp.tied);
    CHECK(!hp.has_rope_freqs);
    CHECK_INT(hp.n_gist, ==, 0);
    CHECK_INT(hp.gist_mask, ==, MDL_GIST_MASK_NONE);
    CHECK_INT(hp.retention_hidden, ==, 0);
    CHECK_MSG(mdl_hparams_check_tensors(g, &hp, &e) == 0, "%s", e.msg);
    CHECK_INT(gguf_tensor_count(g), ==, 3 + 2 * 9);

    /* weights: matrices within 1.5/sqrt(n_cols), norms within 1 +- 0.1, embeddings in [-1, 1) */
    const gguf_tensor_t *q = gguf_tensor_find(g, "blk.1.attn_q.weight");
    const gguf_tensor_t *n = gguf_tensor_find(g, "blk.0.ffn_norm.weight");
    const gguf_tensor_t *emb = gguf_tensor_find(g, "token_embd.weight");
    const float *qd = q->data, *nd = n->data, *ed = emb->data;
    double qmax = 0, nmin = 2, nmax = 0, emax = 0, esum = 0;
    for (uint64_t i = 0; i < q->n_elems; i++)
        qmax = fmax(qmax, fabs(qd[i]));
    for (uint64_t i = 0; i < n->n_elems; i++) {
        nmin = fmin(nmin, nd[i]);
        nmax = fmax(nmax, nd[i]);
    }
    for (uint64_t i = 0; i < emb->n_elems; i++) {
        emax = fmax(emax, fabs(ed[i]));
        esum += ed[i];
    }
    CHECK(qmax <= 1.5 / 8 && qmax > 0.9 * 1.5 / 8);
    CHECK(nmin >= 0.9 && nmax <= 1.1 && nmax - nmin > 0.1);
    CHECK(emax <= 1.0 && emax > 0.99);
    CHECK(fabs(esum / (double)emb->n_elems) < 0.02); /* centred */
    gguf_close(&g);
}

/* The vocabulary: specials, bytes, prefix-closed pieces with decreasing scores, unique. */
static void test_tiny_vocab(void)
{
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.n_vocab = 2000;
    cfg.n_gist = 3;
    gguf_t *g = write_open(&cfg, "vocab.gguf");
    if (!g)
        return;
    err_info_t e;
    gguf_arr_t toks, types, scores;
    gguf_str_t model;
    CHECK_OK(gguf_get_str(g, "tokenizer.ggml.model", &model, &e));
    CHECK(gguf_str_eq(model, "llama"));
    CHECK_OK(gguf_get_arr(g, "tokenizer.ggml.tokens", &toks, &e));
    CHECK_OK(gguf_get_arr(g, "tokenizer.ggml.token_type", &types, &e));
    CHECK_OK(gguf_get_arr(g, "tokenizer.ggml.scores", &scores, &e));
    CHECK_INT(toks.n, ==, 2000);
    CHECK_INT(types.n, ==, 2000);
    CHECK_INT(scores.n, ==, 2000);
    gguf_str_t *t = NULL;
    CHECK_OK(gguf_arr_strs(&toks, &t));
    if (!t) {
        gguf_close(&g);
        return;
    }
    CHECK(gguf_str_eq(t[0], "<unk>") && gguf_str_eq(t[1], "<s>") && gguf_str_eq(t[2], "</s>"));
    CHECK_INT(gguf_arr_i64(&types, 0), ==, 2);
    CHECK_INT(gguf_arr_i64(&types, 1), ==, 3);
    CHECK(gguf_str_eq(t[3], "<0x00>") && gguf_str_eq(t[3 + 0x41], "<0x41>") &&
          gguf_str_eq(t[258], "<0xFF>"));
    for (int i = 3; i < 259; i++)
        CHECK_INT(gguf_arr_i64(&types, i), ==, 6);
    for (int i = 0; i < 3; i++) {
        char want[16];
        snprintf(want, sizeof want, "<gist_%d>", i);
        CHECK(gguf_str_eq(t[1997 + i], want));
        CHECK_INT(gguf_arr_i64(&types, 1997 + i), ==, 3);
    }
    int bad_order = 0, bad_prefix = 0, dups = 0, fillers = 0;
    bool has_the = false, has_space = false;
    for (uint32_t i = 259; i < 1997; i++) {
        CHECK_INT(gguf_arr_i64(&types, i), ==, 1);
        if (i > 259 && !(gguf_arr_f64(&scores, i) < gguf_arr_f64(&scores, i - 1)))
            bad_order++;
        if (t[i].len == 0)
            bad_prefix++;
        /* the piece minus its last UTF-8 character is a piece too (or empty) */
        uint64_t cut = t[i].len - 1;
        while (cut > 0 && ((unsigned char)t[i].ptr[cut] & 0xc0) == 0x80)
            cut--;
        bool found = cut == 0;
        for (uint32_t j = 259; j < 1997 && !found; j++)
            found = t[j].len == cut && !memcmp(t[j].ptr, t[i].ptr, cut);
        bad_prefix += !found;
        for (uint32_t j = 259; j < i; j++)
            dups += t[j].len == t[i].len && !memcmp(t[j].ptr, t[i].ptr, t[i].len);
        has_the |= gguf_str_eq(t[i], "\xe2\x96\x81the");
        has_space |= gguf_str_eq(t[i], "\xe2\x96\x81");
        fillers += t[i].len > 4 && !memcmp(t[i].ptr, "\xe2\x96\x81w", 4) && t[i].ptr[4] >= '0' &&
                   t[i].ptr[4] <= '9';
    }
    CHECK_INT(bad_order, ==, 0);
    CHECK_INT(bad_prefix, ==, 0);
    CHECK_INT(dups, ==, 0);
    CHECK(has_the && has_space);
    CHECK(fillers > 0);
    free(t);

    uint32_t u;
    bool b;
    CHECK_OK(gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u, &e));
    CHECK_INT(u, ==, 1);
    CHECK_OK(gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u, &e));
    CHECK_INT(u, ==, 2);
    CHECK_OK(gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &u, &e));
    CHECK_INT(u, ==, 0);
    CHECK_OK(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b, &e));
    CHECK(b);
    CHECK_OK(gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b, &e));
    CHECK(b);
    gguf_close(&g);
}

static void test_tiny_extensions(void)
{
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.n_gist = 4;
    cfg.retention_hidden = 16;
    cfg.tied = true;
    cfg.n_layer = 3;
    gguf_t *g = write_open(&cfg, "ext.gguf");
    if (!g)
        return;
    mdl_hparams_t hp;
    err_info_t e;
    CHECK_MSG(mdl_hparams_read(g, &hp, &e) == 0, "%s", e.msg);
    CHECK(hp.tied);
    CHECK(gguf_tensor_find(g, "output.weight") == NULL);
    CHECK_INT(hp.n_gist, ==, 4);
    CHECK_INT(hp.gist_first, ==, 380);
    CHECK_INT(hp.gist_mask, ==, MDL_GIST_MASK_SENTENCE);
    CHECK_INT(hp.gist_sinks, ==, 1);
    CHECK_INT(hp.retention_hidden, ==, 16);
    CHECK_INT(hp.retention_budget, ==, 64);
    CHECK_MSG(mdl_hparams_check_tensors(g, &hp, &e) == 0, "%s", e.msg);
    const gguf_tensor_t *t = gguf_tensor_find(g, "blk.2.retention_out.weight");
    CHECK(t && t->ne[0] == 16 && t->ne[1] == 2 && t->type == GGML_TYPE_F32);
    t = gguf_tensor_find(g, "blk.2.retention_out.bias");
    CHECK(t && t->ne[0] == 2 && t->n_dims == 1);
    gguf_arr_t toks;
    CHECK_OK(gguf_get_arr(g, "tokenizer.ggml.tokens", &toks, &e));
    CHECK(gguf_str_eq(gguf_arr_str(&toks, 380), "<gist_0>"));
    CHECK(gguf_str_eq(gguf_arr_str(&toks, 383), "<gist_3>"));
    gguf_close(&g);
}

/* The same seed gives the same floats in every storage type, up to that type's rounding;
 * a different seed gives different floats. */
static void test_tiny_types(void)
{
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.seed = 77;
    gguf_t *ref = write_open(&cfg, "t_f32.gguf");
    if (!ref)
        return;
    static const struct {
        const char *name;
        double tol; /* relative to the row's largest magnitude */
    } types[] = {{"f16", 1e-3}, {"bf16", 8e-3}, {"q8_0", 1.0 / 127 + 1e-3}, {"q4_0", 0.126}};
    const char *names[] = {"token_embd.weight", "blk.1.ffn_down.weight", "output.weight"};
    for (int k = 0; k < 4; k++) {
        cfg.type = (uint32_t)mdl_tiny_type_from_name(types[k].name);
        gguf_t *g = write_open(&cfg, "t_q.gguf");
        if (!g)
            continue;
        for (int j = 0; j < 3; j++) {
            const gguf_tensor_t *a = gguf_tensor_find(ref, names[j]);
            const gguf_tensor_t *b = gguf_tensor_find(g, names[j]);
            CHECK(b && b->type == cfg.type);
            if (!a || !b)
                continue;
            float *row = malloc(a->ne[0] * sizeof *row);
            size_t rb = ggml_row_bytes(b->type, b->ne[0]);
            double worst = 0;
            for (uint64_t r = 0; r < a->ne[1]; r++) {
                const float *x = (const float *)a->data + r * a->ne[0];
                CHECK_OK(dt_to_f32(b->type, (const uint8_t *)b->data + r * rb, row, a->ne[0]));
                double amax = 0, err = 0;
                for (uint64_t c = 0; c < a->ne[0]; c++) {
                    amax = fmax(amax, fabs(x[c]));
                    err = fmax(err, fabs(row[c] - x[c]));
                }
                worst = fmax(worst, err / amax);
            }
            CHECK_MSG(worst <= types[k].tol, "%s %s: error %g of the row max", types[k].name,
                      names[j], worst);
            free(row);
        }
        /* norms stay f32 */
        CHECK_INT(gguf_tensor_find(g, "blk.0.attn_norm.weight")->type, ==, GGML_TYPE_F32);
        mdl_hparams_t hp;
        err_info_t e;
        CHECK_OK(mdl_hparams_read(g, &hp, &e));
        CHECK_MSG(mdl_hparams_check_tensors(g, &hp, &e) == 0, "%s", e.msg);
        gguf_close(&g);
    }
    cfg.type = GGML_TYPE_F32;
    cfg.seed = 78;
    gguf_t *other = write_open(&cfg, "t_seed.gguf");
    if (other) {
        const gguf_tensor_t *a = gguf_tensor_find(ref, "blk.0.attn_k.weight");
        const gguf_tensor_t *b = gguf_tensor_find(other, "blk.0.attn_k.weight");
        CHECK(memcmp(a->data, b->data, a->nbytes) != 0);
        gguf_close(&other);
    }
    gguf_close(&ref);
}

static void test_tiny_deterministic(void)
{
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.type = GGML_TYPE_Q8_0;
    cfg.n_gist = 2;
    err_info_t e;
    const char *p1 = tmp_path("det1.gguf"), *p2 = tmp_path("det2.gguf");
    CHECK_OK(mdl_tiny_write(p1, &cfg, &e));
    CHECK_OK(mdl_tiny_write(p2, &cfg, &e));
    size_t l1 = 0, l2 = 0;
    uint8_t *b1 = (uint8_t *)check_slurp(p1, &l1), *b2 = (uint8_t *)check_slurp(p2, &l2);
    CHECK(b1 && b2 && l1 == l2 && memcmp(b1, b2, l1) == 0);
    free(b1);
    free(b2);
}

static void test_tiny_rejects(void)
{
    mdl_tiny_cfg_t cfg;
    err_info_t e;
    const char *p = tmp_path("bad.gguf");
    mdl_tiny_cfg_default(&cfg);
    cfg.type = GGML_TYPE_Q8_0;
    cfg.n_ff = 100;
    CHECK_INT(mdl_tiny_write(p, &cfg, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "multiples of 32") != NULL);
    mdl_tiny_cfg_default(&cfg);
    cfg.n_head = 5;
    CHECK_INT(mdl_tiny_write(p, &cfg, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "not a multiple of n_head") != NULL);
    mdl_tiny_cfg_default(&cfg);
    cfg.n_head_kv = 3;
    CHECK_INT(mdl_tiny_write(p, &cfg, &e), ==, ERR_INVAL);
    mdl_tiny_cfg_default(&cfg);
    cfg.n_vocab = 260;
    cfg.n_gist = 4;
    CHECK_INT(mdl_tiny_write(p, &cfg, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "259") != NULL);
    mdl_tiny_cfg_default(&cfg);
    cfg.type = GGML_TYPE_Q4_1;
    CHECK_INT(mdl_tiny_write(p, &cfg, &e), ==, ERR_INVAL);
    mdl_tiny_cfg_default(&cfg);
    CHECK_INT(mdl_tiny_write("/nonexistent-dir/x.gguf", &cfg, &e), ==, ERR_IO);
    CHECK_INT(mdl_tiny_type_from_name("q4_0"), ==, GGML_TYPE_Q4_0);
    CHECK_INT(mdl_tiny_type_from_name("q4_1"), ==, -1);
    CHECK_INT(mdl_tiny_type_from_name("Q6_K"), ==, GGML_TYPE_Q6_K);
    CHECK_INT(mdl_tiny_set_type(&cfg, "q4_K_M"), ==, 0);
    CHECK_INT(cfg.type, ==, GGML_TYPE_Q4_K);
    CHECK_INT(cfg.mix, ==, MDL_TINY_MIX_Q4_K_M);
    CHECK_INT(mdl_tiny_set_type(&cfg, "q3_K_M"), ==, -1);
    CHECK_INT(cfg.type, ==, GGML_TYPE_Q4_K); /* unchanged */
    /* plain K-quants need whole 256-blocks; a mix falls back for the rest */
    mdl_tiny_cfg_default(&cfg);
    cfg.type = GGML_TYPE_Q4_K;
    CHECK_INT(mdl_tiny_write(p, &cfg, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "multiples of 256") != NULL);
    cfg.arch = "gpt2";
    cfg.type = GGML_TYPE_F32;
    CHECK_INT(mdl_tiny_write(p, &cfg, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "gpt2") != NULL);
}

/* ---- hand-built files for the rules of mdl_hparams_read / check_tensors ---- */

/* A llama file, minus one key (skip), with one key replaced (alt_key gets a string value
 * alt_str or a u32 alt_u32), and one tensor's shape replaced (bad_tensor gets bad_ne). */
typedef struct craft {
    const char *skip;
    const char *alt_key, *alt_str;
    uint32_t alt_u32;
    const char *bad_tensor;
    uint64_t bad_ne[2];
    const char *drop_tensor;
    const char *extra_str_key, *extra_str; /* one more string key */
    const char *extra_key, *extra2_key;    /* up to two more u32 keys */
    uint32_t extra_u32, extra2_u32;
} craft_t;

static uint8_t zeros[64 * 512 * 4];

static void craft_u32(gguf_writer_t *w, const craft_t *c, const char *key, uint32_t v)
{
    if (c->skip && !strcmp(c->skip, key))
        return;
    if (c->alt_key && !strcmp(c->alt_key, key)) {
        if (c->alt_str)
            gguf_writer_add_str(w, key, c->alt_str);
        else
            gguf_writer_add_u32(w, key, c->alt_u32);
        return;
    }
    gguf_writer_add_u32(w, key, v);
}

static void craft_tensor(gguf_writer_t *w, const craft_t *c, const char *name, uint64_t ne0,
                         uint64_t ne1)
{
    if (c->drop_tensor && !strcmp(c->drop_tensor, name))
        return;
    uint64_t ne[2] = {ne0, ne1};
    if (c->bad_tensor && !strcmp(c->bad_tensor, name)) {
        ne[0] = c->bad_ne[0];
        ne[1] = c->bad_ne[1];
    }
    gguf_writer_add_tensor(w, name, GGML_TYPE_F32, ne[1] ? 2 : 1, ne, zeros);
}

/* n_embd 64, n_head 4 (kv 2), n_ff 128, 2 layers, vocab 300, f32 zeros. */
static gguf_t *craft_open(const craft_t *c, uint8_t **buf)
{
    gguf_writer_t *w = NULL;
    gguf_writer_new(&w);
    if (!(c->skip && !strcmp(c->skip, "general.architecture")))
        gguf_writer_add_str(w, "general.architecture",
                            c->alt_key && !strcmp(c->alt_key, "general.architecture") ? c->alt_str
                                                                                      : "llama");
    craft_u32(w, c, "llama.block_count", 2);
    craft_u32(w, c, "llama.embedding_length", 64);
    craft_u32(w, c, "llama.feed_forward_length", 128);
    craft_u32(w, c, "llama.attention.head_count", 4);
    craft_u32(w, c, "llama.attention.head_count_kv", 2);
    craft_u32(w, c, "llama.context_length", 128);
    craft_u32(w, c, "llama.vocab_size", 300);
    if (!(c->skip && !strcmp(c->skip, "llama.attention.layer_norm_rms_epsilon")))
        gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-6f);
    if (c->extra_str_key)
        gguf_writer_add_str(w, c->extra_str_key, c->extra_str);
    if (c->extra_key)
        gguf_writer_add_u32(w, c->extra_key, c->extra_u32);
    if (c->extra2_key)
        gguf_writer_add_u32(w, c->extra2_key, c->extra2_u32);
    craft_tensor(w, c, "token_embd.weight", 64, 300);
    craft_tensor(w, c, "output_norm.weight", 64, 0);
    char n[64];
    for (int l = 0; l < 2; l++) {
        static const struct {
            const char *s;
            uint64_t a, b;
        } t[] = {{"attn_norm.weight", 64, 0},    {"attn_q.weight", 64, 64},
                 {"attn_k.weight", 64, 32},      {"attn_v.weight", 64, 32},
                 {"attn_output.weight", 64, 64}, {"ffn_norm.weight", 64, 0},
                 {"ffn_gate.weight", 64, 128},   {"ffn_up.weight", 64, 128},
                 {"ffn_down.weight", 128, 64}};
        for (int k = 0; k < 9; k++) {
            snprintf(n, sizeof n, "blk.%d.%s", l, t[k].s);
            craft_tensor(w, c, n, t[k].a, t[k].b);
        }
    }
    size_t len;
    err_info_t e;
    gguf_t *g = NULL;
    *buf = NULL;
    if (gguf_writer_write_mem(w, buf, &len, &e) == 0 && gguf_open_mem(*buf, len, &g, &e) != 0)
        CHECK_MSG(0, "crafted file did not open: %s", e.msg);
    gguf_writer_destroy(&w);
    return g;
}

/* Expects mdl_hparams_read (stage 0) or check_tensors (stage 1) to fail with code and a
 * message containing piece, leaving hp untouched. */
static void expect_fail(const craft_t *c, int stage, int code, const char *piece)
{
    uint8_t *buf;
    gguf_t *g = craft_open(c, &buf);
    if (!g) {
        free(buf);
        return;
    }
    mdl_hparams_t hp, before;
    memset(&hp, 0xab, sizeof hp);
    before = hp;
    err_info_t e;
    err_clear(&e);
    int rc = mdl_hparams_read(g, &hp, &e);
    if (stage == 0) {
        CHECK_INT(rc, ==, code);
        CHECK(memcmp(&hp, &before, sizeof hp) == 0);
    } else {
        CHECK_MSG(rc == 0, "read: %s", e.msg);
        rc = mdl_hparams_check_tensors(g, &hp, &e);
        CHECK_INT(rc, ==, code);
    }
    CHECK_MSG(strstr(e.msg, piece) != NULL, "message \"%s\" lacks \"%s\"", e.msg, piece);
    gguf_close(&g);
    free(buf);
}

static void test_read_rules(void)
{
    craft_t c = {0};
    uint8_t *buf;
    gguf_t *g = craft_open(&c, &buf);
    mdl_hparams_t hp;
    err_info_t e;
    CHECK_MSG(g && mdl_hparams_read(g, &hp, &e) == 0, "%s", e.msg);
    CHECK_MSG(g && mdl_hparams_check_tensors(g, &hp, &e) == 0, "%s", e.msg);
    CHECK(hp.tied);
    CHECK_INT(hp.head_dim, ==, 16);
    CHECK_INT(hp.n_rot, ==, 16);             /* defaults to head_dim */
    CHECK_NEAR(hp.rope_freq_base, 10000, 0); /* default */
    CHECK_INT(hp.gist_sinks, ==, 1);
    gguf_close(&g);
    free(buf);

    expect_fail(&(craft_t){.alt_key = "general.architecture", .alt_str = "gpt2"}, 0,
                ERR_UNSUPPORTED, "architecture 'gpt2' is not supported");
    expect_fail(&(craft_t){.skip = "general.architecture"}, 0, ERR_FORMAT,
                "missing key general.architecture");
    expect_fail(&(craft_t){.skip = "llama.block_count"}, 0, ERR_FORMAT,
                "missing key llama.block_count");
    expect_fail(&(craft_t){.skip = "llama.embedding_length"}, 0, ERR_FORMAT,
                "missing key llama.embedding_length");
    expect_fail(&(craft_t){.skip = "llama.attention.layer_norm_rms_epsilon"}, 0, ERR_FORMAT,
                "missing key llama.attention.layer_norm_rms_epsilon");
    expect_fail(&(craft_t){.alt_key = "llama.block_count", .alt_str = "two"}, 0, ERR_FORMAT,
                "key 'llama.block_count' has type string");
    expect_fail(&(craft_t){.alt_key = "llama.block_count", .alt_u32 = 0}, 0, ERR_FORMAT,
                "llama.block_count is 0");
    expect_fail(&(craft_t){.alt_key = "llama.attention.head_count", .alt_u32 = 5}, 0, ERR_FORMAT,
                "head_count 5 is not a multiple of head_count_kv 2");
    expect_fail(&(craft_t){.alt_key = "llama.attention.head_count",
                           .alt_u32 = 6,
                           .skip = "llama.attention.head_count_kv"},
                0, ERR_FORMAT, "embedding_length 64 is not a multiple of head_count 6");
    expect_fail(&(craft_t){.alt_key = "llama.attention.head_count_kv", .alt_u32 = 8}, 0, ERR_FORMAT,
                "head_count 4 is not a multiple of head_count_kv 8");
    expect_fail(&(craft_t){.alt_key = "llama.embedding_length", .alt_u32 = 1u << 20}, 0, ERR_FORMAT,
                "llama.embedding_length is 1048576");
    expect_fail(&(craft_t){.extra_key = "llama.rope.dimension_count", .extra_u32 = 7}, 0,
                ERR_FORMAT, "must be even");
    expect_fail(&(craft_t){.extra_key = "llama.rope.dimension_count", .extra_u32 = 18}, 0,
                ERR_FORMAT, "at most head_dim 16");
    expect_fail(&(craft_t){.extra_str_key = "llama.rope.scaling.type", .extra_str = "ntk"}, 0,
                ERR_UNSUPPORTED, "llama.rope.scaling.type 'ntk'");
    expect_fail(&(craft_t){.extra_key = "gistd.gist.count", .extra_u32 = 4}, 0, ERR_FORMAT,
                "missing key gistd.gist.first_token_id");
    expect_fail(&(craft_t){.extra_str_key = "gistd.gist.mask",
                           .extra_str = "causal",
                           .extra_key = "gistd.gist.count",
                           .extra_u32 = 4,
                           .extra2_key = "gistd.gist.first_token_id",
                           .extra2_u32 = 296},
                0, ERR_UNSUPPORTED, "gistd.gist.mask 'causal' is not supported");
    expect_fail(&(craft_t){.extra_key = "gistd.gist.count",
                           .extra_u32 = 4,
                           .extra2_key = "gistd.gist.first_token_id",
                           .extra2_u32 = 297},
                0, ERR_FORMAT, "gist tokens 297..300 lie outside the vocabulary of 300");

    /* tensor shapes */
    expect_fail(&(craft_t){.bad_tensor = "blk.1.ffn_up.weight", .bad_ne = {64, 100}}, 1, ERR_FORMAT,
                "tensor 'blk.1.ffn_up.weight' has shape [64, 100], expected "
                "[64, 128]");
    expect_fail(&(craft_t){.bad_tensor = "blk.0.attn_norm.weight", .bad_ne = {64, 2}}, 1,
                ERR_FORMAT, "has shape [64, 2], expected [64]");
    expect_fail(&(craft_t){.drop_tensor = "blk.1.attn_k.weight"}, 1, ERR_FORMAT,
                "missing tensor 'blk.1.attn_k.weight'");
    expect_fail(&(craft_t){.drop_tensor = "output_norm.weight"}, 1, ERR_FORMAT,
                "missing tensor 'output_norm.weight'");
    expect_fail(&(craft_t){.bad_tensor = "token_embd.weight", .bad_ne = {64, 299}}, 1, ERR_FORMAT,
                "expected [64, 300]");
    expect_fail(&(craft_t){.extra_key = "gistd.retention.hidden", .extra_u32 = 8}, 1, ERR_FORMAT,
                "missing tensor 'blk.0.retention_in.weight'");
}

/* Gist keys, rope scaling, key_length and vocab fallbacks on hand-built metadata. */
static void test_read_variants(void)
{
    uint8_t *buf;
    mdl_hparams_t hp;
    err_info_t e;
    gguf_t *g;

    /* rope scaling: type and original context */
    g = craft_open(&(craft_t){.extra_str_key = "llama.rope.scaling.type",
                              .extra_str = "linear",
                              .extra_key = "llama.rope.scaling.original_context_length",
                              .extra_u32 = 64},
                   &buf);
    CHECK(g && mdl_hparams_read(g, &hp, &e) == 0);
    CHECK_INT(hp.rope_scaling.type, ==, MDL_ROPE_SCALING_LINEAR);
    CHECK_INT(hp.rope_scaling.orig_ctx, ==, 64);
    CHECK_NEAR(hp.rope_scaling.factor, 1, 0);
    CHECK_STR(mdl_rope_scaling_name(hp.rope_scaling.type), "linear");
    gguf_close(&g);
    free(buf);

    /* key_length decides head_dim even when n_embd / n_head would differ */
    g = craft_open(&(craft_t){.extra_key = "llama.attention.key_length", .extra_u32 = 32}, &buf);
    CHECK(g && mdl_hparams_read(g, &hp, &e) == 0);
    CHECK_INT(hp.head_dim, ==, 32);
    CHECK_INT(hp.n_rot, ==, 32);
    /* ... and then attn_q must be [64, 128], which the crafted file does not have */
    CHECK_INT(mdl_hparams_check_tensors(g, &hp, &e), ==, ERR_FORMAT);
    CHECK(strstr(e.msg, "'blk.0.attn_q.weight' has shape [64, 64], expected [64, 128]") != NULL);
    gguf_close(&g);
    free(buf);

    /* vocab from token_embd when neither llama.vocab_size nor tokens exist */
    g = craft_open(&(craft_t){.skip = "llama.vocab_size"}, &buf);
    CHECK(g && mdl_hparams_read(g, &hp, &e) == 0);
    CHECK_INT(hp.n_vocab, ==, 300);
    gguf_close(&g);
    free(buf);

    /* counts of other unsigned widths are accepted */
    gguf_writer_t *w = NULL;
    gguf_writer_new(&w);
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_u8(w, "llama.block_count", 3);
    gguf_writer_add_u16(w, "llama.embedding_length", 32);
    gguf_writer_add_u64(w, "llama.feed_forward_length", 96);
    gguf_writer_add_i32(w, "llama.attention.head_count", 2);
    gguf_writer_add_u32(w, "llama.context_length", 64);
    gguf_writer_add_f64(w, "llama.attention.layer_norm_rms_epsilon", 1e-6);
    gguf_writer_add_f32(w, "llama.rope.freq_base", 500000.0f);
    const char *toks[5] = {"a", "b", "c", "d", "e"};
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 5);
    gguf_writer_add_u32(w, "gistd.gist.count", 2);
    gguf_writer_add_u32(w, "gistd.gist.first_token_id", 3);
    gguf_writer_add_u32(w, "gistd.gist.sinks", 4);
    size_t len;
    CHECK_OK(gguf_writer_write_mem(w, &buf, &len, &e));
    gguf_writer_destroy(&w);
    CHECK_OK(gguf_open_mem(buf, len, &g, &e));
    CHECK_MSG(g && mdl_hparams_read(g, &hp, &e) == 0, "%s", e.msg);
    CHECK_INT(hp.n_layer, ==, 3);
    CHECK_INT(hp.n_embd, ==, 32);
    CHECK_INT(hp.n_ff, ==, 96);
    CHECK_INT(hp.n_head, ==, 2);
    CHECK_INT(hp.n_head_kv, ==, 2); /* defaults to n_head */
    CHECK_INT(hp.n_vocab, ==, 5);   /* from the tokens array */
    CHECK_NEAR(hp.rope_freq_base, 500000, 0);
    CHECK_INT(hp.n_gist, ==, 2);
    CHECK_INT(hp.gist_first, ==, 3);
    CHECK_INT(hp.gist_sinks, ==, 4);
    CHECK_INT(hp.gist_mask, ==, MDL_GIST_MASK_SENTENCE);
    /* no tensors at all */
    CHECK_INT(mdl_hparams_check_tensors(g, &hp, &e), ==, ERR_FORMAT);
    CHECK_STR(e.msg, "missing tensor 'token_embd.weight'");
    gguf_close(&g);
    free(buf);

    /* gist tokens past the end of the vocabulary */
    g = craft_open(&(craft_t){.extra_key = "gistd.gist.count",
                              .extra_u32 = 4,
                              .alt_key = "llama.vocab_size",
                              .alt_u32 = 3},
                   &buf);
    CHECK_INT(g ? mdl_hparams_read(g, &hp, &e) : -1, ==, ERR_FORMAT);
    gguf_close(&g);
    free(buf);
}

/* ---- real files ---- */

static void test_stories260k(void)
{
    const char *path = check_shared_or_skip("models/stories260K-f32.gguf");
    if (!path)
        return;
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_OK(gguf_open(path, &g, &e));
    if (!g)
        return;
    mdl_hparams_t hp;
    CHECK_MSG(mdl_hparams_read(g, &hp, &e) == 0, "%s", e.msg);
    CHECK_INT(hp.n_layer, ==, 5);
    CHECK_INT(hp.n_embd, ==, 64);
    CHECK_INT(hp.n_head, ==, 8);
    CHECK_INT(hp.n_head_kv, ==, 4);
    CHECK_INT(hp.head_dim, ==, 8);
    CHECK_INT(hp.n_rot, ==, 8);
    CHECK_INT(hp.n_ff, ==, 172);
    CHECK_INT(hp.n_vocab, ==, 512);
    CHECK_INT(hp.n_ctx, ==, 512);
    CHECK(hp.tied);
    CHECK_NEAR(hp.rms_eps, 1e-5, 1e-12);
    CHECK_INT(hp.n_gist, ==, 0);
    CHECK_MSG(mdl_hparams_check_tensors(g, &hp, &e) == 0, "%s", e.msg);
    gguf_close(&g);
}

static void test_vocab_only_file(void)
{
    const char *path = check_shared_or_skip("vocab/ggml-vocab-llama-spm.gguf");
    if (!path)
        return;
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_OK(gguf_open(path, &g, &e));
    if (!g)
        return;
    mdl_hparams_t hp;
    CHECK_MSG(mdl_hparams_read(g, &hp, &e) == 0, "%s", e.msg);
    CHECK_INT(hp.n_vocab, ==, 32000);
    CHECK_INT(hp.n_layer, ==, 32);
    CHECK_INT(hp.head_dim, ==, 128);
    CHECK_INT(mdl_hparams_check_tensors(g, &hp, &e), ==, ERR_FORMAT);
    CHECK_STR(e.msg, "missing tensor 'token_embd.weight'");
    gguf_close(&g);

    path = check_shared_or_skip("vocab/ggml-vocab-gpt-2.gguf");
    if (!path)
        return;
    CHECK_MSG(gguf_open(path, &g, &e) == 0, "%s: %s", path, e.msg);
    if (g) {
        CHECK_INT(mdl_hparams_read(g, &hp, &e), ==, ERR_UNSUPPORTED);
        CHECK(strstr(e.msg, "'gpt2'") != NULL);
        gguf_close(&g);
    }
}

int main(void)
{
    RUN(test_tiny_default);
    RUN(test_tiny_vocab);
    RUN(test_tiny_extensions);
    RUN(test_tiny_types);
    RUN(test_tiny_deterministic);
    RUN(test_tiny_rejects);
    RUN(test_read_rules);
    RUN(test_read_variants);
    RUN(test_stories260k);
    RUN(test_vocab_only_file);
    return check_done();
}
