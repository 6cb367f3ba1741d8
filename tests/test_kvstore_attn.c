/*
 * Attention over a kvstore lane, read the way the forward pass reads it: chunk by chunk,
 * each in its own payload type (f32, f16, q8_0), with the per-row log-mass bias and the
 * attention accumulators. Compared with a naive attention (double precision, over the rows
 * kv_lane_read dequantises, bias taken from each row's mass), for a lane holding raw rows,
 * gists (mass > 1) and demoted q8_0 rows.
 *
 * chunk_attention() stands in for the model's attention kernel, which this test does not
 * link; it follows model/kv_view.h's contract (scores scaled by 1/sqrt(head_dim), plus bias,
 * softmax over every row; attn_acc[r] += the row's probability summed over the query heads
 * of the kv-head), so the model's kernel can replace it here unchanged.
 */
#include <math.h>
#include <string.h>

#include "tests/test_kvstore_util.h"

#define HD 64
#define NQ 3 /* query heads sharing the kv-head (GQA) */

/* One row of a chunk as f32. */
static void chunk_row(uint32_t type, const void *base, uint32_t r, float *out)
{
    if (type == DT_F32) {
        memcpy(out, (const float *)base + (size_t)r * HD, HD * sizeof(float));
    } else if (type == DT_F16) {
        const uint16_t *h = (const uint16_t *)base + (size_t)r * HD;
        for (int d = 0; d < HD; d++)
            out[d] = dt_f16_to_f32(h[d]);
    } else {
        const block_q8_0 *b = (const block_q8_0 *)base + (size_t)r * (HD / QK8_0);
        for (int g = 0; g < HD / QK8_0; g++)
            for (int j = 0; j < QK8_0; j++)
                out[g * QK8_0 + j] = dt_f16_to_f32(b[g].d) * (float)b[g].qs[j];
    }
}

/* out[h][d] = attention of query h over the chunks (two passes: max, then sums). */
static void chunk_attention(const kv_chunk_t *ch, uint32_t nc, const float *q, float *out)
{
    float scale = 1.0f / sqrtf((float)HD), row[HD];
    for (int h = 0; h < NQ; h++) {
        const float *qh = q + h * HD;
        float mx = -INFINITY, sum = 0.0f, acc[HD] = {0};
        for (uint32_t c = 0; c < nc; c++)
            for (uint32_t r = 0; r < ch[c].n; r++) {
                chunk_row(ch[c].type, ch[c].k, r, row);
                float s = 0.0f;
                for (int d = 0; d < HD; d++)
                    s += qh[d] * row[d];
                s = s * scale + (ch[c].bias ? ch[c].bias[r] : 0.0f);
                mx = fmaxf(mx, s);
            }
        for (int pass = 0; pass < 2; pass++)
            for (uint32_t c = 0; c < nc; c++)
                for (uint32_t r = 0; r < ch[c].n; r++) {
                    chunk_row(ch[c].type, ch[c].k, r, row);
                    float s = 0.0f;
                    for (int d = 0; d < HD; d++)
                        s += qh[d] * row[d];
                    float p = expf(s * scale + (ch[c].bias ? ch[c].bias[r] : 0.0f) - mx);
                    if (pass == 0) {
                        sum += p;
                        continue;
                    }
                    p /= sum;
                    chunk_row(ch[c].type, ch[c].v, r, row);
                    for (int d = 0; d < HD; d++)
                        acc[d] += p * row[d];
                    if (ch[c].attn_acc)
                        ch[c].attn_acc[r] += p;
                }
        memcpy(out + h * HD, acc, sizeof acc);
    }
}

/* The same in double over rows and masses read through kv_lane_read; probs[r] summed over
 * the query heads. */
