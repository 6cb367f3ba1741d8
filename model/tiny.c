/*
 * model/tiny.c — the random-weight llama model writer (see model/tiny.h).
 *
 * The vocabulary imitates a SentencePiece `llama` model: <unk>, <s>, </s>, the 256 byte
 * tokens, then normal pieces with decreasing scores, then the optional gist tokens. The
 * normal pieces are prefix-closed ("▁t", "▁th", "▁the"), so a merging tokenizer can reach
 * every one of them one character at a time; single characters come last with the lowest
 * scores, as SentencePiece stores them. Filler pieces "▁w1", "▁w2", ... (also prefix-closed)
 * make up any size of vocabulary.
 */
#include "model/tiny.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/dtype.h"
#include "model/gguf.h"
#include "model/gguf_write.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's word-start mark */

/* SentencePiece token types, as in tokenizer.ggml.token_type. */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_BYTE = 6 };

/* Common English words, most frequent first; their "▁"-prefixed prefixes become pieces. */
static const char *const words[] = {
    "the",         "and",       "to",        "a",       "was",      "he",       "she",
    "it",          "of",        "in",        "they",    "you",      "said",     "his",
    "her",         "with",      "on",        "that",    "for",      "is",       "had",
    "but",         "day",       "so",        "one",     "all",      "were",     "there",
    "not",         "at",        "big",       "little",  "we",       "very",     "be",
    "up",          "what",      "time",      "once",    "upon",     "happy",    "play",
    "are",         "have",      "this",      "mom",     "from",     "friend",   "saw",
    "went",        "no",        "did",       "can",     "like",     "out",      "do",
    "wanted",      "then",      "them",      "when",    "an",       "my",       "him",
    "me",          "man",       "girl",      "boy",     "tree",     "dog",      "cat",
    "ball",        "house",     "sun",       "water",   "fun",      "good",     "new",
    "help",        "look",      "come",      "want",    "see",      "go",       "get",
    "make",        "know",      "think",     "take",    "people",   "year",     "way",
    "thing",       "woman",     "life",      "child",   "world",    "school",   "state",
    "family",      "student",   "group",     "country", "problem",  "hand",     "part",
    "place",       "case",      "week",      "company", "system",   "program",  "question",
    "work",        "number",    "night",     "point",   "home",     "room",     "mother",
    "area",        "money",     "story",     "fact",    "month",    "lot",      "right",
    "study",       "book",      "eye",       "job",     "word",     "business", "issue",
    "side",        "kind",      "head",      "service", "power",    "hour",     "game",
    "line",        "end",       "member",    "law",     "car",      "city",     "community",
    "name",        "president", "team",      "minute",  "idea",     "kid",      "body",
    "information", "back",      "parent",    "face",    "others",   "level",    "office",
    "door",        "health",    "person",    "art",     "war",      "history",  "party",
    "result",      "change",    "morning",   "reason",  "research", "moment",   "air",
    "teacher",     "force",     "education", "about",   "would",    "could",    "should",
    "because",     "after",     "before",    "again",   "never",    "always",   "every",
    "some",        "many",      "other",     "more",    "most",     "first",    "last",
    "long",        "great",     "old",       "young",   "small",    "large",    "next",
    "early",       "important", "few",       "public",  "bad",      "same",     "able",
    "red",         "blue",      "green",     "sky",     "bird",     "flower",   "park",
    "toy",         "sad",       "smile",     "laugh",   "run",      "jump",     "walk",
    "found",       "away",      "into",      "over",    "down",     "just",     "how",
    "where",       "who",       "why",       "here",    "now",      "well",     "also",
    "only",        "still",     "even",      "back",    "much",
};

/* Single characters, stored last (lowest scores) as SentencePiece does. */
static const char *const chars[] = {
    SPM_SPACE, "e", "t", "a", "o", "i", "n", "s", "h", "r", "d", "l",  "u", "c", "m",
    "w",       "f", "g", "y", "p", "b", ".", ",", "v", "k", "'", "\"", "!", "?", "j",
    "x",       "q", "z", "T", "S", "I", "A", "H", "W", "O", "M", "B",  "L", "C", "0",
    "1",       "2", "3", "4", "5", "6", "7", "8", "9", "-", ":", ";",  "(", ")",
};

/* ---- the vocabulary ---- */

typedef struct vocab {
    char **pieces; /* [n] owned strings */
    float *scores;
    int32_t *types;
    uint32_t n, cap;
} vocab_t;

