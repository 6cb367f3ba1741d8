/*
 * runtime/lexical.h — Okapi BM25 of a query's tokens against documents of tokens: the lexical
 * half of re-expansion's choice (runtime/expand.c), where the query is the turn just appended
 * and the documents are the compressed spans' transcript tokens.
 *
 * The query is a set: each distinct token counts once, however often the turn repeats it. A
 * document's score is the sum, over the query's tokens it holds, of
 *
 *     idf(t) * f (k1 + 1) / (f + k1 (1 - b + b |d| / avgdl))
 *
 * with f the token's count in the document, |d| the document's length, avgdl the mean
 * length, k1 = 1.2, b = 0.75, and idf(t) = ln((N - n(t) + 0.5) / (n(t) + 0.5)) over the N
 * documents, n(t) of which hold t, counted only where it is positive (Robertson and
 * Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009). Rare tokens
 * weigh more, a token that half the documents hold or more weighs nothing (a chat template's
 * markers, "the"), and a long document gains little from holding many common ones, so a
 * short sentence that holds the turn's rare words ranks above a long span that holds its
 * common ones.
 *
 * Pure: caller memory only, any thread.
 */
#ifndef GISTD_RUNTIME_LEXICAL_H
#define GISTD_RUNTIME_LEXICAL_H

#include <stdint.h>

#include "common/err.h"

#define RT_BM25_K1 1.2
#define RT_BM25_B  0.75

/* score[i] = BM25 of document i, the tokens tok[off[i]] .. tok[off[i + 1] - 1], for the
 * distinct tokens of query[0 .. nq) (the caller leaves out tokens that must not match);
 * n_doc >= 1, off[0] = 0, off non-decreasing. Every score is 0 when no document holds a
 * query token. 0, or ERR_NOMEM with score unchanged. */
int rt_bm25(const uint32_t *query, uint32_t nq, const uint32_t *tok, const uint32_t *off,
            uint32_t n_doc, double *score, err_info_t *e);

#endif
