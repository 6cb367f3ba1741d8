/*
 * fuzz/seeds.c — writes the crafted part of the seed corpora (fuzz/make-corpus.sh builds and
 * runs it; the tiny models come from `gist-model make-tiny`). Usage: seeds OUT_DIR.
 *
 * OUT_DIR/fuzz_gguf: a file with every value type (nested arrays, alignment 64, tensors of
 *   several types and ranks), the same as GGUF v2, truncations of it at each part, and a
 *   llama header with every hyperparameter key (rope scaling, gist tokens, gates) and no
 *   tensors;
 * OUT_DIR/fuzz_gguf_vocab: vocabulary-only files (SentencePiece with and without byte tokens,
 *   BPE under both pre-tokenizers, special token ids);
 * OUT_DIR/fuzz_tokenizer: texts (ASCII, UTF-8 of several scripts, invalid bytes, special
 *   token texts, whitespace runs);
 * OUT_DIR/fuzz_snapshot: snapshots of small stores (f32 and f16 rows, gists, q8_0 rows,
 *   evictions, accumulators, an empty session) behind fuzz_snapshot's flag byte;
 * OUT_DIR/fuzz_request: runs of gistd requests in fuzz_request's framing (u16 length, packed
 *   gistd.Request): sessions under several policies and templates, appends, generation,
 *   scoring, compaction, budgets, snapshots and restores, cancels, and a few malformed ones.
 * Deterministic: the same build writes the same bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "kvstore/kvstore.h"
#include "model/gguf.h"
#include "model/gguf_write.h"
#include "model/tok_internal.h"
#include "proto/gistd.pb-c.h"

static const char *out_dir;
static int failures;

static void put(const char *target, const char *name, const void *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", out_dir, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        fprintf(stderr, "seeds: cannot write %s: %s\n", path, strerror(errno));
        failures++;
    }
    if (f)
        fclose(f);
}

static void put_writer(const char *target, const char *name, gguf_writer_t *w, uint8_t **keep,
                       size_t *keep_len)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    err_info_t e;
    if (gguf_writer_write_mem(w, &buf, &len, &e) != 0) {
        fprintf(stderr, "seeds: %s: %s\n", name, e.msg);
        failures++;
        return;
    }
    put(target, name, buf, len);
    if (keep) {
        *keep = buf;
        *keep_len = len;
    } else {
        free(buf);
    }
}

/* ---- fuzz_gguf ---- */

