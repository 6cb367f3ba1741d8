/* Tests for common/err: the code table, wire codes and message composition. */
#include <string.h>

#include "common/err.h"
#include "tests/check.h"

static void test_table_messages(void)
{
    CHECK_STR(err_str(ERR_OK), "ok");
    CHECK_STR(err_str(ERR_BUDGET), "memory budget exceeded");
    CHECK_STR(err_str(12345), "unknown error");
}

static void test_wire_round_trip(void)
{
    for (int c = 0; c >= ERR_INTERNAL; c--)
        CHECK_INT(err_from_wire(err_wire(c)), ==, c);
    CHECK_INT(err_from_wire(9999), ==, ERR_INTERNAL);
    CHECK_INT(err_wire(ERR_FORMAT), ==, 3);
}

static void test_set_and_prefix(void)
{
    err_info_t e;
    err_clear(&e);
    CHECK_STR(err_msg(&e), "ok");
    CHECK_INT(err_set(&e, ERR_FORMAT, "tensor %d has %s", 3, "bad dims"), ==, ERR_FORMAT);
    CHECK_INT(err_prefix(&e, "%s: ", "m.gguf"), ==, ERR_FORMAT);
    CHECK_STR(err_msg(&e), "m.gguf: tensor 3 has bad dims");
    CHECK_INT(err_set(NULL, ERR_IO, "ignored"), ==, ERR_IO);
}

int main(void)
{
    RUN(test_table_messages);
    RUN(test_wire_round_trip);
    RUN(test_set_and_prefix);
    return check_done();
}