static int vocab_add(vocab_t *v, const char *piece, float score, int32_t type)
{
    if (v->n == v->cap)
        return ERR_INTERNAL;
    v->pieces[v->n] = strdup(piece);
    if (!v->pieces[v->n])
        return ERR_NOMEM;
    v->scores[v->n] = score;
    v->types[v->n] = type;
    v->n++;
    return 0;
}

static bool vocab_has(const vocab_t *v, uint32_t from, const char *piece)
{
    for (uint32_t i = from; i < v->n; i++)
        if (!strcmp(v->pieces[i], piece))
            return true;
    return false;
}

static void vocab_free(vocab_t *v)
{
    for (uint32_t i = 0; i < v->n; i++)
        free(v->pieces[i]);
    free(v->pieces);
    free(v->scores);
    free(v->types);
}

static int vocab_build(vocab_t *v, const mdl_tiny_cfg_t *cfg)
{
    char buf[64];
    int rc;
    memset(v, 0, sizeof *v);
    v->cap = cfg->n_vocab;
    v->pieces = calloc(v->cap, sizeof *v->pieces);
    v->scores = calloc(v->cap, sizeof *v->scores);
    v->types = calloc(v->cap, sizeof *v->types);
    if (!v->pieces || !v->scores || !v->types)
        return ERR_NOMEM;
    if ((rc = vocab_add(v, "<unk>", 0, TT_UNKNOWN)) || (rc = vocab_add(v, "<s>", 0, TT_CONTROL)) ||
        (rc = vocab_add(v, "</s>", 0, TT_CONTROL)))
        return rc;
    for (int b = 0; b < 256; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        if ((rc = vocab_add(v, buf, 0, TT_BYTE)))
            return rc;
    }
    const uint32_t first_normal = v->n;
    const uint32_t n_normal = cfg->n_vocab - cfg->n_gist - first_normal;
    const uint32_t n_chars = (uint32_t)(sizeof chars / sizeof chars[0]);
    const uint32_t n_merged = n_normal > n_chars ? n_normal - n_chars : 0;
    float score = 0.0f;

    /* merged pieces: every "▁"-prefixed prefix of each word, in word order */
    for (size_t w = 0; w < sizeof words / sizeof words[0] && v->n - first_normal < n_merged; w++) {
        size_t len = strlen(words[w]);
        for (size_t k = 1; k <= len && v->n - first_normal < n_merged; k++) {
            snprintf(buf, sizeof buf, SPM_SPACE "%.*s", (int)k, words[w]);
            if (vocab_has(v, first_normal, buf))
                continue;
            if ((rc = vocab_add(v, buf, score, TT_NORMAL)))
                return rc;
            score -= 1.0f;
        }
    }
    /* filler: "▁w1", "▁w2", ...: every prefix of "▁w<n>" is "▁w" or an earlier filler
     * (no word in the list contains a digit, so none collides) */
    for (uint32_t k = 1; v->n - first_normal < n_merged; k++) {
        snprintf(buf, sizeof buf, SPM_SPACE "w%" PRIu32, k);
        if ((rc = vocab_add(v, buf, score, TT_NORMAL)))
            return rc;
        score -= 1.0f;
    }
    for (uint32_t c = 0; c < n_chars && v->n - first_normal < n_normal; c++) {
        if ((rc = vocab_add(v, chars[c], score, TT_NORMAL)))
            return rc;
        score -= 1.0f;
    }
    for (uint32_t g = 0; g < cfg->n_gist; g++) {
        snprintf(buf, sizeof buf, "<gist_%" PRIu32 ">", g);
        if ((rc = vocab_add(v, buf, 0, TT_CONTROL)))
            return rc;
    }
    return v->n == cfg->n_vocab ? 0 : ERR_INTERNAL;
}

/* ---- weights ---- */

/* How a tensor's floats are drawn. */
typedef enum wkind { W_MATRIX, W_EMBED, W_NORM, W_BIAS, W_GATE_BIAS } wkind_t;

typedef struct tspec {
    char name[64];
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[2];
    wkind_t kind;
} tspec_t;

typedef struct tiny {
    const mdl_tiny_cfg_t *cfg;
    tspec_t *specs;
    uint32_t n_specs;
    float *row; /* scratch: one row of floats */
} tiny_t;

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static float uniform(uint64_t *s)
{
    return (float)((double)(splitmix64(s) >> 40) * 0x1p-23 - 1.0);
}

