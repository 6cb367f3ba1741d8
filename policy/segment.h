/*
 * policy/segment.h — the segmenter: sentence and thought boundaries from token text.
 *
 * Fed the text piece of each token in order, it says whether a boundary falls right before
 * that token. A sentence closes after a token that ends with `.`, `?` or `!` when the next
 * token starts with whitespace, or after a run of two or more newlines (a paragraph break,
 * which is also a thought boundary), provided the sentence holds some text; with the text
 * rule, a paragraph break right after a closed sentence ("done.\n\nNext") ends a thought too
 * (the newlines close as a span of their own); a sentence that
 * reaches max_len tokens closes anyway (text without punctuation). The `train` rule is
 * exactly the one the gist tokens were trained with (train/data.py: sentence_ends); the
 * text rule also lets closing quotes and brackets follow the terminator (`ball?"`), closes a
 * sentence whose terminator a chat template's end-of-turn marker follows (a control token,
 * which has no text, or a marker written as text starting with `<`: `done.<|im_end|>`), and
 * keeps common abbreviations and initials (`Mr.`, `J.`) from closing a sentence.
 *
 * A plain value type: no allocation, any thread for its own value. No errors.
 */
#ifndef GISTD_POLICY_SEGMENT_H
#define GISTD_POLICY_SEGMENT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct pol_seg_cfg {
    bool train_rule;  /* the training rule only (no quotes, no abbreviations) */
    uint32_t max_len; /* tokens in a sentence before it closes anyway; 0: no limit */
} pol_seg_cfg_t;

/* Boundary kinds, as pol_seg_push returns them. */
enum pol_seg_kind {
    POL_SEG_NONE = 0,
    POL_SEG_SENTENCE = 1,  /* a terminator followed by whitespace */
    POL_SEG_PARAGRAPH = 2, /* a run of newlines: a sentence and a thought end */
    POL_SEG_LENGTH = 3,    /* max_len tokens without a boundary */
};

#define POL_SEG_TAIL 16

typedef struct pol_seg {
    pol_seg_cfg_t cfg;
    uint32_t len;     /* tokens of the open sentence */
    bool has_text;    /* the open sentence has a non-whitespace token */
    bool closed_text; /* a sentence with text closed, and only whitespace followed since */
    bool term;        /* the last token ends a sentence if whitespace follows */
    uint32_t nl_run;  /* newlines in the run of whitespace-only tokens at the end */
    bool last_nl;     /* the last token was exactly "\n" (the training rule's run) */
    bool prev_nl;     /* and the one before it */
    uint8_t tail_len;
    char tail[POL_SEG_TAIL]; /* the open sentence's last bytes (for abbreviations) */
} pol_seg_t;

void pol_seg_init(pol_seg_t *s, const pol_seg_cfg_t *cfg);

/* What pol_seg_push would return for this piece, without changing s. */
int pol_seg_peek(const pol_seg_t *s, const char *piece, uint32_t len);
/* The boundary kind before this token (POL_SEG_NONE when none); then the token joins the
 * (possibly new) open sentence. */
int pol_seg_push(pol_seg_t *s, const char *piece, uint32_t len);
/* Whether the text so far ends with a paragraph break after some text: the next token that
 * is not a newline starts a new thought. */
bool pol_seg_after_paragraph(const pol_seg_t *s);
/* The open sentence closes here (end of a turn, a marker): the next token starts a new one. */
void pol_seg_close(pol_seg_t *s);

#endif
