/*
 * Tests for kvstore/kv_pool.h: RoPE at fractional positions against a direct computation
 * written here, and pooled rows: one member pools to itself, identical unrotated vectors at
 * different positions pool to that vector rotated at the mass-weighted mean position, V is
 * the mass-weighted mean, linear scaling and per-pair divisors act as documented, and a
 * pooled row goes through the store as a gist.
 */
#include <math.h>
#include <string.h>

#include "kvstore/kv_pool.h"
#include "tests/test_kvstore_util.h"
#include "tests/test_rope_util.h"

#define HD 64

/* A rotation's parameters, as a model file gives them. */
typedef struct rope_params {
    uint32_t n_rot;
    double base, scale;
    const float *freq_div;
} rope_params_t;

/* The store's rotation for p: the model's (model/rope.h), set up from p. */
static const kv_rope_t *rope_of(tr_rope_t *t, const rope_params_t *p)
{
    return tr_rope_init(t, HD, p->n_rot, p->base, p->scale, p->freq_div);
}

/* Direct rotation: pairs (2i, 2i+1), theta_i = pos / scale * base^(-2i/n_rot) / div_i. */
static void rope_direct(const rope_params_t *r, double pos, const float *x, float *out)
{
    memcpy(out, x, sizeof(float) * HD);
    for (uint32_t i = 0; i < r->n_rot / 2; i++) {
        double th = pos / (r->scale > 0 ? r->scale : 1.0) *
                    pow(r->base, -2.0 * i / (double)r->n_rot) /
                    (r->freq_div ? r->freq_div[i] : 1.0);
        out[2 * i] = (float)(x[2 * i] * cos(th) - x[2 * i + 1] * sin(th));
        out[2 * i + 1] = (float)(x[2 * i] * sin(th) + x[2 * i + 1] * cos(th));
    }
}

static void random_vec(kvt_rng_t *rng, float *x)
{
    for (int d = 0; d < HD; d++)
        x[d] = kvt_unit(rng);
}

static void test_rope_apply(void)
{
    const rope_params_t rp = {.n_rot = HD, .base = 10000.0};
    tr_rope_t tr;
    const kv_rope_t *r = rope_of(&tr, &rp);
    kvt_rng_t rng = {1};
    float x[HD], y[HD], z[HD];
    random_vec(&rng, x);
    float positions[] = {0.0f, 1.0f, 7.5f, 1234.25f, 100000.0f};
    for (int p = 0; p < 5; p++) {
        memcpy(y, x, sizeof x);
        CHECK_OK(kv_rope_apply(r, HD, positions[p], 1, y));
        rope_direct(&rp, positions[p], x, z);
        for (int d = 0; d < HD; d++)
            CHECK_NEAR(y[d], z[d], 2e-6);
        CHECK_OK(kv_rope_apply(r, HD, positions[p], -1, y));
        for (int d = 0; d < HD; d++)
            CHECK_NEAR(y[d], x[d], 2e-6);
    }
    /* partial rotation leaves the tail alone; scaling and divisors as documented */
    const rope_params_t part = {.n_rot = 16, .base = 500000.0};
    tr_rope_t tp;
    memcpy(y, x, sizeof x);
    CHECK_OK(kv_rope_apply(rope_of(&tp, &part), HD, 33.0f, 1, y));
    rope_direct(&part, 33.0, x, z);
    for (int d = 0; d < HD; d++)
        CHECK_NEAR(y[d], z[d], 2e-6);
    CHECK(memcmp(y + 16, x + 16, sizeof(float) * (HD - 16)) == 0);
    float div[HD / 2];
    for (int i = 0; i < HD / 2; i++)
        div[i] = 4.0f;
    const rope_params_t scaled = {.n_rot = HD, .base = 10000.0, .scale = 4.0},
                        divided = {.n_rot = HD, .base = 10000.0, .freq_div = div};
    tr_rope_t ts, td;
    memcpy(y, x, sizeof x);
    memcpy(z, x, sizeof x);
    CHECK_OK(kv_rope_apply(rope_of(&ts, &scaled), HD, 40.0f, 1, y));
    CHECK_OK(kv_rope_apply(rope_of(&td, &divided), HD, 40.0f, 1, z));
    float w[HD];
    memcpy(w, x, sizeof x);
    CHECK_OK(kv_rope_apply(r, HD, 10.0f, 1, w));
    for (int d = 0; d < HD; d++) {
        CHECK_NEAR(y[d], w[d], 2e-6);
        CHECK_NEAR(z[d], w[d], 2e-6);
    }
    const kv_rope_t none = {0};
    CHECK_INT(kv_rope_apply(&none, HD, 1.0f, 1, y), ==, ERR_INVAL);
    CHECK_INT(kv_rope_apply(r, HD, 1.0f, 2, y), ==, ERR_INVAL);
}

