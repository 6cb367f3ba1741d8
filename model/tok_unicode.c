/* model/tok_unicode.c — UTF-8 decoding and code point classes for the tokenizer. */
#include "model/tok_unicode.h"

size_t tok_utf8_next(const char *str, size_t n, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        *cp = TOK_CPT_INVALID;
        return 1;
    }
    if (n < len) {
        *cp = TOK_CPT_INVALID;
        return 1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = TOK_CPT_INVALID;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = TOK_CPT_INVALID;
        return 1;
    }
    *cp = v;
    return len;
}

size_t tok_utf8_put(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

uint32_t tok_cpt_flags(uint32_t cp)
{
    /* ASCII is most text: answer it without the search. */
    if (cp < 0x80) {
        if (cp >= 'a' && cp <= 'z')
            return TOK_CPT_LETTER;
        if (cp >= 'A' && cp <= 'Z')
            return TOK_CPT_LETTER;
        if (cp >= '0' && cp <= '9')
            return TOK_CPT_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D))
            return TOK_CPT_SPACE;
        return 0;
    }
    size_t lo = 0, hi = tok_cpt_n_ranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp > tok_cpt_ranges[mid].last)
            lo = mid + 1;
        else if (cp < tok_cpt_ranges[mid].first)
            hi = mid;
        else
            return tok_cpt_ranges[mid].flags;
    }
    return 0;
}
