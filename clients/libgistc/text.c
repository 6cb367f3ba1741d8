/*
 * clients/libgistc/text.c — generated text made fit to show (gistctl) or put in JSON
 * (gistd-http): whole UTF-8 characters only, and nothing of a stop string.
 *
 * Tokens are pieces of UTF-8 that need not be whole characters, and a stop string may come in
 * over several tokens. A streamed piece is held back while it could still be the start of a
 * stop string or of a character; what is passed on never changes afterwards, so the pieces
 * join to exactly the text a non-streamed reply gets.
 */
#include <stdlib.h>
#include <string.h>

#include "clients/libgistc/gistc.h"

/* The character at s (avail bytes there): its length (1 to 4) when it is whole and
 * well-formed; 0 when it may be, but avail is too short to tell; -k when it is not, k being
 * the bytes one U+FFFD stands for (the maximal subpart, as Unicode and WHATWG decoders do). */
static int utf8_scan(const uint8_t *s, size_t avail)
{
    const uint8_t b = s[0];
    int len;
    uint8_t lo = 0x80, hi = 0xbf; /* the second byte's range */
    if (b < 0x80)
        return 1;
    if (b < 0xc2)
        return -1;
    if (b < 0xe0) {
        len = 2;
    } else if (b < 0xf0) {
        len = 3;
        if (b == 0xe0)
            lo = 0xa0; /* not overlong */
        if (b == 0xed)
            hi = 0x9f; /* no surrogates */
    } else if (b < 0xf5) {
        len = 4;
        if (b == 0xf0)
            lo = 0x90;
        if (b == 0xf4)
            hi = 0x8f; /* up to U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= avail)
            return 0;
        if (i == 1 ? s[i] < lo || s[i] > hi : (s[i] & 0xc0) != 0x80)
            return -i;
    }
    return len;
}

char *gc_utf8_clean(const char *raw, size_t len, size_t *out_len)
{
    char *out = malloc(len * 3 + 1); /* each bad byte becomes at most 3 */
    if (!out)
        return NULL;
    const uint8_t *s = (const uint8_t *)raw;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        int l = utf8_scan(s + i, len - i);
        if (l > 0) {
            memcpy(out + o, s + i, (size_t)l);
            o += (size_t)l;
            i += (size_t)l;
        } else {
            /* an unfinished character at the very end stands for one U+FFFD too */
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            if (l == 0) {
                i++;
                while (i < len && (s[i] & 0xc0) == 0x80)
                    i++;
            } else {
                i += (size_t)-l;
            }
        }
    }
    out[o] = 0;
    *out_len = o;
    return out;
}

void gc_text_init(gc_text_t *t, const char *const *stop, unsigned n_stop)
{
    memset(t, 0, sizeof *t);
    t->stop = stop;
    t->n_stop = n_stop;
}

void gc_text_fini(gc_text_t *t)
{
    free(t->raw);
    memset(t, 0, sizeof *t);
}

/* Where the first of the stop strings (and extra, when not NULL) starts in raw[len], or len. */
static size_t stop_at(const char *const *stop, unsigned n_stop, const char *extra, size_t extra_len,
                      const char *raw, size_t len)
{
    size_t end = len;
    for (unsigned i = 0; i <= n_stop; i++) {
        const char *s = i < n_stop ? stop[i] : extra;
        const size_t sl = i < n_stop ? strlen(stop[i]) : extra_len;
        if (!s || !sl)
            continue;
        const char *m = memmem(raw, len, s, sl);
        if (m && (size_t)(m - raw) < end)
            end = (size_t)(m - raw);
    }
    return end;
}

/* Moves end back to the start of a character (or of the bad bytes one U+FFFD stands for)
 * that would straddle it. */
static size_t char_boundary(const char *raw, size_t len, size_t end)
{
    const uint8_t *s = (const uint8_t *)raw;
    for (size_t k = 1; k <= 3 && k <= end; k++) {
        const uint8_t b = s[end - k];
        if (b < 0xc2 || b >= 0xf5)
            continue; /* ASCII, a continuation byte or never a lead */
        const size_t want = b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
        const int l = utf8_scan(s + end - k, len - (end - k));
        if (k < want && (l == 0 || (size_t)(l > 0 ? l : -l) > k))
            return end - k; /* a character, or the bytes one U+FFFD stands for, goes on */
        break;
    }
    return end;
}

int gc_text_push(gc_text_t *t, const char *piece, size_t len, char **out, size_t *out_len)
{
    if (t->len + len + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->len + len + 1)
            cap *= 2;
        char *p = realloc(t->raw, cap);
        if (!p)
            return ERR_NOMEM;
        t->raw = p;
        t->cap = cap;
    }
    memcpy(t->raw + t->len, piece, len);
    t->len += len;
    t->raw[t->len] = 0;

    /* up to the first stop string, and short of a tail that may still grow into one (which
     * would then come first) */
    size_t ready = stop_at(t->stop, t->n_stop, NULL, 0, t->raw, t->len);
    for (unsigned i = 0; i < t->n_stop; i++) {
        const size_t sl = strlen(t->stop[i]);
        for (size_t k = sl - 1 < t->len ? sl - 1 : t->len; k > 0; k--)
            if (!memcmp(t->raw + t->len - k, t->stop[i], k)) {
                if (t->len - k < ready)
                    ready = t->len - k;
                break;
            }
    }
    ready = char_boundary(t->raw, t->len, ready);
    if (ready < t->sent)
        ready = t->sent;
    *out = gc_utf8_clean(t->raw + t->sent, ready - t->sent, out_len);
    if (!*out)
        return ERR_NOMEM;
    t->sent = ready;
    return 0;
}

int gc_text_final(const gc_text_t *t, const char *raw, size_t len, const char *stop,
                  size_t stop_len, char **out, size_t *out_len)
{
    size_t end = stop_at(t ? t->stop : NULL, t ? t->n_stop : 0, stop, stop_len, raw, len);
    size_t from = t ? t->sent : 0;
    if (from > len)
        from = len;
    if (end < from)
        end = from; /* already shown: a stop string the gateway did not know of */
    *out = gc_utf8_clean(raw + from, end - from, out_len);
    return *out ? 0 : ERR_NOMEM;
}