/* A generator state for a tensor: the seed mixed with its name. */
static uint64_t tensor_state(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    uint64_t s = seed ^ h;
    splitmix64(&s);
    return s;
}

static int fill_tensor(void *ctx, uint64_t index, void *dst, size_t nbytes)
{
    tiny_t *t = ctx;
    const tspec_t *sp = &t->specs[index];
    uint64_t s = tensor_state(t->cfg->seed, sp->name);
    const uint64_t cols = sp->ne[0], rows = sp->n_dims == 2 ? sp->ne[1] : 1;
    const size_t row_bytes = ggml_row_bytes(sp->type, cols);
    const float scale = 1.5f / sqrtf((float)cols);
    if (row_bytes * rows != nbytes)
        return ERR_INTERNAL;
    for (uint64_t r = 0; r < rows; r++) {
        for (uint64_t c = 0; c < cols; c++) {
            float u = uniform(&s);
            switch (sp->kind) {
            case W_MATRIX:
                t->row[c] = u * scale;
                break;
            case W_EMBED:
                t->row[c] = u;
                break;
            case W_NORM:
                t->row[c] = 1.0f + 0.1f * u;
                break;
            case W_BIAS:
                t->row[c] = 0.1f * u;
                break;
            case W_GATE_BIAS: /* log beta near -0.05: rows fade slowly */
                t->row[c] = 3.0f + 0.5f * u;
                break;
            }
        }
        int rc = dt_from_f32(sp->type, t->row, (uint8_t *)dst + r * row_bytes, (size_t)cols);
        if (rc)
            return rc;
    }
    return 0;
}

static void spec(tiny_t *t, const char *name, uint32_t type, uint64_t ne0, uint64_t ne1,
                 wkind_t kind)
{
    tspec_t *sp = &t->specs[t->n_specs++];
    snprintf(sp->name, sizeof sp->name, "%s", name);
    sp->type = type;
    sp->n_dims = ne1 ? 2 : 1;
    sp->ne[0] = ne0;
    sp->ne[1] = ne1 ? ne1 : 1;
    sp->kind = kind;
}

static uint32_t head_dim(const mdl_tiny_cfg_t *c)
{
    return c->head_dim ? c->head_dim : c->n_embd / c->n_head;
}

/* llama.cpp's use_more_bits: the layers whose attn_v and ffn_down a _M mix keeps in q6_K. */
static bool more_bits(uint32_t l, uint32_t n)
{
    return l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2;
}

/* The storage type of a matrix with rows of ne0 (what: 'o' output, 'v' attn_v, 'd' ffn_down,
 * else any other) in layer l: the configured type, or the mix's choice. In a mix, a K-quant
 * for rows that are not whole 256-blocks falls back as llama.cpp's does: q4_K to q5_0, q5_K
 * to q5_1, q6_K to q8_0. */
static uint32_t mat_type(const mdl_tiny_cfg_t *c, char what, uint32_t l, uint64_t ne0)
{
    uint32_t t = c->type;
    if (c->mix && (what == 'o' || ((what == 'v' || what == 'd') && more_bits(l, c->n_layer))))
        t = GGML_TYPE_Q6_K;
    const ggml_type_info_t *ti = ggml_type_get(t);
    if (c->mix && ne0 % ti->block_elems)
        t = t == GGML_TYPE_Q4_K   ? GGML_TYPE_Q5_0
            : t == GGML_TYPE_Q5_K ? GGML_TYPE_Q5_1
                                  : GGML_TYPE_Q8_0;
    return t;
}