static gguf_writer_t *values_file(uint32_t version)
{
    gguf_writer_t *w = NULL;
    if (gguf_writer_new(&w))
        return NULL;
    gguf_writer_set_version(w, version);
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_set_alignment(w, 64);
    gguf_writer_add_u8(w, "v.u8", 200);
    gguf_writer_add_i8(w, "v.i8", -100);
    gguf_writer_add_u16(w, "v.u16", 60000);
    gguf_writer_add_i16(w, "v.i16", -30000);
    gguf_writer_add_u32(w, "v.u32", 4000000000u);
    gguf_writer_add_i32(w, "v.i32", -2000000000);
    gguf_writer_add_u64(w, "v.u64", 18000000000000000000ull);
    gguf_writer_add_i64(w, "v.i64", -9000000000000000000ll);
    gguf_writer_add_f32(w, "v.f32", 3.5f);
    gguf_writer_add_f64(w, "v.f64", -1e300);
    gguf_writer_add_bool(w, "v.bool", true);
    gguf_writer_add_str(w, "v.str", "héllo \xe6\x97\xa5");
    const int16_t i16s[] = {-1, 2, -3};
    const uint8_t bools[] = {1, 0, 1};
    const float f32s[] = {1.5f, -2.0e38f, 0.0f, 7.0f};
    const double f64s[] = {1e-300, -4.0};
    const uint64_t u64s[] = {0, UINT64_MAX};
    gguf_writer_add_arr(w, "a.i16", GGUF_VT_INT16, i16s, 3);
    gguf_writer_add_arr(w, "a.bool", GGUF_VT_BOOL, bools, 3);
    gguf_writer_add_arr(w, "a.f32", GGUF_VT_FLOAT32, f32s, 4);
    gguf_writer_add_arr(w, "a.f64", GGUF_VT_FLOAT64, f64s, 2);
    gguf_writer_add_arr(w, "a.u64", GGUF_VT_UINT64, u64s, 2);
    gguf_writer_add_arr(w, "a.empty", GGUF_VT_UINT32, NULL, 0);
    const char *const strs[] = {"", "one", "two words", "\xe2\x96\x81x"};
    gguf_writer_add_arr_str(w, "a.str", strs, 4);
    /* [[1, 2], [], [[3]], ["s"]]: arrays of arrays, three deep */
    gguf_buf_t b;
    gguf_buf_init(&b);
    gguf_buf_arr_head(&b, GGUF_VT_ARRAY, 4);
    gguf_buf_arr_head(&b, GGUF_VT_UINT8, 2);
    gguf_buf_u8(&b, 1);
    gguf_buf_u8(&b, 2);
    gguf_buf_arr_head(&b, GGUF_VT_INT32, 0);
    gguf_buf_arr_head(&b, GGUF_VT_ARRAY, 1);
    gguf_buf_arr_head(&b, GGUF_VT_UINT16, 1);
    gguf_buf_u16(&b, 3);
    gguf_buf_arr_head(&b, GGUF_VT_STRING, 1);
    gguf_buf_str(&b, "s");
    gguf_writer_add_raw(w, "a.nested", GGUF_VT_ARRAY, b.p, b.len);
    gguf_buf_fini(&b);

    static float f32[12];
    static uint8_t raw[4096];
    for (int i = 0; i < 12; i++)
        f32[i] = (float)i - 5.5f;
    for (int i = 0; i < 4096; i++)
        raw[i] = (uint8_t)(i * 37 + 11);
    gguf_writer_add_tensor(w, "t.f32", GGML_TYPE_F32, 2, (const uint64_t[]){4, 3}, f32);
    gguf_writer_add_tensor(w, "t.f16", GGML_TYPE_F16, 1, (const uint64_t[]){8}, raw);
    gguf_writer_add_tensor(w, "t.q8_0", GGML_TYPE_Q8_0, 2, (const uint64_t[]){32, 2}, raw);
    gguf_writer_add_tensor(w, "t.q4_k", GGML_TYPE_Q4_K, 1, (const uint64_t[]){256}, raw);
    gguf_writer_add_tensor(w, "t.i32", GGML_TYPE_I32, 4, (const uint64_t[]){2, 2, 2, 2}, raw);
    gguf_writer_add_tensor(w, "t.bf16", GGML_TYPE_BF16, 1, (const uint64_t[]){5}, raw);
    return w;
}

