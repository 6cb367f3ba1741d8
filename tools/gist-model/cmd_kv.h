/*
 * tools/gist-model/cmd_kv.h — `logits`, `generate` and `perplexity` over the hierarchical KV
 * store under a compaction policy (tools/gist-model/kvrun.h), and `segment`.
 *
 * The flat-cache commands (cmd_run.c) hand over to these when their arguments ask for the
 * store: --policy NAME or --kv-budget SIZE. Return values as in cmd.h.
 */
#ifndef GISTD_TOOLS_GIST_MODEL_CMD_KV_H
#define GISTD_TOOLS_GIST_MODEL_CMD_KV_H

#include <stdbool.h>

/* Whether the arguments ask for the KV store (--policy or --kv-budget). */
bool kv_mode_wanted(int argc, char **argv);

int kv_cmd_logits(int argc, char **argv);
int kv_cmd_generate(int argc, char **argv);
int kv_cmd_perplexity(int argc, char **argv);

/* gist-model segment MODEL (--file F | --text S) [--rule train|text] [--max-sentence N]
 * Prints, one per line, the index of every token after which a sentence closes (and "P" for
 * a paragraph break), tokenizing with BOS as perplexity does. */
int cmd_segment(int argc, char **argv);

#endif
