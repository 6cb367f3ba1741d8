/*
 * Okapi BM25 over token documents (runtime/lexical.h): a case worked by hand, random
 * documents against the formula written out naively (every count a linear scan), the query
 * read as a set, and the ranking re-expansion relies on: a short sentence holding the turn's
 * rare token above a long span holding its common ones.
 */
#include <math.h>
#include <stdlib.h>

#include "runtime/lexical.h"
#include "tests/check.h"

/* The formula of runtime/lexical.h, one scan per count. */
static double naive(const uint32_t *q, uint32_t nq, const uint32_t *tok, const uint32_t *off,
                    uint32_t n_doc, uint32_t d)
{
    const double avgdl = (double)off[n_doc] / n_doc;
    const uint32_t len = off[d + 1] - off[d];
    double s = 0.0;
    for (uint32_t i = 0; i < nq; i++) {
        bool seen = false; /* the query is a set: count each token once */
        for (uint32_t j = 0; j < i; j++)
            seen = seen || q[j] == q[i];
        if (seen)
            continue;
        uint32_t f = 0, n = 0;
        for (uint32_t j = off[d]; j < off[d + 1]; j++)
            f += tok[j] == q[i];
        for (uint32_t k = 0; k < n_doc; k++) {
            bool has = false;
            for (uint32_t j = off[k]; j < off[k + 1]; j++)
                has = has || tok[j] == q[i];
            n += has;
        }
        if (!f)
            continue;
        const double idf = log((n_doc - n + 0.5) / (n + 0.5));
        const double norm = avgdl > 0 ? 1.0 - 0.75 + 0.75 * len / avgdl : 0.25;
        if (idf > 0)
            s += idf * f * 2.2 / (f + 1.2 * norm);
    }
    return s;
}

static void test_by_hand(void)
{
    /* documents {1 2}, {3} and {4 2}; query {1}: N 3, n(1) 1, idf ln(2.5 / 1.5), avgdl 5/3,
     * and document 0 (length 2, f 1) scores idf * 2.2 / (1 + 1.2 (0.25 + 0.75 * 2 / (5/3)))
     * = idf * 2.2 / 2.38 */
    const uint32_t tok[] = {1, 2, 3, 4, 2}, off[] = {0, 2, 3, 5}, q[] = {1, 1};
    double sc[3];
    err_info_t e;
    err_clear(&e);
    CHECK_OK(rt_bm25(q, 2, tok, off, 3, sc, &e));
    CHECK_NEAR(sc[0], log(2.5 / 1.5) * 2.2 / 2.38, 1e-12);
    CHECK(sc[1] == 0.0 && sc[2] == 0.0);
    /* token 2 is in two of the three: no evidence, whatever the document */
    const uint32_t q2[] = {2};
    CHECK_OK(rt_bm25(q2, 1, tok, off, 3, sc, &e));
    CHECK(sc[0] == 0.0 && sc[1] == 0.0 && sc[2] == 0.0);
    /* no query tokens, or none held: every score 0 */
    CHECK_OK(rt_bm25(q, 0, tok, off, 3, sc, &e));
    CHECK(sc[0] == 0.0 && sc[1] == 0.0 && sc[2] == 0.0);
    const uint32_t q9[] = {9};
    CHECK_OK(rt_bm25(q9, 1, tok, off, 3, sc, &e));
    CHECK(sc[0] == 0.0 && sc[1] == 0.0 && sc[2] == 0.0);
}

static void test_against_the_formula(void)
{
    srand(7);
    err_info_t e;
    err_clear(&e);
    for (int trial = 0; trial < 200; trial++) {
        const uint32_t n_doc = 1 + (uint32_t)rand() % 12, vocab = 2 + (uint32_t)rand() % 40;
        uint32_t off[13];
        off[0] = 0;
        for (uint32_t d = 0; d < n_doc; d++) /* some documents empty */
            off[d + 1] = off[d] + (rand() % 5 == 0 ? 0 : (uint32_t)rand() % 30);
        uint32_t *tok = malloc(sizeof *tok * (off[n_doc] + 1)), q[24];
        for (uint32_t j = 0; j < off[n_doc]; j++)
            tok[j] = (uint32_t)rand() % vocab;
        const uint32_t nq = (uint32_t)rand() % 24;
        for (uint32_t i = 0; i < nq; i++) /* repeats, and tokens no document holds */
            q[i] = (uint32_t)rand() % (vocab + 3);
        double sc[12];
        CHECK_OK(rt_bm25(q, nq, tok, off, n_doc, sc, &e));
        for (uint32_t d = 0; d < n_doc; d++) {
            const double want = naive(q, nq, tok, off, n_doc, d);
            CHECK_MSG(fabs(sc[d] - want) <= 1e-12 * (1.0 + want),
                      "trial %d doc %u: %.17g, not %.17g", trial, d, sc[d], want);
        }
        free(tok);
    }
}

static void test_rare_token_in_a_short_sentence_ranks_first(void)
{
    /* token 100 is rare (one document); 1..5 are common words every span holds */
    uint32_t tok[400], off[6], n = 0;
    off[0] = 0;
    for (uint32_t d = 0; d < 5; d++) {
        const uint32_t len = d == 2 ? 8 : 60;
        for (uint32_t j = 0; j < len; j++)
            tok[n++] = 1 + j % 5;
        if (d == 2)
            tok[n - 1] = 100;
        off[d + 1] = n;
    }
    const uint32_t q[] = {1, 2, 3, 4, 5, 100};
    double sc[5];
    err_info_t e;
    err_clear(&e);
    CHECK_OK(rt_bm25(q, 6, tok, off, 5, sc, &e));
    for (uint32_t d = 0; d < 5; d++)
        if (d != 2)
            CHECK_MSG(sc[2] > 2.0 * sc[d], "the short sentence scored %g, document %u %g", sc[2], d,
                      sc[d]);
}

int main(void)
{
    RUN(test_by_hand);
    RUN(test_against_the_formula);
    RUN(test_rare_token_in_a_short_sentence_ranks_first);
    return check_done();
}