static void gguf_seeds(void)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    gguf_writer_t *w = values_file(3);
    put_writer("fuzz_gguf", "values.gguf", w, &buf, &len);
    gguf_writer_destroy(&w);
    w = values_file(2);
    put_writer("fuzz_gguf", "values-v2.gguf", w, NULL, NULL);
    gguf_writer_destroy(&w);
    if (buf) {
        /* cut inside the magic, the counts, the keys, the tensor infos and the data */
        gguf_t *g = NULL;
        err_info_t e;
        size_t data = 0;
        if (gguf_open_mem(buf, len, &g, &e) == 0)
            data = (size_t)gguf_data_offset(g);
        gguf_close(&g);
        const size_t cuts[] = {3, 12, 30, 120, data / 2, data - 90, data - 1, data + 40, len - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            char name[64];
            if (cuts[i] >= len)
                continue;
            snprintf(name, sizeof name, "values-cut-%zu.gguf", cuts[i]);
            put("fuzz_gguf", name, buf, cuts[i]);
        }
        free(buf);
    }

    /* every hyperparameter key, in assorted integer widths, and no tensors */
    if (gguf_writer_new(&w))
        return;
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_u8(w, "llama.block_count", 2);
    gguf_writer_add_u16(w, "llama.context_length", 512);
    gguf_writer_add_u64(w, "llama.embedding_length", 64);
    gguf_writer_add_i32(w, "llama.feed_forward_length", 128);
    gguf_writer_add_u32(w, "llama.attention.head_count", 4);
    gguf_writer_add_i16(w, "llama.attention.head_count_kv", 2);
    gguf_writer_add_u32(w, "llama.attention.key_length", 16);
    gguf_writer_add_u32(w, "llama.rope.dimension_count", 8);
    gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-6f);
    gguf_writer_add_f32(w, "llama.rope.freq_base", 500000.0f);
    gguf_writer_add_u32(w, "llama.vocab_size", 300);
    gguf_writer_add_str(w, "llama.rope.scaling.type", "llama3");
    gguf_writer_add_f32(w, "llama.rope.scaling.factor", 8.0f);
    gguf_writer_add_u32(w, "llama.rope.scaling.original_context_length", 256);
    gguf_writer_add_f32(w, "llama.rope.scaling.low_freq_factor", 1.0f);
    gguf_writer_add_f32(w, "llama.rope.scaling.high_freq_factor", 4.0f);
    gguf_writer_add_u32(w, "gistd.gist.count", 2);
    gguf_writer_add_u32(w, "gistd.gist.first_token_id", 298);
    gguf_writer_add_str(w, "gistd.gist.mask", "sentence");
    gguf_writer_add_u32(w, "gistd.gist.sinks", 4);
    gguf_writer_add_u32(w, "gistd.retention.hidden", 16);
    gguf_writer_add_u32(w, "gistd.retention.budget", 64);
    put_writer("fuzz_gguf", "hparams-only.gguf", w, NULL, NULL);
    gguf_writer_destroy(&w);
}

/* ---- fuzz_gguf_vocab ---- */

static void gpt2_append(char *dst, const char *src)
{
    size_t l = strlen(dst);
    for (const uint8_t *p = (const uint8_t *)src; *p; p++) {
        uint32_t cp = tok_gpt2_byte_cpt(*p);
        if (cp < 0x80) {
            dst[l++] = (char)cp;
        } else {
            dst[l++] = (char)(0xC0 | (cp >> 6));
            dst[l++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    dst[l] = '\0';
}

static void vocab_spm(const char *name, bool bytes)
{
    static const char *const pieces[] = {"▁",  "▁a",  "▁an", "▁and", "n",  "d", "nd",  "o",
                                         "▁o", "f",   "▁of", "▁the", "t",  "h", "e",   "he",
                                         "th", "▁th", ".",   "\n",   "▁▁", "é", "日本"};
    enum { NP = sizeof pieces / sizeof pieces[0] };
    const char *toks[3 + 256 + NP + 1];
    int32_t types[3 + 256 + NP + 1];
    float scores[3 + 256 + NP + 1];
    static char bytetok[256][8];
    uint32_t n = 0;
    toks[n] = "<unk>", types[n] = 2, scores[n++] = 0;
    toks[n] = "<s>", types[n] = 3, scores[n++] = 0;
    toks[n] = "</s>", types[n] = 3, scores[n++] = 0;
    for (int b = 0; bytes && b < 256; b++) {
        snprintf(bytetok[b], sizeof bytetok[b], "<0x%02X>", b);
        toks[n] = bytetok[b], types[n] = 6, scores[n++] = 0;
    }
    for (int i = 0; i < NP; i++)
        toks[n] = pieces[i], types[n] = 1, scores[n++] = -(float)i;
    toks[n] = "<pad>", types[n] = 5, scores[n++] = 0;
    gguf_writer_t *w = NULL;
    if (gguf_writer_new(&w))
        return;
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, n);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, n);
    if (bytes)
        gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_VT_FLOAT32, scores, n);
    gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", n - 1);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", bytes);
    put_writer("fuzz_gguf_vocab", name, w, NULL, NULL);
    gguf_writer_destroy(&w);
}

