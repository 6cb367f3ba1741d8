/*
 * tests/test_gistc_text.c — the clients' generated text (clients/libgistc/text.c): bytes that
 * are not UTF-8 become U+FFFD as the Unicode Standard's own examples say (one per maximal
 * subpart, Table 3-8 and the examples beside it), and a generation streamed in random pieces,
 * with stop strings, joins to exactly the final text, which a naive reference cuts at the
 * first stop string.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/libgistc/gistc.h"
#include "tests/check.h"

static size_t unhex(const char *hex, char *out)
{
    size_t n = 0;
    for (const char *p = hex; p[0] && p[1]; p += 2) {
        unsigned v;
        sscanf(p, "%2x", &v);
        out[n++] = (char)v;
    }
    return n;
}

/* The expected text: 'R' stands for U+FFFD, anything else for itself. */
static void expect_clean(const char *hex, const char *want)
{
    char raw[64], exp[256];
    size_t n = unhex(hex, raw), e = 0;
    for (const char *w = want; *w; w++) {
        if (*w == 'R') {
            memcpy(exp + e, "\xef\xbf\xbd", 3);
            e += 3;
        } else {
            exp[e++] = *w;
        }
    }
    size_t len = 0;
    char *got = gc_utf8_clean(raw, n, &len);
    CHECK_MSG(got && len == e && !memcmp(got, exp, e), "%s: got %zu bytes, want %zu", hex, len, e);
    free(got);
}

static void test_unicode_replacement_examples(void)
{
    expect_clean("61F18080E180C262806380BF64", "aRRRbRcRRd");
    expect_clean("C0AFE080BFF0818241", "RRRRRRRRA"); /* non-shortest forms */
    expect_clean("EDA080EDBFBFEDAF41", "RRRRRRRRA"); /* surrogates */
    expect_clean("F4919293FF4180BF42", "RRRRRARRB"); /* past U+10FFFF, never a lead */
    expect_clean("E180E2F09192F1BF41", "RRRRA");     /* truncated sequences */
    expect_clean("E282AC24C2A2F09F9880", "\xe2\x82\xac$\xc2\xa2\xf0\x9f\x98\x80");
    expect_clean("F09F98", "R"); /* an unfinished character at the end */
}

/* Random text from pieces that are ASCII, whole characters, broken ones and stray bytes. */
static size_t random_text(unsigned *seed, char *out, size_t cap)
{
    static const char *const parts[] = {
        "a",        "b",    " ",    "ab",   "\n", "\xc3\xa9",    "\xe2\x82\xac", "\xf0\x9f\x98\x80",
        "\xe2\x82", "\x80", "\xff", "\xc3", "ba", "\xed\xa0\x80"};
    size_t n = 0;
    const size_t want = 1 + (size_t)rand_r(seed) % 60;
    while (n < want && n + 4 < cap) {
        const char *p = parts[(size_t)rand_r(seed) % (sizeof parts / sizeof parts[0])];
        memcpy(out + n, p, strlen(p));
        n += strlen(p);
    }
    return n;
}

static void test_streamed_pieces_join_to_the_final_text(void)
{
    unsigned seed = 1234;
    for (int round = 0; round < 3000; round++) {
        char raw[512];
        const size_t n = random_text(&seed, raw, sizeof raw);
        /* stops: substrings of the text itself (so they do occur) or made up ones */
        char stop_buf[3][16];
        const char *stop[3];
        unsigned n_stop = (unsigned)rand_r(&seed) % 4;
        for (unsigned i = 0; i < n_stop; i++) {
            size_t from = (size_t)rand_r(&seed) % n, len = 1 + (size_t)rand_r(&seed) % 4;
            if (rand_r(&seed) % 3 == 0 || from + len > n)
                snprintf(stop_buf[i], sizeof stop_buf[i], "ab\xc3\xa9%u", i);
            else
                snprintf(stop_buf[i], sizeof stop_buf[i], "%.*s", (int)len, raw + from);
            stop[i] = stop_buf[i];
            if (!stop_buf[i][0])
                snprintf(stop_buf[i], sizeof stop_buf[i], "zz");
        }
        /* the reference: cut at the first occurrence of any stop, then clean */
        size_t cut = n;
        for (unsigned i = 0; i < n_stop; i++) {
            const char *m = memmem(raw, n, stop[i], strlen(stop[i]));
            if (m && (size_t)(m - raw) < cut)
                cut = (size_t)(m - raw);
        }
        size_t want_len;
        char *want = gc_utf8_clean(raw, cut, &want_len);

        /* the stream: random pieces, as a generation would bring them */
        gc_text_t t;
        gc_text_init(&t, stop, n_stop);
        char got[4096];
        size_t got_len = 0;
        for (size_t at = 0; at < n;) {
            size_t k = 1 + (size_t)rand_r(&seed) % 5;
            k = k < n - at ? k : n - at;
            char *out;
            size_t out_len;
            CHECK(gc_text_push(&t, raw + at, k, &out, &out_len) == 0);
            memcpy(got + got_len, out, out_len);
            got_len += out_len;
            free(out);
            at += k; /* past a stop string too: nothing after it may show */
        }
        char *rest;
        size_t rest_len;
        CHECK(gc_text_final(&t, t.raw, t.len, NULL, 0, &rest, &rest_len) == 0);
        memcpy(got + got_len, rest, rest_len);
        got_len += rest_len;
        CHECK_MSG(got_len == want_len && !memcmp(got, want, want_len),
                  "round %d: streamed %zu bytes, the final text is %zu", round, got_len, want_len);
        /* the non-streamed reply gets the same text from the whole generation */
        char *whole;
        size_t whole_len;
        gc_text_t none;
        gc_text_init(&none, stop, n_stop);
        CHECK(gc_text_final(&none, t.raw, t.len, NULL, 0, &whole, &whole_len) == 0);
        CHECK(whole_len == want_len && !memcmp(whole, want, want_len));
        free(whole);
        free(rest);
        free(want);
        gc_text_fini(&t);
        if (check_failed())
            break;
    }
}

int main(void)
{
    RUN(test_unicode_replacement_examples);
    RUN(test_streamed_pieces_join_to_the_final_text);
    return check_done();
}