/* The tensors in the order real converters write them. */
static void plan_tensors(tiny_t *t)
{
    const mdl_tiny_cfg_t *c = t->cfg;
    const uint32_t hd = head_dim(c), qw = c->n_head * hd, kvw = c->n_head_kv * hd;
    const bool qwen2 = c->arch && !strcmp(c->arch, "qwen2");
    const bool qwen3 = c->arch && !strcmp(c->arch, "qwen3");
    char n[64];
    /* tied: the embedding is also the output, and a mix stores it as one */
    spec(t, "token_embd.weight", mat_type(c, c->tied ? 'o' : 'e', 0, c->n_embd), c->n_embd,
         c->n_vocab, W_EMBED);
    spec(t, "output_norm.weight", GGML_TYPE_F32, c->n_embd, 0, W_NORM);
    if (!c->tied)
        spec(t, "output.weight", mat_type(c, 'o', 0, c->n_embd), c->n_embd, c->n_vocab, W_MATRIX);
    for (uint32_t l = 0; l < c->n_layer; l++) {
#define BLK(suffix, type, ne0, ne1, kind)                                                          \
    snprintf(n, sizeof n, "blk.%" PRIu32 "." suffix, l);                                           \
    spec(t, n, type, ne0, ne1, kind)
#define MAT(suffix, what, ne0, ne1) BLK(suffix, mat_type(c, what, l, ne0), ne0, ne1, W_MATRIX)
        BLK("attn_norm.weight", GGML_TYPE_F32, c->n_embd, 0, W_NORM);
        MAT("attn_q.weight", 'q', c->n_embd, qw);
        MAT("attn_k.weight", 'k', c->n_embd, kvw);
        MAT("attn_v.weight", 'v', c->n_embd, kvw);
        if (qwen2) {
            BLK("attn_q.bias", GGML_TYPE_F32, qw, 0, W_BIAS);
            BLK("attn_k.bias", GGML_TYPE_F32, kvw, 0, W_BIAS);
            BLK("attn_v.bias", GGML_TYPE_F32, kvw, 0, W_BIAS);
        }
        if (qwen3) {
            BLK("attn_q_norm.weight", GGML_TYPE_F32, hd, 0, W_NORM);
            BLK("attn_k_norm.weight", GGML_TYPE_F32, hd, 0, W_NORM);
        }
        MAT("attn_output.weight", 'a', qw, c->n_embd);
        BLK("ffn_norm.weight", GGML_TYPE_F32, c->n_embd, 0, W_NORM);
        MAT("ffn_gate.weight", 'g', c->n_embd, c->n_ff);
        MAT("ffn_down.weight", 'd', c->n_ff, c->n_embd);
        MAT("ffn_up.weight", 'u', c->n_embd, c->n_ff);
        if (c->retention_hidden) {
            const uint32_t h = c->retention_hidden;
            BLK("retention_in.weight", GGML_TYPE_F32, c->n_embd, h, W_MATRIX);
            BLK("retention_in.bias", GGML_TYPE_F32, h, 0, W_BIAS);
            BLK("retention_out.weight", GGML_TYPE_F32, h, c->n_head_kv, W_MATRIX);
            BLK("retention_out.bias", GGML_TYPE_F32, c->n_head_kv, 0, W_GATE_BIAS);
        }
#undef MAT
#undef BLK
    }
}

/* ---- configuration ---- */

void mdl_tiny_cfg_default(mdl_tiny_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->seed = 1;
    cfg->type = GGML_TYPE_F32;
    cfg->n_embd = 64;
    cfg->n_layer = 2;
    cfg->n_head = 4;
    cfg->n_head_kv = 2;
    cfg->n_ff = 128;
    cfg->n_vocab = 384;
    cfg->n_ctx = 256;
    cfg->rope_base = 10000.0f;
    cfg->rms_eps = 1e-5f;
    cfg->retention_budget = 64;
    cfg->name = "tiny";
}

int mdl_tiny_type_from_name(const char *name)
{
    static const uint32_t types[] = {GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q8_0,
                                     GGML_TYPE_Q4_0, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q4_K,
                                     GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(name, ggml_type_get(types[i])->name))
            return (int)types[i];
    return -1;
}

int mdl_tiny_set_type(mdl_tiny_cfg_t *cfg, const char *name)
{
    static const struct {
        const char *name;
        uint32_t type, mix;
    } mixes[] = {{"q4_K_M", GGML_TYPE_Q4_K, MDL_TINY_MIX_Q4_K_M},
                 {"q5_K_M", GGML_TYPE_Q5_K, MDL_TINY_MIX_Q5_K_M}};
    for (size_t i = 0; i < sizeof mixes / sizeof mixes[0]; i++)
        if (!strcasecmp(name, mixes[i].name)) {
            cfg->type = mixes[i].type;
            cfg->mix = mixes[i].mix;
            return 0;
        }
    int t = mdl_tiny_type_from_name(name);
    if (t < 0)
        return -1;
    cfg->type = (uint32_t)t;
    cfg->mix = MDL_TINY_MIX_NONE;
    return 0;
}

