/*
 * clients/gistctl/ctl.h — the subcommands of gistctl, the command line for a running gistd.
 *
 * Each command takes the arguments after its name, checks them, connects (ctl_client), and
 * returns the
 * exit status: 0 on success, 1 when the daemon answered with an error (printed on stderr),
 * 2 for bad arguments, 3 when the daemon did not answer within the timeout.
 */
#ifndef GISTD_CLIENTS_GISTCTL_CTL_H
#define GISTD_CLIENTS_GISTCTL_CTL_H

#include <stdio.h>

#include "clients/libgistc/gistc.h"

enum { CTL_OK = 0, CTL_DAEMON = 1, CTL_USAGE = 2, CTL_NO_ANSWER = 3 };

/* Where the daemon is, and the connection once a command has parsed its arguments. */
typedef struct ctl {
    const char *endpoint;
    int timeout_ms;
    bool curve; /* the keys below are set */
    char server_key[GC_KEY_LEN], public_key[GC_KEY_LEN], secret_key[GC_KEY_LEN];
    gc_client_t *c;
} ctl_t;

/* Connects (once). NULL after printing why, with *status set to the exit status. */
gc_client_t *ctl_client(ctl_t *x, int *status);

int ctl_gen(ctl_t *x, int argc, char **argv);
int ctl_open(ctl_t *x, int argc, char **argv);
int ctl_close(ctl_t *x, int argc, char **argv);
int ctl_cancel(ctl_t *x, int argc, char **argv);
int ctl_stats(ctl_t *x, int argc, char **argv);
int ctl_sessions(ctl_t *x, int argc, char **argv);
int ctl_budget(ctl_t *x, int argc, char **argv);
int ctl_transcript(ctl_t *x, int argc, char **argv);
int ctl_snapshot(ctl_t *x, int argc, char **argv);
int ctl_restore(ctl_t *x, int argc, char **argv);
int ctl_chat(ctl_t *x, int argc, char **argv);
int ctl_top(ctl_t *x, int argc, char **argv);
int ctl_score(ctl_t *x, int argc, char **argv);

/* Policy parameters from --param KEY=VALUE options (at most 16; pointers into argv). */
typedef struct ctl_params {
    const char *key[16], *value[16];
    uint32_t n;
    char buf[16][128];
} ctl_params_t;

/* Adds "KEY=VALUE" to p; CTL_USAGE (after saying why) when it is malformed or one too many. */
int ctl_param(ctl_params_t *p, const char *kv);

/* Prints "gistctl: <msg>" on stderr and returns CTL_USAGE. */
int ctl_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the error and returns the exit status it calls for (CTL_NO_ANSWER for a timeout). */
int ctl_fail(const err_info_t *e);
/* Parses a whole unsigned decimal number up to max. */
int ctl_uint(const char *opt, const char *s, unsigned long max, unsigned long *out);
int ctl_float(const char *opt, const char *s, float *out);
/* gc_format_size for a signed count ("-1.5 KiB"). */
const char *ctl_size_signed(int64_t v, char *buf, size_t cap);
/* A JSON string (quoted, escaped). */
void ctl_json_str(FILE *f, const char *s);
/* One session's figures as a JSON object. */
void ctl_json_session(FILE *f, const gc_session_info_t *s);

#endif
