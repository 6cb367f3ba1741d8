/* placeholder until this command lands */
#include "tools/gist-model/cmd.h"

int cmd_tokenize(int argc, char **argv)
{
    return cmd_usage_error("tokenize: not built yet");
}

int cmd_detokenize(int argc, char **argv)
{
    return cmd_usage_error("detokenize: not built yet");
}