static void vocab_bpe(const char *name, const char *pre)
{
    static const char *const merges_b[][2] = {
        {"t", "h"},     {"th", "e"}, {" ", "the"}, {"a", "n"},       {"an", "d"}, {" ", "and"},
        {"i", "n"},     {"in", "g"}, {" ", "w"},   {"o", "r"},       {"l", "d"},  {"or", "ld"},
        {" w", "orld"}, {"1", "2"},  {"\n", "\n"}, {"\xc3", "\xa9"}, {" ", " "},
    };
    enum { NM = sizeof merges_b / sizeof merges_b[0] };
    static char text[256 + NM][32], merge[NM][48];
    const char *toks[256 + NM + 2], *merges[NM];
    int32_t types[256 + NM + 2];
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = tok_gpt2_byte_cpt((uint8_t)b);
        char *t = text[n];
        if (cp < 0x80) {
            t[0] = (char)cp, t[1] = '\0';
        } else {
            t[0] = (char)(0xC0 | (cp >> 6)), t[1] = (char)(0x80 | (cp & 0x3F)), t[2] = '\0';
        }
        toks[n] = t, types[n++] = 1;
    }
    for (int i = 0; i < NM; i++) {
        merge[i][0] = '\0';
        gpt2_append(merge[i], merges_b[i][0]);
        strcat(merge[i], " ");
        gpt2_append(merge[i], merges_b[i][1]);
        merges[i] = merge[i];
        text[n][0] = '\0';
        gpt2_append(text[n], merges_b[i][0]);
        gpt2_append(text[n], merges_b[i][1]);
        toks[n] = text[n], types[n++] = 1;
    }
    toks[n] = "<|endoftext|>", types[n++] = 3;
    toks[n] = "<|user|>", types[n++] = 4;
    gguf_writer_t *w = NULL;
    if (gguf_writer_new(&w))
        return;
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_add_str(w, "tokenizer.ggml.pre", pre);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, n);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, n);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, NM);
    gguf_writer_add_i32(w, "tokenizer.ggml.eos_token_id", (int32_t)n - 2);
    gguf_writer_add_i64(w, "tokenizer.ggml.bos_token_id", (int64_t)n - 2);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
    put_writer("fuzz_gguf_vocab", name, w, NULL, NULL);
    gguf_writer_destroy(&w);
}

/* ---- fuzz_tokenizer ---- */

