/* placeholder until this command lands */
#include "tools/gist-model/cmd.h"

int cmd_logits(int argc, char **argv)
{
    return cmd_usage_error("logits: not built yet");
}

int cmd_generate(int argc, char **argv)
{
    return cmd_usage_error("generate: not built yet");
}

int cmd_perplexity(int argc, char **argv)
{
    return cmd_usage_error("perplexity: not built yet");
}
