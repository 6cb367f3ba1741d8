/* A session that streams far more tokens into a real gistd than its budget could hold as a
 * transcript in memory: with --spill-dir none (the transcript charged at 6 bytes a token, as
 * before the cold tier went to disk) it is refused once the transcript fills the budget; with
 * a spill folder it keeps serving, under the same budget, with the transcript still read back
 * exactly (gistctl transcript's request) and the spilled bytes in the daemon's stats; and a
 * snapshot of it restores exactly. */
#include <inttypes.h>

#include "tests/test_daemon_util.h"

#define BUDGET (96u * 1024u) /* bytes, the session's hard limit */
#define CHUNK  2048u         /* tokens an append */
#define TOTAL  (48u * 1024u) /* tokens fed: 3 times what BUDGET / 6 would hold */

/* Feeds up to TOTAL tokens in CHUNK-token appends; returns how many went in, and the code of
 * the append that was refused (0: none) with its message. */
static uint32_t feed(gc_client_t *c, uint32_t s, int32_t *ids, int *rc, err_info_t *e)
{
    uint32_t n = 0;
    *rc = 0;
    while (n < TOTAL) {
        gc_usage_t u;
        td_long_turn(ids + n, CHUNK, n / CHUNK);
        *rc = gc_append_tokens(c, s, ids + n, CHUNK, &u, e);
        if (*rc)
            break;
        n += CHUNK;
    }
    return n;
}

/* Entries of a folder, . and .. aside. */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    return d ? n : -1;
}

static uint32_t open_window(gc_client_t *c)
{
    const char *keys[] = {"recent"}, *vals[] = {"64"};
    gc_open_opts_t o = {.policy = "window",
                        .param_keys = keys,
                        .param_values = vals,
                        .n_params = 1,
                        .budget_bytes = BUDGET,
                        .no_bos = true};
    uint32_t s = 0;
    err_info_t e;
    if (gc_open(c, &o, &s, &e))
        check_fail_(__FILE__, __LINE__, "open: %s", err_msg(&e));
    return s;
}

static void test_refused_without_spilling(void)
{
    const char *model = td_tiny_model("spill.gguf", "7");
    td_daemon_t d;
    const char *extra[] = {"--spill-dir", "none", NULL};
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    int32_t *ids = malloc(sizeof *ids * TOTAL);
    uint32_t s = open_window(c);
    int rc;
    err_info_t e;
    err_clear(&e);
    uint32_t n = feed(c, s, ids, &rc, &e);
    printf("# --spill-dir none: refused after %u tokens: %s\n", n, e.msg);
    CHECK_INT(rc, ==, ERR_BUDGET);
    CHECK(n < BUDGET / 6);
    CHECK(strstr(e.msg, "transcript") != NULL);
    free(ids);
    gc_close(c, s, &e);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

static void test_keeps_serving_with_spilling(void)
{
    const char *model = td_tiny_model("spill.gguf", "7");
    const char *dir = td_mkdir("spill");
    const char *snaps = td_mkdir("snaps");
    td_daemon_t d;
    const char *extra[] = {"--spill-dir", dir, "--snapshot-dir", snaps, NULL};
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    int32_t *ids = malloc(sizeof *ids * TOTAL);
    uint32_t s = open_window(c);
    int rc;
    err_info_t e;
    err_clear(&e);
    uint32_t n = feed(c, s, ids, &rc, &e);
    CHECK_MSG(rc == 0, "refused after %u tokens: %s", n, e.msg);
    CHECK_INT(n, ==, TOTAL);
    char out[256];
    CHECK_OK(td_gen_text(c, s, 8, NULL, out, sizeof out)); /* and it still generates */

    gc_stats_t st;
    CHECK_OK(gc_stats(c, true, &st, &e));
    printf("# %u tokens under a %u-byte budget: session %" PRIu64 " bytes (peak %" PRIu64
           "), transcript %" PRIu64 " in memory, %" PRIu64 " on disk\n",
           n, BUDGET, st.n_session_list ? st.session_list[0].bytes : 0,
           st.n_session_list ? st.session_list[0].peak_bytes : 0, st.transcript_bytes,
           st.transcript_disk_bytes);
    CHECK(st.transcript_disk_bytes >= (TOTAL - 4096) * 4);
    CHECK(st.transcript_bytes < 6u * TOTAL / 8);
    for (uint32_t i = 0; i < st.n_session_list; i++)
        CHECK(st.session_list[i].peak_bytes <= BUDGET);
    gc_stats_free(&st);
    /* the transcript reads back exactly, spilled pages and all */
    uint32_t len = 0;
    int32_t *got = td_transcript_ids(c, s, &len);
    CHECK(len >= TOTAL + 8);
    for (uint32_t i = 0; got && i < TOTAL && i < len; i++)
        if (got[i] != ids[i]) {
            CHECK_MSG(false, "position %u: %d, fed %d", i, got[i], ids[i]);
            break;
        }
    /* nothing is left in the folder: the spill files were unlinked when made */
    CHECK_INT(entries(dir), ==, 0);

    /* a snapshot of the session restores with the same transcript */
    uint32_t r = s;
    CHECK_OK(gc_snapshot(c, s, NULL, &e));
    CHECK_OK(gc_close(c, s, &e));
    CHECK_OK(gc_restore(c, s, &e));
    if (got)
        td_expect_ids(c, r, got, len, "restored");
    CHECK_OK(td_gen_text(c, r, 4, NULL, out, sizeof out));
    free(got);
    free(ids);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_refused_without_spilling);
    RUN(test_keeps_serving_with_spilling);
    return check_done();
}
