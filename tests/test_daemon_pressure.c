/* Memory pressure against a real gistd: 16 sessions stream chat turns (a user line, then a
 * sampled reply of up to 24 tokens) all at once, 20 rounds, into a daemon whose global KV
 * budget (4 MiB) holds about a twentieth of what they store. Every turn must succeed (the policy
 * compacts, nothing is refused); the daemon's VmRSS, sampled all through the run, and its
 * VmHWM must stay within a stated bound; its stats must show compactions (matching the events
 * streamed) and the KV bytes never over the budget. */
#include <sys/stat.h>

#include "tests/test_daemon_util.h"

#define SESSIONS   16
#define ROUNDS     20
#define MAX_TOKENS 24
#define BUDGET     (4L * 1024 * 1024)
/* The bound on the daemon's RSS is idle + BUDGET + ALLOWANCE, where idle is a fresh daemon's
 * VmRSS after one short generation: libraries, the whole mapped model file, thread stacks,
 * allocator caches. Measured: 14.1 MiB with this 2.9 MiB model; it must stay within the model
 * file's size + IDLE_ALLOWANCE. ALLOWANCE covers what 16 sessions cost beside their KV rows
 * (logits, pending queues, policy state, the scheduler's batch buffers), ZeroMQ's queues and
 * the KV arena's pages above its live bytes (fragmentation, pages jemalloc has not returned
 * yet). Measured: VmHWM 7.2 MiB over idle in all, the 4 MiB budget included. Without the
 * budget the sessions would store about 88 MiB of KV rows, far past the bound: the test checks
 * that, so the bound would catch an unbounded store or a leak of that order (run with
 * --kv-budget 256M, the daemon reached 110 MiB against a bound of 26 MiB). Under
 * sanitizers RSS says nothing about the daemon: the bounds are not checked there. */
#define IDLE_ALLOWANCE (16L * 1024 * 1024)
#define ALLOWANCE      (8L * 1024 * 1024)

typedef struct watch {
    gc_client_t *stats; /* a second connection, polled from the first one's callbacks */
    pid_t pid;
    uint64_t tokens;
    long rss_max;
    uint32_t rss_samples, rss_fail, polls, crossed, events;
    uint64_t max_used;
    int64_t event_bytes;
    uint32_t expands;
    int64_t expand_bytes;
} watch_t;

static void sample(watch_t *w)
{
    const long rss = td_vm_bytes(w->pid, "VmRSS");
    if (rss < 0) {
        w->rss_fail++;
        return;
    }
    w->rss_samples++;
    w->rss_max = rss > w->rss_max ? rss : w->rss_max;
}

static void poll_stats(watch_t *w)
{
    gc_stats_t st;
    err_info_t e;
    if (gc_stats(w->stats, false, &st, &e)) {
        w->crossed++;
        return;
    }
    w->polls++;
    w->max_used = st.kv_used_bytes > w->max_used ? st.kv_used_bytes : w->max_used;
    if (st.kv_used_bytes > BUDGET || st.kv_peak_bytes > BUDGET)
        w->crossed++;
    gc_stats_free(&st);
}

static int on_tok(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    watch_t *w = ctx;
    if (w->tokens++ % 4 == 0)
        sample(w);
    if (w->tokens % 32 == 0)
        poll_stats(w);
    return 0;
}

static void on_compaction(void *ctx, uint32_t session, const gc_compaction_t *c)
{
    watch_t *w = ctx;
    if (!strcmp(c->action, "expand")) { /* re-expansions are counted apart */
        w->expands++;
        w->expand_bytes += c->bytes_freed;
        return;
    }
    w->events++;
    w->event_bytes += c->bytes_freed;
}

