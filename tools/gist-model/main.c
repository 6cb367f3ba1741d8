/* gist-model — the offline tool: inspect, tokenize, run and measure a GGUF model. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tools/gist-model/cmd.h"
#include "tools/gist-model/cmd_kv.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *usage;
} commands[] = {
    {"info", cmd_info, "info MODEL"},
    {"tokenize", cmd_tokenize, "tokenize MODEL [--bos] [--special] (--text STR | --file F)"},
    {"detokenize", cmd_detokenize, "detokenize MODEL --tokens \"ID ID ...\""},
    {"make-tiny", cmd_make_tiny,
     "make-tiny OUT.gguf --seed N [--type f32|f16|bf16|q8_0|q4_0] [shape options]"},
    {"logits", cmd_logits,
     "logits MODEL --tokens \"ID ID ...\" [--tokens ...] --out FILE [--ubatch N] "
     "[--kv-type f32|f16|q8_0] [--gist-mask] [--retention-out FILE] [--threads N]"},
    {"generate", cmd_generate,
     "generate MODEL --prompt STR -n N [--temp T] [--seed S] [--top-k K] [--top-p P] "
     "[--min-p P] [--repeat-penalty R] [--threads N]"},
    {"perplexity", cmd_perplexity, "perplexity MODEL --file F [--ctx N] [--threads N]"},
    {"  (KV store)", NULL,
     "logits|generate|perplexity ... --policy NAME [--kv-budget SIZE|P%] [--kv-soft SIZE] "
     "[--param KEY=VALUE] [--kv-block-rows N] [--spill-dir DIR|none] [--events]; "
     "perplexity --ctx 0 [--turn N]"},
    {"segment", cmd_segment,
     "segment MODEL (--file F | --text S) [--rule train|text] [--max-sentence N]"},
};

int cmd_usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("gist-model: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 2;
}

static void usage(FILE *f)
{
    fputs("usage: gist-model COMMAND ...\n", f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  gist-model %s\n", commands[i].usage);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].fn && !strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 2, argv + 2);
    return cmd_usage_error("unknown command '%s' (try gist-model --help)", argv[1]);
}
