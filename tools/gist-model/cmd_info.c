/* placeholder until this command lands */
#include "tools/gist-model/cmd.h"

int cmd_info(int argc, char **argv)
{
    return cmd_usage_error("info: not built yet");
}
