/*
 * common/keyfile.h — CURVE key files as `gistd --keygen` writes them: the key is the first
 * line that is not blank or a comment, 40 z85 characters. One reader for the daemon (its
 * secret key, the allow list's keys) and libgistc (a client's keys).
 *
 * Owns nothing; no state, so any thread may call it. Errors: 0 or a negative ERR_* code with
 * a message in e that names the file and, for a bad line, its number; a key file's text is
 * never repeated in a message (it may be a secret key).
 */
#ifndef GISTD_COMMON_KEYFILE_H
#define GISTD_COMMON_KEYFILE_H

#include <stdbool.h>

#include "common/err.h"

#define KEY_Z85_LEN 40 /* a CURVE key (32 bytes) as z85 text, without its NUL */

/* True when z is KEY_Z85_LEN z85 characters that decode to a 32-byte key (false for NULL). */
bool key_z85_valid(const char *z);

/* Cuts a comment off line in place: '#' at its start or after a blank starts one ('#' is also
 * a z85 digit, so inside a word it is kept). */
void key_comment_cut(char *line);

/* Reads the key of the key file at path into out (NUL-terminated). ERR_IO when the file cannot
 * be read; ERR_FORMAT when it holds no key, or its first line that is not blank or a comment
 * is not a key ("PATH:LINE: not a CURVE key ..."). On error out is unchanged. */
int key_file_read(const char *path, char out[KEY_Z85_LEN + 1], err_info_t *e);

#endif
