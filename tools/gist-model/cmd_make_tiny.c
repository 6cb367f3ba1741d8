/* placeholder until this command lands */
#include "tools/gist-model/cmd.h"

int cmd_make_tiny(int argc, char **argv)
{
    return cmd_usage_error("make_tiny: not built yet");
}