static void test_pool_one_member(void)
{
    tr_rope_t tr;
    const kv_rope_t *r = tr_rope_init(&tr, HD, HD, 10000.0, 0.0, NULL);
    kvt_rng_t rng = {2};
    float k[HD], v[HD], ko[HD], vo[HD];
    random_vec(&rng, k);
    random_vec(&rng, v);
    kv_row_meta_t m = {.pos = 517.0f,
                       .mass = 3.0f,
                       .logbeta = -0.5f,
                       .first = 510,
                       .last = 520,
                       .kind = KV_KIND_GIST,
                       .level = 1},
                  o;
    CHECK_OK(kv_pool_rows(r, HD, 1, k, v, &m, ko, vo, &o));
    for (int d = 0; d < HD; d++) {
        CHECK_NEAR(ko[d], k[d], 1e-6);
        CHECK(vo[d] == v[d]);
    }
    CHECK(o.pos == 517.0f && o.mass == 3.0f && o.logbeta == -0.5f);
    CHECK(o.first == 510 && o.last == 520 && o.kind == KV_KIND_POOLED && o.level == 2);
}

static void test_pool_identical_vectors(void)
{
    float div[HD / 2];
    for (int i = 0; i < HD / 2; i++)
        div[i] = i < 8 ? 1.0f : 1.0f + (float)i / 4.0f; /* Llama 3 style: low freqs slowed */
    const rope_params_t ropes[] = {{.n_rot = HD, .base = 10000.0},
                                   {.n_rot = 32, .base = 500000.0, .scale = 2.0},
                                   {.n_rot = HD, .base = 500000.0, .freq_div = div}};
    tr_rope_t tr;
    kvt_rng_t rng = {3};
    for (int t = 0; t < 3; t++) {
        const rope_params_t *r = &ropes[t];
        float x[HD], k[5 * HD], v[5 * HD], ko[HD], vo[HD], want[HD];
        random_vec(&rng, x);
        kv_row_meta_t m[5], o;
        float pos[5] = {3.0f, 4.0f, 9.0f, 10.5f, 40.0f}, mass[5] = {1, 1, 2, 4.5f, 1};
        double mp = 0.0, ms = 0.0, vmean[HD] = {0};
        for (int j = 0; j < 5; j++) {
            rope_direct(r, pos[j], x, k + j * HD);
            for (int d = 0; d < HD; d++) {
                v[j * HD + d] = kvt_unit(&rng);
                vmean[d] += mass[j] * v[j * HD + d];
            }
            m[j] = (kv_row_meta_t){.pos = pos[j],
                                   .mass = mass[j],
                                   .logbeta = -(float)j,
                                   .first = (uint32_t)pos[j],
                                   .last = (uint32_t)pos[j] + 1,
                                   .level = (uint8_t)(j == 3)};
            mp += mass[j] * pos[j];
            ms += mass[j];
        }
        CHECK_OK(kv_pool_rows(rope_of(&tr, r), HD, 5, k, v, m, ko, vo, &o));
        rope_direct(r, mp / ms, x, want);
        for (int d = 0; d < HD; d++) {
            CHECK_NEAR(ko[d], want[d], 3e-6);
            CHECK_NEAR(vo[d], vmean[d] / ms, 1e-6);
        }
        CHECK_NEAR(o.pos, mp / ms, 1e-6);
        CHECK(o.mass == 9.5f && o.first == 3 && o.last == 41 && o.level == 2 && o.logbeta == 0.0f &&
              o.kind == KV_KIND_POOLED);
    }
    kv_row_meta_t bad = {.pos = 1.0f, .mass = 0.0f};
    float k[HD] = {0}, ko[HD], vo[HD];
    kv_row_meta_t o;
    const kv_rope_t *r0 = rope_of(&tr, &ropes[0]);
    CHECK_INT(kv_pool_rows(r0, HD, 1, k, k, &bad, ko, vo, &o), ==, ERR_INVAL);
    CHECK_INT(kv_pool_rows(r0, HD, 0, k, k, &bad, ko, vo, &o), ==, ERR_INVAL);
}

/* Read a span's rows from a lane, pool them, store the pooled row in their place. */
static void test_pooled_gist_in_store(void)
{
    kv_store_t *st = kvt_store(1, 1, HD, 8, DT_F32, 0);
    uint32_t sid;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 24, 0, 4, &e));
    tr_rope_t tr;
    const kv_rope_t *r = tr_rope_init(&tr, HD, HD, 10000.0, 0.0, NULL);
    float k[8 * HD], v[8 * HD], ko[HD], vo[HD];
    kv_row_meta_t m[8], o;
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 8, 8, m, k, v));
    CHECK_OK(kv_pool_rows(r, HD, 8, k, v, m, ko, vo, &o));
    CHECK(o.pos == 11.5f && o.mass == 8.0f && o.first == 8 && o.last == 15 && o.level == 1);
    uint32_t n[1] = {1};
    const float *kp[1] = {ko}, *vp[1] = {vo};
    const kv_row_meta_t *mp[1] = {&o};
    kv_rows_t rows = {.n = n, .k = kp, .v = vp, .meta = mp};
    CHECK_OK(kv_span_replace(st, sid, (float)o.first, (float)o.last, &rows, &e));
    uint32_t nr;
    CHECK_OK(kv_lane_size(st, sid, 0, 0, &nr, NULL));
    CHECK_INT(nr, ==, 17);
    kv_row_meta_t back;
    float kb[HD];
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 8, 1, &back, kb, NULL));
    CHECK(back.pos == 11.5f && back.mass == 8.0f && back.kind == KV_KIND_POOLED);
    CHECK(memcmp(kb, ko, sizeof kb) == 0);
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);
}

int main(void)
{
    RUN(test_rope_apply);
    RUN(test_pool_one_member);
    RUN(test_pool_identical_vectors);
    RUN(test_pooled_gist_in_store);
    return check_done();
}
