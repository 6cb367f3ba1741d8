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

/* Prints "gist-model: <msg>" on stderr and returns 2. */
int cmd_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
