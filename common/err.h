/*
 * common/err.h — the one table of error codes, their messages and wire codes.
 *
 * Every action in gistd returns 0 or a negative ERR_* code from this table.
 * Functions that read external input (files, sockets, command lines) also take
 * an optional err_info_t* and fill it with a message that says what was wrong
 * and where. Thread-safe: no shared state.
 */
#ifndef GISTD_COMMON_ERR_H
#define GISTD_COMMON_ERR_H

#include <stddef.h>
#include <stdint.h>

/* X(name, value, message) — value is negative; the wire code is -value. */
#define ERR_TABLE(X)                                                      \
    X(ERR_OK, 0, "ok")                                                    \
    X(ERR_NOMEM, -1, "out of memory")                                     \
    X(ERR_IO, -2, "input/output error")                                   \
    X(ERR_FORMAT, -3, "malformed input")                                  \
    X(ERR_INVAL, -4, "invalid argument")                                  \
    X(ERR_UNSUPPORTED, -5, "unsupported")                                 \
    X(ERR_NOTFOUND, -6, "not found")                                      \
    X(ERR_RANGE, -7, "out of range")                                      \
    X(ERR_BUDGET, -8, "memory budget exceeded")                           \
    X(ERR_EXISTS, -9, "already exists")                                   \
    X(ERR_BUSY, -10, "busy")                                              \
    X(ERR_CANCELLED, -11, "cancelled")                                    \
    X(ERR_TIMEOUT, -12, "timed out")                                      \
    X(ERR_PERM, -13, "permission denied")                                 \
    X(ERR_PROTO, -14, "protocol error")                                   \
    X(ERR_CORRUPT, -15, "corrupt data (checksum mismatch)")               \
    X(ERR_TOOBIG, -16, "request too large")                               \
    X(ERR_LIMIT, -17, "limit reached")                                    \
    X(ERR_INTERNAL, -18, "internal error")                                \
    X(ERR_RATE, -19, "rate limited: too many requests")                   \
    X(ERR_CONTEXT, -20, "past the model's trained context")

enum {
#define ERR_ENUM_(name, value, msg) name = value,
    ERR_TABLE(ERR_ENUM_)
#undef ERR_ENUM_
};

/* A code and a message that says what was wrong and where. */
typedef struct err_info {
    int code;      /* 0 or a negative ERR_* code */
    char msg[320]; /* human-readable detail; empty when none was given */
} err_info_t;

/* The table's fixed message for a code ("unknown error" for codes not in it). */
const char *err_str(int code);

/* The code sent on the wire for a code (its negation; 0 for ERR_OK). */
uint32_t err_wire(int code);

/* The code for a wire code; ERR_INTERNAL for a wire code not in the table. */
int err_from_wire(uint32_t wire);

/* Clears e (NULL-safe). */
void err_clear(err_info_t *e);

/* Records code and a printf-style message in e (NULL-safe) and returns code,
 * so that callers can write `return err_set(e, ERR_FORMAT, "...")`. */
int err_set(err_info_t *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes e's message with printf-style context ("file.gguf: ") and returns e->code. */
int err_prefix(err_info_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The best message for e: its detail, or the table's message for its code. */
const char *err_msg(const err_info_t *e);

#endif