static void test_pressure(void)
{
    /* 4 layers x 4 kv-heads of head_dim 32: 16 lanes, a few KiB of KV per token */
    char model[600];
    snprintf(model, sizeof model, "%s/pressure.gguf", check_tmpdir());
    char *mk[] = {(char *)td_bin("gist-model"),
                  "make-tiny",
                  model,
                  "--seed",
                  "43",
                  "--n-embd",
                  "128",
                  "--n-layer",
                  "4",
                  "--n-head",
                  "4",
                  "--n-head-kv",
                  "4",
                  "--n-ff",
                  "256",
                  NULL};
    if (td_run(mk, NULL, 0) != 0) {
        check_fail_(__FILE__, __LINE__, "gist-model make-tiny %s failed", model);
        return;
    }
    char budget[32];
    snprintf(budget, sizeof budget, "%ld", BUDGET);
    const char *extra[] = {"--kv-budget", budget,           "--block-rows", "16", "--threads",
                           "1",           "--max-sessions", "32",           NULL};
    td_daemon_t d;
    if (td_start(&d, model, extra))
        return;
    gc_client_t *c = td_connect(&d);
    watch_t w = {.stats = td_connect(&d), .pid = d.pid};
    if (!c || !w.stats)
        return;
    err_info_t e;
    gc_stats_t st;

    /* idle: a fresh daemon after one short generation */
    uint32_t s0;
    gc_open_opts_t oo = {.chat_template = "plain"}; /* the daemon's default policy: auto */
    CHECK_OK(gc_open(c, &oo, &s0, &e));
    gc_gen_opts_t g0 = {.session = s0, .max_tokens = 8, .prompt = "Hello.", .sampling = &td_greedy};
    CHECK_OK(gc_generate(c, &g0, NULL, NULL, &e));
    CHECK_OK(gc_close(c, s0, &e));
    const long idle = td_vm_bytes(d.pid, "VmRSS");
    struct stat ms;
    CHECK(stat(model, &ms) == 0 && idle > 0);
    CHECK_MSG(idle <= ms.st_size + IDLE_ALLOWANCE || !TD_RSS_CHECKED,
              "idle VmRSS %ld KiB, model %lld KiB", idle / 1024, (long long)ms.st_size / 1024);
    CHECK_OK(gc_stats(c, false, &st, &e));
    const uint64_t per_token = st.kv_bytes_per_token, errors0 = st.errors;
    CHECK_INT(st.kv_budget_bytes, ==, BUDGET);
    gc_stats_free(&st);

    static const char *const lines[] = {"Tell me a story.", "What did the cat do next?",
                                        "Why was Tom sad?", "And then what happened?"};
    uint32_t sid[SESSIONS];
    uint64_t req[SESSIONS];
    for (int i = 0; i < SESSIONS; i++)
        CHECK_OK(gc_open(c, &oo, &sid[i], &e));
    gc_callbacks_t cb = {.ctx = &w, .on_token = on_tok, .on_compaction = on_compaction};
    uint32_t turns = 0, failed = 0;
    uint64_t usage_compactions = 0;
    int64_t usage_bytes = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < SESSIONS; i++) {
            gc_sampling_t smp;
            gc_sampling_default(&smp);
            smp.seed = (uint64_t)(r * SESSIONS + i + 1);
            gc_gen_opts_t o = {.session = sid[i],
                               .max_tokens = MAX_TOKENS,
                               .prompt = lines[(r + i) % 4],
                               .prompt_role = GC_ROLE_USER,
                               .role = GC_ROLE_ASSISTANT,
                               .sampling = &smp};
            if (gc_generate_start(c, &o, &cb, &req[i], &e)) {
                check_fail_(__FILE__, __LINE__, "round %d session %u: %s", r, sid[i], e.msg);
                req[i] = 0;
            }
        }
        for (int i = 0; i < SESSIONS; i++) {
            if (!req[i])
                continue;
            gc_result_t res = {0};
            if (gc_wait(c, req[i], &res, &e)) {
                if (failed++ < 5)
                    check_fail_(__FILE__, __LINE__, "round %d session %u: %s", r, sid[i], e.msg);
            } else {
                turns++;
                usage_compactions += res.usage.compactions;
                usage_bytes += res.usage.bytes_freed;
            }
            gc_result_free(&res);
        }
        sample(&w);
    }
    CHECK_INT(turns, ==, ROUNDS * SESSIONS);
    CHECK_INT(failed, ==, 0);

    /* the daemon's figures: compactions, never a byte over the budget, no refusal */
    poll_stats(&w);
    CHECK_OK(gc_stats(c, true, &st, &e));
    CHECK_INT(st.errors, ==, errors0);
    CHECK_INT(st.budget_refusals, ==, 0);
    CHECK(st.compactions > 0);
    /* every compaction made while a session served a request was streamed to it; a session
     * between its turns may be shrunk too (idle ones first), with nobody to tell: those are
     * in the session's own figures and the daemon's, not in any stream */
    CHECK_INT(usage_compactions, ==, w.events);
    CHECK_INT(usage_bytes, ==, w.event_bytes);
    uint64_t sess_compactions = 0;
    int64_t sess_bytes = 0;
    for (int i = 0; i < SESSIONS; i++) {
        gc_session_info_t si;
        if (gc_session_info(c, sid[i], &si, &e)) {
            check_fail_(__FILE__, __LINE__, "session %u: %s", sid[i], e.msg);
            continue;
        }
        sess_compactions += si.compactions;
        sess_bytes += si.bytes_freed;
    }
    CHECK_INT(st.compactions, ==, sess_compactions);
    CHECK_INT(st.bytes_freed, ==, sess_bytes);
    CHECK_INT(st.compactions, >=, w.events);
    CHECK_INT(st.expansions, ==, w.expands);
    CHECK_INT(st.expand_bytes, ==, -w.expand_bytes);
    CHECK_INT(st.kv_peak_bytes, <=, BUDGET);
    CHECK_INT(st.kv_used_bytes, <=, BUDGET);
    CHECK_INT(w.crossed, ==, 0);
    CHECK(w.polls > 20);
    uint64_t stored = 0; /* tokens the sessions hold: every one would need its rows */
    for (uint32_t i = 0; i < st.n_session_list; i++)
        stored += st.session_list[i].tokens;
    const uint64_t demand = stored * per_token;
    /* the budget was far below demand, and the RSS bound below it too */
    CHECK_MSG(demand >= 10 * (uint64_t)BUDGET, "demand %llu bytes, budget %ld",
              (unsigned long long)demand, BUDGET);
    CHECK_MSG(demand > 2 * (uint64_t)(BUDGET + ALLOWANCE), "demand %llu bytes",
              (unsigned long long)demand);
    gc_stats_free(&st);

    /* memory: every sample and the high-water mark within the bound */
    const long bound = idle + BUDGET + ALLOWANCE, hwm = td_vm_bytes(d.pid, "VmHWM");
    CHECK_INT(w.rss_fail, ==, 0);
    CHECK(w.rss_samples > 100);
    CHECK_MSG(w.rss_max <= bound || !TD_RSS_CHECKED, "VmRSS %ld KiB over the bound %ld KiB",
              w.rss_max / 1024, bound / 1024);
    CHECK_MSG(hwm <= bound || !TD_RSS_CHECKED, "VmHWM %ld KiB over the bound %ld KiB", hwm / 1024,
              bound / 1024);
    fprintf(stderr,
            "# idle %ld KiB; %u RSS samples, at most %ld KiB; VmHWM %ld KiB; bound %ld KiB; "
            "demand without a budget %llu KiB (%llu tokens); %u compactions\n",
            idle / 1024, w.rss_samples, w.rss_max / 1024, hwm / 1024, bound / 1024,
            (unsigned long long)(demand / 1024), (unsigned long long)stored, w.events);

    /* closing every session gives the KV bytes back */
    for (int i = 0; i < SESSIONS; i++)
        CHECK_OK(gc_close(c, sid[i], &e));
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_INT(st.sessions, ==, 0);
    CHECK_INT(st.kv_used_bytes, <, 16 * 1024);
    gc_stats_free(&st);
    gc_disconnect(&w.stats);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_pressure);
    return check_done();
}