static void naive_attention(uint32_t n, const float *k, const float *v, const kv_row_meta_t *m,
                            const float *q, double *out, double *probs)
{
    double *s = malloc(sizeof *s * n);
    memset(probs, 0, sizeof *probs * n);
    for (int h = 0; h < NQ; h++) {
        double mx = -INFINITY, sum = 0.0;
        for (uint32_t r = 0; r < n; r++) {
            double dot = 0.0;
            for (int d = 0; d < HD; d++)
                dot += (double)q[h * HD + d] * k[r * HD + d];
            s[r] = dot / sqrt((double)HD) + log((double)m[r].mass);
            mx = fmax(mx, s[r]);
        }
        for (uint32_t r = 0; r < n; r++)
            sum += exp(s[r] - mx);
        for (int d = 0; d < HD; d++)
            out[h * HD + d] = 0.0;
        for (uint32_t r = 0; r < n; r++) {
            double p = exp(s[r] - mx) / sum;
            probs[r] += p;
            for (int d = 0; d < HD; d++)
                out[h * HD + d] += p * v[r * HD + d];
        }
    }
    free(s);
}

/* One lane with raw f16 rows, gists of mass > 1, and q8_0 rows in several chunks. */
static void build_lane(kv_store_t *st, uint32_t sid)
{
    err_info_t e;
    CHECK_OK(kvt_append(st, sid, 150, 0, 77, &e));
    float gk[3 * HD], gv[3 * HD];
    kv_row_meta_t gm[3];
    for (int j = 0; j < 3; j++) {
        for (int d = 0; d < HD; d++) {
            gk[j * HD + d] = 2.0f * kvt_val(5, j, 0, d);
            gv[j * HD + d] = kvt_val(6, j, 0, d);
        }
        gm[j] = (kv_row_meta_t){.pos = 20.0f + 7.0f * (float)j,
                                .mass = 4.0f + 6.0f * (float)j,
                                .first = 20,
                                .last = 40,
                                .kind = KV_KIND_GIST,
                                .level = 1};
    }
    uint32_t n[1] = {3};
    const float *kp[1] = {gk}, *vp[1] = {gv};
    const kv_row_meta_t *mp[1] = {gm};
    kv_rows_t rows = {.n = n, .k = kp, .v = vp, .meta = mp};
    CHECK_OK(kv_span_replace(st, sid, 20.0f, 40.0f, &rows, &e));
    CHECK_OK(kv_span_demote(st, sid, 0.0f, 15.0f, &e));
    CHECK_OK(kv_span_demote(st, sid, 60.0f, 99.0f, &e));
    uint32_t ev[] = {1, 3, 50, 51, 52};
    CHECK_OK(kv_lane_evict(st, sid, 0, 0, ev, 5, &e));
    KVT_CHECK_STORE(st);
}

static void test_chunks_match_naive(void)
{
    kv_store_t *st = kvt_store(1, 1, HD, 16, DT_F16, 0);
    kv_session_config_t cfg = {.attn_acc = true};
    uint32_t sid;
    CHECK_OK(kv_session_create(st, &cfg, &sid, NULL));
    build_lane(st, sid);
    kv_chunk_t ch[64];
    uint32_t nc, rows;
    CHECK_OK(kv_lane_view(st, sid, 0, 0, ch, 64, &nc));
    CHECK_OK(kv_lane_size(st, sid, 0, 0, &rows, NULL));
    int types[3] = {0};
    bool biased = false;
    for (uint32_t c = 0; c < nc; c++) {
        types[ch[c].type == DT_F32 ? 0 : ch[c].type == DT_F16 ? 1 : 2]++;
        for (uint32_t r = 0; r < ch[c].n; r++)
            biased |= ch[c].bias[r] != 0.0f;
    }
    CHECK(types[1] > 0 && types[2] > 0 && biased && nc >= 5);

    float *k = malloc(sizeof(float) * rows * HD), *v = malloc(sizeof(float) * rows * HD);
    kv_row_meta_t *m = malloc(sizeof *m * rows);
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 0, rows, m, k, v));
    double *want = malloc(sizeof(double) * NQ * HD), *probs = malloc(sizeof(double) * rows);
    float q[NQ * HD], got[NQ * HD];
    kvt_rng_t rng = {42};
    for (int trial = 0; trial < 4; trial++) {
        for (int i = 0; i < NQ * HD; i++)
            q[i] = 1.5f * kvt_unit(&rng);
        for (uint32_t c = 0; c < nc; c++)
            memset(ch[c].attn_acc, 0, sizeof(float) * ch[c].n);
        chunk_attention(ch, nc, q, got);
        naive_attention(rows, k, v, m, q, want, probs);
        for (int i = 0; i < NQ * HD; i++)
            CHECK_NEAR(got[i], want[i], 2e-5 + 2e-5 * fabs(want[i]));
        uint32_t r = 0;
        double total = 0.0;
        for (uint32_t c = 0; c < nc; c++)
            for (uint32_t i = 0; i < ch[c].n; i++, r++) {
                CHECK_NEAR(ch[c].attn_acc[i], probs[r], 1e-5);
                total += ch[c].attn_acc[i];
            }
        CHECK_NEAR(total, NQ, 1e-4);
    }
    /* the accumulators the forward pass wrote are what kv_lane_read reports */
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 0, rows, m, NULL, NULL));
    CHECK(m[rows - 1].attn == ch[nc - 1].attn_acc[ch[nc - 1].n - 1]);
    free(k);
    free(v);
    free(m);
    free(want);
    free(probs);
    kv_store_destroy(&st);
}