/* general.file_type as llama.cpp numbers it (LLAMA_FTYPE_*). */
static uint32_t file_type(uint32_t type, uint32_t mix)
{
    if (mix == MDL_TINY_MIX_Q4_K_M)
        return 15;
    if (mix == MDL_TINY_MIX_Q5_K_M)
        return 17;
    switch (type) {
    case GGML_TYPE_Q4_K:
        return 14; /* Q4_K_S: every matrix q4_K */
    case GGML_TYPE_Q5_K:
        return 16;
    case GGML_TYPE_Q6_K:
        return 18;
    case GGML_TYPE_F16:
        return 1;
    case GGML_TYPE_Q4_0:
        return 2;
    case GGML_TYPE_Q8_0:
        return 7;
    case GGML_TYPE_BF16:
        return 32;
    default:
        return 0;
    }
}

static int check_cfg(const mdl_tiny_cfg_t *c, err_info_t *e)
{
    if (mdl_tiny_type_from_name(ggml_type_get(c->type) ? ggml_type_get(c->type)->name : "") < 0)
        return err_set(e, ERR_INVAL,
                       "type %" PRIu32 " is not one of f32, f16, bf16, q8_0, q4_0, q5_0, q5_1, "
                       "q4_K, q5_K, q6_K",
                       c->type);
    if (c->arch && strcmp(c->arch, "llama") && strcmp(c->arch, "qwen2") && strcmp(c->arch, "qwen3"))
        return err_set(e, ERR_INVAL, "architecture '%s' is not one of llama, qwen2, qwen3",
                       c->arch);
    if (!c->n_embd || !c->n_layer || !c->n_head || !c->n_head_kv || !c->n_ff || !c->n_ctx)
        return err_set(e, ERR_INVAL,
                       "n_embd, n_layer, n_head, n_head_kv, n_ff and n_ctx must "
                       "all be positive");
    if (c->n_embd > 65536 || c->n_ff > (1u << 20) || c->n_layer > 1024 || c->n_ctx > (1u << 24))
        return err_set(e, ERR_INVAL,
                       "shape too large (n_embd <= 65536, n_ff <= 1048576, "
                       "n_layer <= 1024, n_ctx <= 16777216)");
    if (!c->head_dim && c->n_embd % c->n_head)
        return err_set(e, ERR_INVAL, "n_embd %" PRIu32 " is not a multiple of n_head %" PRIu32,
                       c->n_embd, c->n_head);
    if ((uint64_t)c->n_head * head_dim(c) > 65536)
        return err_set(e, ERR_INVAL, "n_head * head_dim is too large");
    if (c->n_head % c->n_head_kv)
        return err_set(e, ERR_INVAL, "n_head %" PRIu32 " is not a multiple of n_head_kv %" PRIu32,
                       c->n_head, c->n_head_kv);
    if (head_dim(c) % 2 || !head_dim(c))
        return err_set(e, ERR_INVAL, "head_dim %" PRIu32 " is odd or 0 (rope needs pairs)",
                       head_dim(c));
    if (c->n_vocab > (1u << 24) || c->n_gist > (1u << 20) || c->n_vocab < 259 + c->n_gist)
        return err_set(e, ERR_INVAL,
                       "n_vocab %" PRIu32 " must be at least 259 + n_gist (%" PRIu32
                       ") for the special and byte tokens, and at most 16777216",
                       c->n_vocab, c->n_gist);
    const ggml_type_info_t *ti = ggml_type_get(c->type);
    const uint32_t blk = c->mix ? 32 : ti->block_elems; /* a mix falls back to blocks of 32 */
    const uint32_t qw = c->n_head * head_dim(c);
    if (c->n_embd % blk || c->n_ff % blk || qw % blk)
        return err_set(e, ERR_INVAL,
                       "type %s needs n_embd, n_ff and n_head * head_dim to be multiples of "
                       "%" PRIu32 " (n_embd %" PRIu32 ", n_ff %" PRIu32 ", %" PRIu32 ")",
                       ti->name, blk, c->n_embd, c->n_ff, qw);
    if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base) || !(c->rms_eps > 0.0f) ||
        !(c->rms_eps < 1.0f))
        return err_set(e, ERR_INVAL, "rope_base must be positive and rms_eps in (0, 1)");
    if (c->retention_hidden > 65536)
        return err_set(e, ERR_INVAL, "retention_hidden %" PRIu32 " is too large",
                       c->retention_hidden);
    return 0;
}

