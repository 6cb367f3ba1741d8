/*
 * tools/gist-model/cmd.h — the subcommands of the offline `gist-model` tool.
 *
 * Each takes the arguments after its name and returns the exit status:
 * 0 on success, 2 on a bad model file or bad arguments (after printing one
 * line on stderr that says what is wrong), 1 on other failures.
 */
#ifndef GISTD_TOOLS_GIST_MODEL_CMD_H
#define GISTD_TOOLS_GIST_MODEL_CMD_H

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_make_tiny(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);

/* Helpers shared by the commands (util.c). Each parser prints what is wrong and returns 2,
 * or returns 0 and sets *out. */
#include <stdbool.h>
#include <stddef.h>

#include "model/sampler.h"
int cmd_parse_long(const char *opt, const char *s, long lo, long hi, long *out);
int cmd_parse_float(const char *opt, const char *s, float *out); /* finite only */
/* The sampling options of `generate` (--temp --top-k --top-p --min-p --repeat-penalty
 * --repeat-last-n --seed; --seed sets *seeded) at argv[*i]: 1 when it was one (*i moves past
 * its value), 0 when not, -1 when its value is bad (after saying so). */
int cmd_sampler_opt(mdl_sampler_cfg_t *sc, bool *seeded, int argc, char **argv, int *i);
/* Reads a whole file (any bytes) into a malloc'd buffer (caller frees). */
int cmd_read_file(const char *path, char **buf, size_t *len);
/* Seconds on the monotonic clock. */
double cmd_now(void);

/* Prints "gist-model: <msg>" on stderr and returns 2. */
int cmd_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