/* A row of mass m weighs as m identical raw rows (token merging's proportional attention). */
static void test_mass_is_multiplicity(void)
{
    kv_store_t *st = kvt_store(1, 1, HD, 8, DT_F32, 0);
    uint32_t a, b;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &a, NULL));
    CHECK_OK(kv_session_create(st, NULL, &b, NULL));
    CHECK_OK(kvt_append(st, a, 30, 0, 1, &e));
    CHECK_OK(kvt_append(st, b, 30, 0, 1, &e));
    /* in a: rows 10..14 become 5 copies of one vector; in b: one row of mass 5 */
    float x[5 * HD], y[5 * HD];
    kv_row_meta_t raw[5], gist = {.pos = 12.0f,
                                  .mass = 5.0f,
                                  .first = 10,
                                  .last = 14,
                                  .kind = KV_KIND_POOLED,
                                  .level = 1};
    for (int j = 0; j < 5; j++) {
        for (int d = 0; d < HD; d++) {
            x[j * HD + d] = kvt_val(9, 0, 0, d);
            y[j * HD + d] = kvt_val(10, 0, 0, d);
        }
        raw[j] =
            (kv_row_meta_t){.pos = (float)(10 + j), .mass = 1.0f, .first = 10 + j, .last = 10 + j};
    }
    uint32_t n5[1] = {5}, n1[1] = {1};
    const float *kp[1] = {x}, *vp[1] = {y};
    const kv_row_meta_t *mp[1] = {raw};
    kv_rows_t ra = {.n = n5, .k = kp, .v = vp, .meta = mp};
    CHECK_OK(kv_span_replace(st, a, 10.0f, 14.0f, &ra, &e));
    mp[0] = &gist;
    kv_rows_t rb = {.n = n1, .k = kp, .v = vp, .meta = mp};
    CHECK_OK(kv_span_replace(st, b, 10.0f, 14.0f, &rb, &e));
    kv_chunk_t ca[8], cb[8];
    uint32_t na, nb;
    CHECK_OK(kv_lane_view(st, a, 0, 0, ca, 8, &na));
    CHECK_OK(kv_lane_view(st, b, 0, 0, cb, 8, &nb));
    float q[NQ * HD], oa[NQ * HD], ob[NQ * HD];
    kvt_rng_t rng = {7};
    for (int i = 0; i < NQ * HD; i++)
        q[i] = 2.0f * kvt_unit(&rng);
    chunk_attention(ca, na, q, oa);
    chunk_attention(cb, nb, q, ob);
    for (int i = 0; i < NQ * HD; i++)
        CHECK_NEAR(oa[i], ob[i], 1e-5 + 1e-5 * fabsf(oa[i]));
    kv_store_destroy(&st);
}

int main(void)
{
    RUN(test_chunks_match_naive);
    RUN(test_mass_is_multiplicity);
    return check_done();
}
