/* runtime/lexical.c — Okapi BM25 over token documents (runtime/lexical.h). */
#include "runtime/lexical.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_u32(const void *x, const void *y)
{
    const uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

/* Counts each distinct query token (q[0 .. nu), sorted) in document d into f[], and the
 * indices of those it holds into hit[0 .. return value). */
static uint32_t count_doc(const uint32_t *q, uint32_t nu, const uint32_t *tok, uint32_t n,
                          uint32_t *f, uint32_t *hit)
{
    uint32_t nh = 0;
    for (uint32_t j = 0; j < n; j++) {
        const uint32_t *u = bsearch(&tok[j], q, nu, sizeof *q, cmp_u32);
        if (u && f[u - q]++ == 0)
            hit[nh++] = (uint32_t)(u - q);
    }
    return nh;
}

int rt_bm25(const uint32_t *query, uint32_t nq, const uint32_t *tok, const uint32_t *off,
            uint32_t n_doc, double *score, err_info_t *e)
{
    uint32_t *q = malloc(sizeof *q * (nq ? nq : 1));
    uint32_t *f = calloc(nq ? nq : 1, sizeof *f), *df = calloc(nq ? nq : 1, sizeof *df);
    uint32_t *hit = malloc(sizeof *hit * (nq ? nq : 1));
    if (!q || !f || !df || !hit) {
        free(q);
        free(f);
        free(df);
        free(hit);
        return err_set(e, ERR_NOMEM, "out of memory scoring %u spans against %u tokens", n_doc, nq);
    }
    if (nq)
        memcpy(q, query, sizeof *q * nq);
    qsort(q, nq, sizeof *q, cmp_u32);
    uint32_t nu = 0;
    for (uint32_t i = 0; i < nq; i++)
        if (nu == 0 || q[i] != q[nu - 1])
            q[nu++] = q[i];
    /* document frequencies */
    for (uint32_t d = 0; d < n_doc; d++) {
        const uint32_t nh = count_doc(q, nu, tok + off[d], off[d + 1] - off[d], f, hit);
        for (uint32_t h = 0; h < nh; h++) {
            df[hit[h]]++;
            f[hit[h]] = 0;
        }
    }
    const double avgdl = (double)off[n_doc] / n_doc;
    for (uint32_t d = 0; d < n_doc; d++) {
        const uint32_t len = off[d + 1] - off[d];
        const uint32_t nh = count_doc(q, nu, tok + off[d], len, f, hit);
        const double norm =
            RT_BM25_K1 * (1.0 - RT_BM25_B + (avgdl > 0 ? RT_BM25_B * len / avgdl : 0.0));
        double s = 0.0;
        for (uint32_t h = 0; h < nh; h++) {
            const uint32_t u = hit[h];
            const double idf = log((n_doc - df[u] + 0.5) / (df[u] + 0.5));
            if (idf > 0.0) /* a token in half the documents or more is no evidence */
                s += idf * f[u] * (RT_BM25_K1 + 1.0) / (f[u] + norm);
            f[u] = 0;
        }
        score[d] = s;
    }
    free(q);
    free(f);
    free(df);
    free(hit);
    return 0;
}
