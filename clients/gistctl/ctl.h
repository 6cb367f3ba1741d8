/*
 * clients/gistctl/ctl.h — the subcommands of gistctl, the command line for a running gistd.
 *
 * Each command takes the arguments after its name, checks them, connects (ctl_client), and
 * returns the
 * exit status: 0 on success, 1 when the daemon answered with an error (printed on stderr),
 * 2 for bad arguments, 3 when the daemon did not answer within the timeout, 130 when
 * interrupted (SIGINT, SIGTERM) — after closing what the command opened.
 */
#ifndef GISTD_CLIENTS_GISTCTL_CTL_H
#define GISTD_CLIENTS_GISTCTL_CTL_H

#include <stdio.h>

#include "clients/libgistc/gistc.h"

enum { CTL_OK = 0, CTL_DAEMON = 1, CTL_USAGE = 2, CTL_NO_ANSWER = 3, CTL_INTERRUPTED = 130 };

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
int ctl_expand(ctl_t *x, int argc, char **argv);

/* A prompt: --prompt STR, or --prompt-file F ('-': standard input), read by ctl_prompt_read. */
typedef struct ctl_prompt {
    const char *text; /* the prompt (NULL: none), len bytes once read */
    size_t len;
    const char *file; /* the file it comes from, or NULL */
    char *buf;        /* the file's bytes (malloc'd; ctl_prompt_free) */
} ctl_prompt_t;

/* What the commands that generate (gen, chat) take alike: the prompt and the sampler. */
typedef struct ctl_gen_opts {
    ctl_prompt_t prompt;
    gc_sampling_t smp;
    bool sampled; /* a sampler option was given (else the session's defaults hold) */
} ctl_gen_opts_t;

#define CTL_GEN_OPTS_USAGE                                                                         \
    "[--prompt STR | --prompt-file F] [--temp T] [--seed S] [--top-k K] [--top-p P] [--min-p P] "  \
    "[--repeat-penalty R]"

void ctl_gen_opts_init(ctl_gen_opts_t *g);
/* Takes option a with its value when it is one of CTL_GEN_OPTS_USAGE: 1 (with *bad set to
 * CTL_USAGE after saying why when val is wrong), or 0 when a is not one of them. */
int ctl_gen_opt(const char *a, const char *val, ctl_gen_opts_t *g, int *bad);
/* Reads the prompt's file (or standard input for '-'); CTL_USAGE after saying why. */
int ctl_prompt_read(ctl_prompt_t *p);
void ctl_prompt_free(ctl_prompt_t *p);

/* Whether SIGINT or SIGTERM has come (a waiting call then ends with ERR_CANCELLED). */
bool ctl_interrupted(void);
/* Closes a session this command opened, whatever happened before, without waiting longer
 * than a couple of seconds; returns the close's own error code (0 when it closed). */
int ctl_close_quietly(gc_client_t *c, uint32_t session, int timeout_ms);

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
