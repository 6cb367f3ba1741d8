/*
 * tests/test_fuzz_regress_daemon.c — the request fuzz target's check (daemon/fuzz_request.c)
 * on its checked-in seeds (fuzz/corpus/fuzz_request/) and on every input that once broke
 * something (tests/data/fuzz/fuzz_request/): each runs against a daemon made in-process, so
 * the normal, asan, valgrind and tsan builds all replay them.
 */
#include "fuzz/replay.h"

static void test_replay_request(void)
{
    fuzz_replay("fuzz_request", fuzz_request_one);
}

int main(void)
{
    RUN(test_replay_request);
    return check_done();
}