static void add_keys(gguf_writer_t *w, const mdl_tiny_cfg_t *c, const vocab_t *v)
{
    const char *arch = c->arch ? c->arch : "llama";
    char k[96];
#define AK(suffix) (snprintf(k, sizeof k, "%s." suffix, arch), k)
    gguf_writer_add_str(w, "general.architecture", arch);
    gguf_writer_add_str(w, "general.name", c->name ? c->name : "tiny");
    gguf_writer_add_u32(w, "general.file_type", file_type(c->type, c->mix));
    gguf_writer_add_u32(w, AK("vocab_size"), c->n_vocab);
    gguf_writer_add_u32(w, AK("context_length"), c->n_ctx);
    gguf_writer_add_u32(w, AK("embedding_length"), c->n_embd);
    gguf_writer_add_u32(w, AK("block_count"), c->n_layer);
    gguf_writer_add_u32(w, AK("feed_forward_length"), c->n_ff);
    gguf_writer_add_u32(w, AK("rope.dimension_count"), head_dim(c));
    gguf_writer_add_u32(w, AK("attention.head_count"), c->n_head);
    gguf_writer_add_u32(w, AK("attention.head_count_kv"), c->n_head_kv);
    if (c->head_dim) {
        gguf_writer_add_u32(w, AK("attention.key_length"), c->head_dim);
        gguf_writer_add_u32(w, AK("attention.value_length"), c->head_dim);
    }
    gguf_writer_add_f32(w, AK("attention.layer_norm_rms_epsilon"), c->rms_eps);
    gguf_writer_add_f32(w, AK("rope.freq_base"), c->rope_base);
#undef AK
    gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->pieces, v->n);
    gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_VT_FLOAT32, v->scores, v->n);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, v->types, v->n);
    gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", !c->no_space_prefix);
    if (c->chat_template)
        gguf_writer_add_str(w, "tokenizer.chat_template", c->chat_template);
    if (c->n_gist) {
        gguf_writer_add_u32(w, "gistd.gist.count", c->n_gist);
        gguf_writer_add_u32(w, "gistd.gist.first_token_id", c->n_vocab - c->n_gist);
        gguf_writer_add_str(w, "gistd.gist.mask", "sentence");
        gguf_writer_add_u32(w, "gistd.gist.sinks", 1);
    }
    if (c->retention_hidden) {
        gguf_writer_add_u32(w, "gistd.retention.hidden", c->retention_hidden);
        gguf_writer_add_u32(w, "gistd.retention.budget", c->retention_budget);
    }
}

int mdl_tiny_write(const char *path, const mdl_tiny_cfg_t *cfg, err_info_t *e)
{
    int rc = check_cfg(cfg, e);
    if (rc)
        return rc;
    tiny_t t = {.cfg = cfg};
    vocab_t v;
    gguf_writer_t *w = NULL;
    const uint32_t per_layer = 14 + (cfg->retention_hidden ? 4 : 0);
    uint64_t max_cols = cfg->n_embd > cfg->n_ff ? cfg->n_embd : cfg->n_ff;
    if ((uint64_t)cfg->n_head * head_dim(cfg) > max_cols)
        max_cols = (uint64_t)cfg->n_head * head_dim(cfg);
    t.specs = calloc(3 + (size_t)cfg->n_layer * per_layer, sizeof *t.specs);
    t.row = malloc((max_cols > cfg->retention_hidden ? max_cols : cfg->retention_hidden) *
                   sizeof *t.row);
    if (!t.specs || !t.row) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto free_tiny;
    }
    if ((rc = vocab_build(&v, cfg))) {
        err_set(e, rc, "building the vocabulary failed (%s)", err_str(rc));
        goto free_vocab;
    }
    plan_tensors(&t);
    if ((rc = gguf_writer_new(&w))) {
        err_set(e, rc, "out of memory");
        goto free_vocab;
    }
    add_keys(w, cfg, &v);
    for (uint32_t i = 0; i < t.n_specs; i++)
        gguf_writer_add_tensor_fill(w, t.specs[i].name, t.specs[i].type, t.specs[i].n_dims,
                                    t.specs[i].ne, fill_tensor, &t);
    rc = gguf_writer_write(w, path, e);
    gguf_writer_destroy(&w);
free_vocab:
    vocab_free(&v);
free_tiny:
    free(t.specs);
    free(t.row);
    return rc;
}
