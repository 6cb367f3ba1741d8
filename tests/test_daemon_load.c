/* bench_load against a real gistd, short: 32 clients, each on its own thread and connection,
 * share 640 requests of the chat mix (open, append, generate, score, stats, info, close).
 * Every request must succeed; every client must send exactly its share, the last request
 * closing its session; the daemon's own request counter must have seen each of them (and
 * nothing else); and the daemon's peak RSS must stay within a stated bound of what it cost
 * idle. Also: bench_load refuses endpoints that are not loopback or ipc. */
#include "tests/test_daemon_util.h"

#define CLIENTS  32
#define REQUESTS 640
/* Each session's budget, and what the daemon may grow by over its idle RSS beyond the KV
 * bytes of every session at once: per-session structures (logits, pending queues, policy
 * state), the scheduler's batch buffers for 32 sessions, ZeroMQ's queues for 33 peers and
 * jemalloc's unreturned pages. Measured: VmHWM 7.3 MiB over idle in all (KV included; the
 * bound allows 4 + 8 MiB). Under sanitizers RSS says nothing about the daemon: not checked. */
#define SESSION_BUDGET     (128 * 1024)
#define OVERHEAD_ALLOWANCE (8L * 1024 * 1024)

/* The integer after "key=" in bench_load's summary line (-1 when absent). */
static long long summary_int(const char *out, const char *key)
{
    const char *s = strstr(out, "summary: ");
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = s ? strstr(s, pat) : NULL;
    return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static void test_load_short(void)
{
    const char *model = td_tiny_model("tiny_load.gguf", "41");
    const char *extra[] = {"--threads", "1", "--max-sessions", "80", NULL};
    td_daemon_t d;
    if (!model || td_start(&d, model, extra))
        return;
    gc_client_t *c = td_connect(&d);
    if (!c)
        return;
    err_info_t e;
    gc_stats_t st0, st1;
    CHECK_OK(gc_stats(c, false, &st0, &e));
    const long idle = td_vm_bytes(d.pid, "VmRSS");
    CHECK(idle > 0);

    char pid[32], budget[32], clients[16], requests[16];
    snprintf(pid, sizeof pid, "%d", (int)d.pid);
    snprintf(budget, sizeof budget, "%d", SESSION_BUDGET);
    snprintf(clients, sizeof clients, "%d", CLIENTS);
    snprintf(requests, sizeof requests, "%d", REQUESTS);
    char *argv[] = {(char *)td_bin("bench_load"),
                    "--endpoint",
                    d.endpoint,
                    "--pid",
                    pid,
                    "--clients",
                    clients,
                    "--requests",
                    requests,
                    "--budget",
                    budget,
                    "--timeout-ms",
                    "60000",
                    NULL};
    static char out[65536];
    const int status = td_run(argv, out, sizeof out);
    CHECK_MSG(status == 0, "bench_load exit status %d:\n%s", status, out);
    CHECK_MSG(strstr(out, "status=ok"), "bench_load output:\n%s", out);
    CHECK_INT(summary_int(out, "errors"), ==, 0);
    CHECK_INT(summary_int(out, "requests"), ==, REQUESTS);
    CHECK_INT(summary_int(out, "short_clients"), ==, 0);
    CHECK_INT(summary_int(out, "unaccounted"), ==, 0);
    CHECK(summary_int(out, "tokens") > 0);
    char want[64];
    snprintf(want, sizeof want, "per client: %d to %d requests", REQUESTS / CLIENTS,
             REQUESTS / CLIENTS);
    CHECK_MSG(strstr(out, want), "no \"%s\" in:\n%s", want, out);

    /* the daemon's side: every message counted, none failed, every session closed; between our
     * two stats calls: the clients' requests and handshakes, bench_load's monitor (handshake
     * and two stats calls) and our second call */
    CHECK_OK(gc_stats(c, false, &st1, &e));
    CHECK_INT(st1.requests - st0.requests, ==, REQUESTS + CLIENTS + 3 + 1);
    CHECK_INT(st1.errors, ==, st0.errors);
    CHECK_INT(st1.budget_refusals, ==, 0);
    CHECK_INT(st1.sessions, ==, 0);
    CHECK(st1.tokens_generated > 0);

    /* peak memory: idle + every session at its budget at once + the allowance */
    const long hwm = td_vm_bytes(d.pid, "VmHWM");
    const long bound = idle + (long)CLIENTS * SESSION_BUDGET + OVERHEAD_ALLOWANCE;
    CHECK_MSG(hwm > 0 && (hwm <= bound || !TD_RSS_CHECKED),
              "VmHWM %ld KiB over the bound %ld KiB (idle %ld KiB)", hwm / 1024, bound / 1024,
              idle / 1024);
    fprintf(stderr, "# idle %ld KiB, VmHWM %ld KiB after the load, bound %ld KiB\n", idle / 1024,
            hwm / 1024, bound / 1024);
    gc_stats_free(&st0);
    gc_stats_free(&st1);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

static void test_refuses_remote(void)
{
    char *argv[] = {(char *)td_bin("bench_load"),
                    "--endpoint",
                    "tcp://10.1.2.3:5557",
                    "--clients",
                    "2",
                    "--requests",
                    "4",
                    NULL};
    char out[4096];
    /* status 2 is also any usage error's: the refusal must name the endpoint and why */
    CHECK_INT(td_run_all(argv, out, sizeof out), ==, 2);
    CHECK_MSG(strstr(out, "tcp://10.1.2.3:5557 is not a loopback or ipc endpoint: refused"), "%s",
              out);
    char *argv2[] = {(char *)td_bin("bench_load"),
                     "--endpoint",
                     "tcp://example.org:5557",
                     "--clients",
                     "2",
                     "--requests",
                     "4",
                     NULL};
    CHECK_INT(td_run_all(argv2, out, sizeof out), ==, 2);
    CHECK_MSG(strstr(out, "tcp://example.org:5557 is not a loopback or ipc endpoint: refused"),
              "%s", out);
}

/*
 * Session budgets that add up to more than the global one (16 sessions of 1 MiB under a
 * 4 MiB --kv-budget, the way an operator sets them): the global pressure must be relieved by
 * compaction, never refused. The recent window a policy pins was sized from the session's own
 * limit alone, so the sessions' pins filled the store and about 300 of 800 requests failed
 * with "cannot free more (the rest is pinned)"; it is now sized from the session's share of
 * the global limit when that is smaller.
 */
static void test_session_budgets_above_the_global_one(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s", td_tmp_path("wide_load.gguf"));
    char *mk[] = {(char *)td_bin("gist-model"),
                  "make-tiny",
                  path,
                  "--seed",
                  "7",
                  "--n-embd",
                  "256",
                  "--n-layer",
                  "4",
                  "--n-head",
                  "8",
                  "--n-head-kv",
                  "4",
                  "--n-ff",
                  "512",
                  NULL};
    if (td_run(mk, NULL, 0) != 0) {
        CHECK(!"gist-model make-tiny");
        return;
    }
    char *argv[] = {(char *)td_bin("bench_load"),
                    "--spawn",
                    "--gistd",
                    (char *)td_bin("gistd"),
                    "--model",
                    path,
                    "--clients",
                    "16",
                    "--requests",
                    "800",
                    "--budget",
                    "1M",
                    "--kv-budget",
                    "4M",
                    "--block-rows",
                    "16",
                    "--threads",
                    "1",
                    NULL};
    static char out[65536];
    const int status = td_run(argv, out, sizeof out);
    CHECK_MSG(status == 0 && summary_int(out, "errors") == 0, "bench_load exit status %d:\n%s",
              status, out);
    CHECK_INT(summary_int(out, "requests"), ==, 800);
    CHECK(summary_int(out, "compactions") > 0);
    CHECK(summary_int(out, "kv_peak") > 0 && summary_int(out, "kv_peak") <= 4 << 20);
}

int main(void)
{
    RUN(test_refuses_remote);
    RUN(test_load_short);
    RUN(test_session_budgets_above_the_global_one);
    return check_done();
}
