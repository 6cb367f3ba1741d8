#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *err_str(int code)
{
    switch (code) {
#define ERR_CASE_(name, value, msg) \
    case value:                     \
        return msg;
        ERR_TABLE(ERR_CASE_)
#undef ERR_CASE_
    default:
        return "unknown error";
    }
}

uint32_t err_wire(int code)
{
    return code <= 0 ? (uint32_t)-code : (uint32_t)-ERR_INTERNAL;
}

int err_from_wire(uint32_t wire)
{
    switch (-(int64_t)wire) {
#define ERR_CASE_(name, value, msg) \
    case value:                     \
        return value;
        ERR_TABLE(ERR_CASE_)
#undef ERR_CASE_
    default:
        return ERR_INTERNAL;
    }
}

void err_clear(err_info_t *e)
{
    if (e) {
        e->code = 0;
        e->msg[0] = '\0';
    }
}

int err_set(err_info_t *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        e->code = code;
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int err_prefix(err_info_t *e, const char *fmt, ...)
{
    if (!e)
        return ERR_INTERNAL;
    char head[160], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    /* A message too long for the buffer is cut, never overrun. */
    int n = snprintf(e->msg, sizeof e->msg, "%s", head);
    if (n >= 0 && (size_t)n < sizeof e->msg)
        snprintf(e->msg + n, sizeof e->msg - (size_t)n, "%s", old[0] ? old : err_str(e->code));
    return e->code;
}

const char *err_msg(const err_info_t *e)
{
    if (!e)
        return "unknown error";
    return e->msg[0] ? e->msg : err_str(e->code);
}
