/* policy/segment.c — sentence and thought boundaries from token text (policy/segment.h). */
#include "policy/segment.h"

#include <string.h>

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static bool all_space(const char *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!is_space(p[i]))
            return false;
    return n > 0;
}

static bool all_newlines(const char *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (p[i] != '\n' && p[i] != '\r')
            return false;
    return n > 0;
}

static uint32_t count_nl(const char *p, uint32_t n)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        k += p[i] == '\n';
    return k;
}

/* Length of p without the closing quotes and brackets at its end (", ', ), ], and the
 * UTF-8 right quotes and guillemet). */
static uint32_t strip_closers(const char *p, uint32_t n)
{
    for (;;) {
        if (n >= 1 && (p[n - 1] == '"' || p[n - 1] == '\'' || p[n - 1] == ')' || p[n - 1] == ']')) {
            n--;
        } else if (n >= 3 && (unsigned char)p[n - 3] == 0xE2 && (unsigned char)p[n - 2] == 0x80 &&
                   ((unsigned char)p[n - 1] == 0x9D || (unsigned char)p[n - 1] == 0x99)) {
            n -= 3;
        } else if (n >= 2 && (unsigned char)p[n - 2] == 0xC2 && (unsigned char)p[n - 1] == 0xBB) {
            n -= 2;
        } else {
            return n;
        }
    }
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Whether the word ending right before the final '.' of text[0..n) is an abbreviation or an
 * initial: "Mr.", "Dr.", "e.g.", "J.". */
static bool abbreviation(const char *text, uint32_t n)
{
    static const char *const words[] = {"Mr",   "Mrs", "Ms",  "Dr",  "St",   "Jr",  "Sr",
                                        "Prof", "Mt",  "vs",  "etc", "Capt", "Col", "Gen",
                                        "Lt",   "Sgt", "Rev", "Hon", "No",   "Fig", "al"};
    if (n == 0 || text[n - 1] != '.')
        return false;
    uint32_t end = n - 1, b = end;
    while (b > 0 && is_alpha(text[b - 1]))
        b--;
    uint32_t wl = end - b;
    if (wl == 0)
        return false;
    if (wl == 1) /* an initial ("J."), or a letter of "e.g." */
        return (text[b] >= 'A' && text[b] <= 'Z') || (b > 0 && text[b - 1] == '.');
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strlen(words[i]) == wl && memcmp(words[i], text + b, wl) == 0)
            return true;
    return false;
}

void pol_seg_init(pol_seg_t *s, const pol_seg_cfg_t *cfg)
{
    memset(s, 0, sizeof *s);
    if (cfg)
        s->cfg = *cfg;
}

int pol_seg_peek(const pol_seg_t *s, const char *piece, uint32_t len)
{
    if (s->cfg.max_len && s->len >= s->cfg.max_len)
        return POL_SEG_LENGTH;
    if (!s->has_text) {
        /* the text rule: a paragraph break right after a sentence's end ends a thought */
        if (!s->cfg.train_rule && s->closed_text && s->nl_run >= 2 && !all_newlines(piece, len))
            return POL_SEG_PARAGRAPH;
        return POL_SEG_NONE;
    }
    if (s->term && len > 0 && is_space(piece[0]))
        return POL_SEG_SENTENCE;
    /* the text rule: a chat template's end of turn right after the terminator ("crisp-wagon.
     * <|im_end|>") ends the sentence too, as a control token (no text) or as text ("<") */
    if (s->term && !s->cfg.train_rule && (len == 0 || piece[0] == '<'))
        return POL_SEG_SENTENCE;
    if (s->cfg.train_rule) {
        bool nl = len == 1 && piece[0] == '\n';
        if (s->last_nl && s->prev_nl && !nl)
            return POL_SEG_PARAGRAPH;
    } else if (s->nl_run >= 2 && !all_newlines(piece, len)) {
        return POL_SEG_PARAGRAPH;
    }
    return POL_SEG_NONE;
}

bool pol_seg_after_paragraph(const pol_seg_t *s)
{
    return (s->has_text || s->closed_text) && s->nl_run >= 2;
}

void pol_seg_close(pol_seg_t *s)
{
    pol_seg_cfg_t cfg = s->cfg;
    bool had_text = s->has_text;
    pol_seg_init(s, &cfg);
    s->closed_text = had_text;
}

int pol_seg_push(pol_seg_t *s, const char *piece, uint32_t len)
{
    int kind = pol_seg_peek(s, piece, len);
    if (kind != POL_SEG_NONE) {
        bool last_nl = s->last_nl;
        pol_seg_close(s);
        s->last_nl = last_nl; /* the training rule's run looks one token back */
    }
    s->len++;
    bool ws = all_space(piece, len);
    if (len > 0 && !ws) {
        s->has_text = true;
        s->closed_text = false;
    }
    s->prev_nl = s->last_nl;
    s->last_nl = len == 1 && piece[0] == '\n';
    s->nl_run = ws ? s->nl_run + count_nl(piece, len) : 0;

    /* keep the sentence's last bytes, for abbreviations */
    for (uint32_t i = len > POL_SEG_TAIL ? len - POL_SEG_TAIL : 0; i < len; i++) {
        if (s->tail_len == POL_SEG_TAIL) {
            memmove(s->tail, s->tail + 1, POL_SEG_TAIL - 1);
            s->tail_len--;
        }
        s->tail[s->tail_len++] = piece[i];
    }

    if (s->cfg.train_rule) {
        char c = len ? piece[len - 1] : 0;
        s->term = len > 0 && (c == '.' || c == '?' || c == '!');
        return kind;
    }
    uint32_t core = strip_closers(piece, len);
    if (core == 0 && len > 0)
        return kind; /* only closers: a terminator before them still ends the sentence */
    if (len == 0 || ws) {
        s->term = false;
        return kind;
    }
    char c = piece[core - 1];
    s->term = c == '.' || c == '?' || c == '!';
    if (s->term && c == '.') {
        /* the tail ends with this piece; look at the word before its final '.' */
        if (len - core <= s->tail_len)
            s->term = !abbreviation(s->tail, s->tail_len - (len - core));
    }
    return kind;
}