static void text_seeds(void)
{
    static const struct {
        const char *name, *s;
        size_t len;
    } texts[] = {
#define T_(name, lit) {name, lit, sizeof lit - 1}
        T_("ascii", "Hello world, the end. And then: 12 o'clock; it's 'quoted'."),
        T_("whitespace", "  two  spaces\n\nparagraph\r\n\ttab   \n"),
        T_("utf8", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xd0\xbf\xd1\x80\xd0\xb8 "
                   "\xf0\x9f\xa6\x99 \xe2\x96\x81marker"),
        T_("invalid", "\xff\xfe ok \xc3 \xe2\x96 \xed\xa0\x80 \xc0\xaf \x80\x80"),
        T_("special", "<s>hi</s><|endoftext|> <|eot|><|user|> <unk> <0x41>"),
        T_("control", "nul\0inside \x01\x1b[0m\x7f"),
        T_("digits", "1234567890 3.14159 -42 1,000,000 12ab34"),
#undef T_
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        put("fuzz_tokenizer", texts[i].name, texts[i].s, texts[i].len);
    char word[600];
    for (size_t i = 0; i < sizeof word; i++)
        word[i] = "hello "[i % 6];
    put("fuzz_tokenizer", "repeated", word, sizeof word);
}

/* ---- fuzz_snapshot ---- */

static float val(uint32_t lane, uint32_t pos, uint32_t d, uint32_t tag)
{
    uint32_t h = (lane * 2654435761u) ^ (pos * 40503u) ^ (d * 97u) ^ tag;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return (float)(h % 2001) / 500.0f - 2.0f;
}

static int append(kv_store_t *st, uint32_t sid, uint32_t n)
{
    uint32_t nl = kv_lane_count(st), hd = kv_head_dim(st), len = 0;
    err_info_t e;
    kv_transcript_len(st, sid, &len);
    float *k = malloc(sizeof(float) * nl * n * hd), *v = malloc(sizeof(float) * nl * n * hd);
    float *lb = malloc(sizeof(float) * nl * n);
    const float **kp = malloc(sizeof(float *) * nl), **vp = malloc(sizeof(float *) * nl);
    const float **lp = malloc(sizeof(float *) * nl);
    uint32_t *tok = malloc(sizeof(uint32_t) * n);
    for (uint32_t l = 0; l < nl; l++) {
        kp[l] = k + (size_t)l * n * hd;
        vp[l] = v + (size_t)l * n * hd;
        lp[l] = lb + (size_t)l * n;
        for (uint32_t j = 0; j < n; j++) {
            lb[(size_t)l * n + j] = -(float)(len + j) / 64.0f;
            for (uint32_t d = 0; d < hd; d++) {
                k[((size_t)l * n + j) * hd + d] = val(l, len + j, d, 1);
                v[((size_t)l * n + j) * hd + d] = val(l, len + j, d, 2);
            }
        }
    }
    for (uint32_t j = 0; j < n; j++)
        tok[j] = 100 + len + j;
    kv_append_t a = {.n = n, .tokens = tok, .k = kp, .v = vp, .logbeta = lp};
    int rc = kv_reserve(st, sid, n, &e);
    if (!rc)
        rc = kv_commit(st, sid, &a, &e);
    free(k), free(v), free(lb), free(kp), free(vp), free(lp), free(tok);
    return rc;
}

/* Replaces [p0, p1] in every lane with one pooled row at mid (mass p1 - p0 + 1). */
static int gist(kv_store_t *st, uint32_t sid, uint32_t p0, uint32_t p1, uint8_t kind, uint8_t level)
{
    uint32_t nl = kv_lane_count(st), hd = kv_head_dim(st);
    float *k = calloc((size_t)nl * hd, sizeof *k), *v = calloc((size_t)nl * hd, sizeof *v);
    const float **kp = calloc(nl, sizeof *kp), **vp = calloc(nl, sizeof *vp);
    const kv_row_meta_t **mp = calloc(nl, sizeof *mp);
    uint32_t *n = calloc(nl, sizeof *n);
    kv_row_meta_t m = {.pos = 0.5f * (float)(p0 + p1),
                       .mass = (float)(p1 - p0 + 1),
                       .logbeta = -0.5f,
                       .first = p0,
                       .last = p1,
                       .kind = kind,
                       .level = level};
    for (uint32_t l = 0; l < nl; l++) {
        for (uint32_t d = 0; d < hd; d++) {
            k[(size_t)l * hd + d] = val(l, p0, d, 3);
            v[(size_t)l * hd + d] = val(l, p1, d, 4);
        }
        kp[l] = k + (size_t)l * hd;
        vp[l] = v + (size_t)l * hd;
        mp[l] = &m;
        n[l] = 1;
    }
    kv_rows_t rows = {.n = n, .k = kp, .v = vp, .meta = mp};
    err_info_t e;
    int rc = kv_span_replace(st, sid, (float)p0, (float)p1, &rows, &e);
    free(k), free(v), free(kp), free(vp), free(mp), free(n);
    return rc;
}

static void snapshot_seed(const char *name, uint32_t nl, uint32_t nh, uint32_t hd, uint32_t br,
                          uint32_t hot, uint32_t n_tok, bool acc, bool busy)
{
    kv_store_config_t cfg = {
        .n_layer = nl, .n_head_kv = nh, .head_dim = hd, .block_rows = br, .hot_type = hot};
    kv_session_config_t scfg = {.hard_limit = 1u << 22, .soft_limit = 1u << 21, .attn_acc = acc};
    kv_store_t *st = NULL;
    err_info_t e;
    uint32_t sid;
    int rc = kv_store_new(&cfg, &st, &e);
    if (!rc)
        rc = kv_session_create(st, &scfg, &sid, &e);
    if (!rc && n_tok)
        rc = append(st, sid, n_tok);
    if (!rc && busy) {
        rc = gist(st, sid, 2, 5, KV_KIND_POOLED, 1);
        if (!rc)
            rc = gist(st, sid, 6, 8, KV_KIND_GIST, 2);
        if (!rc && hd % 32 == 0)
            rc = kv_span_demote(st, sid, 9.0f, 12.0f, &e);
        uint32_t ev[2] = {0, 3};
        if (!rc)
            rc = kv_lane_evict(st, sid, 0, 0, ev, 2, &e);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/seed.snap", out_dir);
    if (!rc)
        rc = kv_snapshot_write(st, sid, path, &e);
    if (rc) {
        fprintf(stderr, "seeds: snapshot %s: %d %s\n", name, rc, e.msg);
        failures++;
    } else {
        FILE *f = fopen(path, "rb");
        uint8_t *buf = malloc(1u << 20);
        size_t n = f && buf ? fread(buf + 1, 1, (1u << 20) - 1, f) : 0;
        if (f)
            fclose(f);
        if (buf) {
            buf[0] = 3; /* fuzz_snapshot's flags: fix the size field and the checksum */
            put("fuzz_snapshot", name, buf, n + 1);
        }
        free(buf);
        unlink(path);
    }
    kv_store_destroy(&st);
}

/* ---- fuzz_request ---- */

typedef struct run {
    uint8_t buf[8192];
    size_t n;
    uint64_t id;
} run_t;

static void add_raw(run_t *r, const void *p, size_t n)
{
    if (r->n + 2 + n > sizeof r->buf) {
        failures++;
        return;
    }
    r->buf[r->n++] = (uint8_t)n;
    r->buf[r->n++] = (uint8_t)(n >> 8);
    memcpy(r->buf + r->n, p, n);
    r->n += n;
}

static void add(run_t *r, Gistd__Request *q)
{
    uint8_t tmp[4096];
    q->id = ++r->id;
    size_t n = gistd__request__get_packed_size(q);
    if (n > sizeof tmp) {
        failures++;
        return;
    }
    gistd__request__pack(q, tmp);
    add_raw(r, tmp, n);
}

static void req_hello(run_t *r)
{
    Gistd__Hello m = GISTD__HELLO__INIT;
    m.version = 1;
    m.client = "seed";
    Gistd__Request q = GISTD__REQUEST__INIT;
    q.body_case = GISTD__REQUEST__BODY_HELLO;
    q.hello = &m;
    add(r, &q);
}

static void req_open(run_t *r, const char *policy, const char *tmpl, uint64_t budget,
                     const char *key, const char *value)
{
    Gistd__OpenSession m = GISTD__OPEN_SESSION__INIT;
    Gistd__Param pa = GISTD__PARAM__INIT;
    Gistd__Param *pp[1] = {&pa};
    Gistd__Pins pins = GISTD__PINS__INIT;
    m.policy = (char *)policy;
    m.chat_template = (char *)tmpl;
    m.budget_bytes = budget;
    if (key) {
        pa.key = (char *)key;
        pa.value = (char *)value;
        m.n_policy_params = 1;
        m.policy_params = pp;
    }
    pins.sink_tokens = 2;
    pins.recent_tokens = 8;
    m.pins = &pins;
    m.name = "seed";
    Gistd__Request q = GISTD__REQUEST__INIT;
    q.body_case = GISTD__REQUEST__BODY_OPEN;
    q.open = &m;
    add(r, &q);
}

static void req_append(run_t *r, uint32_t sid, const char *text, Gistd__Role role)
{
    Gistd__Append m = GISTD__APPEND__INIT;
    m.session = sid;
    m.text.data = (uint8_t *)text;
    m.text.len = strlen(text);
    m.role = role;
    Gistd__Request q = GISTD__REQUEST__INIT;
    q.body_case = GISTD__REQUEST__BODY_APPEND;
    q.append = &m;
    add(r, &q);
}

static void req_append_tokens(run_t *r, uint32_t sid, int32_t *tok, size_t n)
{
    Gistd__Append m = GISTD__APPEND__INIT;
    m.session = sid;
    m.tokens = tok;
    m.n_tokens = n;
    Gistd__Request q = GISTD__REQUEST__INIT;
    q.body_case = GISTD__REQUEST__BODY_APPEND;
    q.append = &m;
    add(r, &q);
}

static void req_generate(run_t *r, uint32_t sid, uint32_t max, const char *prompt, bool sample,
                         const char *stop)
{
    Gistd__Generate m = GISTD__GENERATE__INIT;
    Gistd__Sampling smp = GISTD__SAMPLING__INIT;
    ProtobufCBinaryData st = {stop ? strlen(stop) : 0, (uint8_t *)stop};
    m.session = sid;
    m.max_tokens = max;
    if (prompt) {
        m.prompt.data = (uint8_t *)prompt;
        m.prompt.len = strlen(prompt);
        m.prompt_role = GISTD__ROLE__ROLE_USER;
        m.role = GISTD__ROLE__ROLE_ASSISTANT;
    }
    if (sample) {
        smp.temp = 0.8f;
        smp.top_k = 20;
        smp.top_p = 0.9f;
        smp.min_p = 0.05f;
        smp.repeat_penalty = 1.1f;
        smp.repeat_last_n = 16;
        smp.seed = 7;
        m.sampling = &smp;
    }
    if (stop) {
        m.n_stop = 1;
        m.stop = &st;
    }
    Gistd__Request q = GISTD__REQUEST__INIT;
    q.body_case = GISTD__REQUEST__BODY_GENERATE;
    q.generate = &m;
    add(r, &q);
}

/* The requests that carry only a session (and maybe a number or two). */
static void req_simple(run_t *r, Gistd__Request__BodyCase kind, uint32_t sid, uint64_t a,
                       uint64_t b)
{
    Gistd__Request q = GISTD__REQUEST__INIT;
    Gistd__CloseSession close = GISTD__CLOSE_SESSION__INIT;
    Gistd__Score score = GISTD__SCORE__INIT;
    Gistd__Compact compact = GISTD__COMPACT__INIT;
    Gistd__Span span = GISTD__SPAN__INIT;
    Gistd__SessionInfoRequest info = GISTD__SESSION_INFO_REQUEST__INIT;
    Gistd__ListSessions list = GISTD__LIST_SESSIONS__INIT;
    Gistd__TranscriptRequest tr = GISTD__TRANSCRIPT_REQUEST__INIT;
    Gistd__StatsRequest stats = GISTD__STATS_REQUEST__INIT;
    Gistd__SetBudget budget = GISTD__SET_BUDGET__INIT;
    Gistd__Snapshot snap = GISTD__SNAPSHOT__INIT;
    Gistd__Restore restore = GISTD__RESTORE__INIT;
    Gistd__Cancel cancel = GISTD__CANCEL__INIT;
    int32_t toks[4] = {20, 40, 60, 80};
    q.body_case = kind;
    switch (kind) {
    case GISTD__REQUEST__BODY_CLOSE:
        close.session = sid, q.close = &close;
        break;
    case GISTD__REQUEST__BODY_SCORE:
        score.session = sid, score.tokens = toks, score.n_tokens = 4, q.score = &score;
        break;
    case GISTD__REQUEST__BODY_COMPACT:
        compact.session = sid;
        if (a || b)
            span.first = (uint32_t)a, span.last = (uint32_t)b, compact.span = &span;
        else
            compact.last_thought = true;
        q.compact = &compact;
        break;
    case GISTD__REQUEST__BODY_INFO:
        info.session = sid, q.info = &info;
        break;
    case GISTD__REQUEST__BODY_LIST:
        q.list = &list;
        break;
    case GISTD__REQUEST__BODY_TRANSCRIPT:
        tr.session = sid, tr.first = (uint32_t)a, tr.count = (uint32_t)b, q.transcript = &tr;
        break;
    case GISTD__REQUEST__BODY_STATS:
        stats.sessions = true, q.stats = &stats;
        break;
    case GISTD__REQUEST__BODY_SET_BUDGET:
        budget.session = sid, budget.hard_bytes = a, budget.soft_bytes = b;
        q.set_budget = &budget;
        break;
    case GISTD__REQUEST__BODY_SNAPSHOT:
        snap.session = sid, q.snapshot = &snap;
        break;
    case GISTD__REQUEST__BODY_RESTORE:
        restore.session = sid, q.restore = &restore;
        break;
    case GISTD__REQUEST__BODY_CANCEL:
        cancel.session = sid, q.cancel = &cancel;
        break;
    default:
        break;
    }
    add(r, &q);
}

static void put_run(const char *name, const run_t *r)
{
    put("fuzz_request", name, r->buf, r->n);
}

static void request_seeds(void)
{
    run_t r = {.n = 0};
    req_hello(&r);
    req_open(&r, "", "", 0, NULL, NULL);
    req_append(&r, 1, "Once upon a time, there was a tiny model.", GISTD__ROLE__ROLE_NONE);
    req_generate(&r, 1, 8, NULL, false, NULL);
    req_simple(&r, GISTD__REQUEST__BODY_STATS, 0, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_CLOSE, 1, 0, 0);
    put_run("chat-basic", &r);

    r = (run_t){.n = 0};
    req_open(&r, "window", "chatml", 1u << 16, "recent", "16");
    req_generate(&r, 1, 12, "Tell me a story. Then stop.", true, ".");
    req_simple(&r, GISTD__REQUEST__BODY_COMPACT, 1, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_TRANSCRIPT, 1, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_INFO, 1, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_LIST, 0, 0, 0);
    put_run("window-chatml", &r);

    r = (run_t){.n = 0};
    int32_t toks[6] = {1, 50, 60, 70, 80, 90};
    req_open(&r, "pool", "plain", 0, "sinks", "2");
    req_append_tokens(&r, 1, toks, 6);
    req_simple(&r, GISTD__REQUEST__BODY_SCORE, 1, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_COMPACT, 1, 1, 4);
    req_simple(&r, GISTD__REQUEST__BODY_SNAPSHOT, 1, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_CLOSE, 1, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_RESTORE, 1, 0, 0);
    req_simple(&r, GISTD__REQUEST__BODY_TRANSCRIPT, 1, 2, 3);
    put_run("snapshot-restore", &r);

    static const char *const policies[] = {"gist", "h2o", "tova", "trim", "auto", "full"};
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++) {
        r = (run_t){.n = 0};
        req_open(&r, policies[i], "", 24u << 10, NULL, NULL);
        req_append(&r, 1, "The cat sat. The dog ran! Did it rain? Yes.\n\nA new thought.",
                   GISTD__ROLE__ROLE_SYSTEM);
        req_generate(&r, 1, 40, "And then", i % 2 == 0, NULL);
        req_simple(&r, GISTD__REQUEST__BODY_SET_BUDGET, 1, 16u << 10, 0);
        req_simple(&r, GISTD__REQUEST__BODY_CANCEL, 1, 0, 0);
        req_simple(&r, GISTD__REQUEST__BODY_SET_BUDGET, 0, 1u << 20, 0);
        req_simple(&r, GISTD__REQUEST__BODY_STATS, 0, 0, 0);
        char name[32];
        snprintf(name, sizeof name, "policy-%s", policies[i]);
        put_run(name, &r);
    }

    r = (run_t){.n = 0};
    add_raw(&r, "\xff\xff\xff not a protobuf", 20);
    add_raw(&r, "", 0);
    Gistd__Request empty = GISTD__REQUEST__INIT;
    add(&r, &empty);
    req_generate(&r, 99, 4, NULL, false, NULL);
    put_run("malformed", &r);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seeds OUT_DIR\n");
        return 2;
    }
    out_dir = argv[1];
    gguf_seeds();
    vocab_spm("spm.gguf", true);
    vocab_spm("spm-no-bytes.gguf", false);
    vocab_bpe("bpe-gpt2.gguf", "gpt-2");
    vocab_bpe("bpe-llama3.gguf", "llama-bpe");
    text_seeds();
    snapshot_seed("f32-busy-acc.snap", 1, 1, 32, 4, DT_F32, 16, true, true);
    snapshot_seed("f16-busy.snap", 2, 2, 32, 3, DT_F16, 14, false, true);
    snapshot_seed("f32-small-heads.snap", 2, 1, 8, 2, DT_F32, 5, false, false);
    snapshot_seed("empty.snap", 1, 2, 64, 64, DT_F16, 0, true, false);
    request_seeds();
    return failures ? 1 : 0;
}
