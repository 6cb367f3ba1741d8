/*
 * bench/bench_daemon.c — gistd's aggregate decode speed against the number of concurrent
 * sessions, and the time to the first token, through libgistc on loopback.
 *
 *   bench_daemon MODEL.gguf [--sessions 1,2,4,8,16] [--tokens 32] [--reps 3] [--threads N]
 *                [--gistd PATH] [--dat FILE]
 *   bench_daemon MODEL.gguf --long-chat 20000 [--budget-rows 2000] [--policy auto]
 *                [--turn 100] [--threads N] [--gistd PATH] [--dat FILE]
 *
 * Starts its own gistd (PATH, default build/bin/gistd) on a free loopback port. For each
 * session count N, N sessions each start a greedy generation of --tokens tokens from a short
 * prompt, all at once, so the scheduler decodes them in one batch per step. Decode speed is
 * the tokens after each session's first, over the time from the last first token to the last
 * token; time to first token is measured by the client from the request. Repetitions
 * alternate the session counts; medians are printed, and the speedup over one session
 * (the requirement: at least 3x at 8 sessions). --dat writes the table for gnuplot.
 *
 * --long-chat N: one session under a budget of --budget-rows rows' bytes (the bytes a raw
 * token takes in every lane, times the rows) and the given policy, fed turns (a short user
 * line, then an assistant reply of --turn tokens) until it has seen N tokens. Each turn's
 * line gives tokens seen, the reply's decode tokens/s, the session's KV bytes and its
 * compactions: with a bounded store the speed stays flat however long the chat runs.
 */
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "clients/libgistc/gistc.h"

#define MAX_COUNTS 16
#define MAX_SESS   64
#define MAX_REPS   15

typedef struct track {
    double t_start, t_first, t_last;
    uint32_t n;
} track_t;

static int on_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    track_t *t = ctx;
    const double now = bench_now();
    if (t->n++ == 0)
        t->t_first = now;
    t->t_last = now;
    return 0;
}

/* One round: n sessions generating `tokens` each at once. */
static int round_once(gc_client_t *c, int n, uint32_t tokens, double *dec_tps, double *ttft_med,
                      double *ttft_max)
{
    static const char *const prompts[] = {"Once upon a time", "The little dog", "She said",
                                          "One day, a big",   "Tom and Sue",    "The sun was"};
    uint32_t sid[MAX_SESS];
    uint64_t req[MAX_SESS];
    track_t tr[MAX_SESS] = {0};
    gc_sampling_t greedy = {.temp = 0.0f, .repeat_penalty = 1.0f};
    err_info_t e;
    for (int i = 0; i < n; i++)
        if (gc_open(c, NULL, &sid[i], &e)) {
            fprintf(stderr, "bench_daemon: open: %s\n", err_msg(&e));
            return -1;
        }
    for (int i = 0; i < n; i++) {
        gc_gen_opts_t o = {
            .session = sid[i], .max_tokens = tokens, .prompt = prompts[i % 6], .sampling = &greedy};
        gc_callbacks_t cb = {.ctx = &tr[i], .on_token = on_token};
        tr[i].t_start = bench_now();
        if (gc_generate_start(c, &o, &cb, &req[i], &e)) {
            fprintf(stderr, "bench_daemon: generate: %s\n", err_msg(&e));
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        gc_result_t r = {0};
        if (gc_wait(c, req[i], &r, &e)) {
            fprintf(stderr, "bench_daemon: generate: %s\n", err_msg(&e));
            return -1;
        }
        gc_result_free(&r);
    }
    double first = 0, last = 0, ttft[MAX_SESS];
    uint64_t after_first = 0;
    for (int i = 0; i < n; i++) {
        first = tr[i].t_first > first ? tr[i].t_first : first;
        last = tr[i].t_last > last ? tr[i].t_last : last;
        after_first += tr[i].n ? tr[i].n - 1 : 0;
        ttft[i] = (tr[i].t_first - tr[i].t_start) * 1e3;
    }
    for (int i = 0; i < n; i++)
        gc_close(c, sid[i], &e);
    *dec_tps = last > first ? after_first / (last - first) : 0;
    double mx = 0;
    for (int i = 0; i < n; i++)
        mx = ttft[i] > mx ? ttft[i] : mx;
    *ttft_max = mx;
    *ttft_med = bench_median(ttft, n);
    return 0;
}

static pid_t start_gistd(const char *gistd, const char *model, const char *threads, char *ep,
                         size_t cap)
{
    int fd[2];
    if (pipe(fd) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execl(gistd, gistd, "--model", model, "--listen", "tcp://127.0.0.1:*", "--threads", threads,
              "--max-sessions", "256", "--log-level", "error", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t n = 0;
    while (n + 1 < cap && read(fd[0], ep + n, 1) == 1 && ep[n] != '\n')
        n++;
    ep[n] = 0;
    close(fd[0]);
    return n ? pid : -1;
}

static int on_tok_count(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    return on_token(ctx, session, id, piece, len);
}

/* One session fed turns until it has seen `total` tokens (see the header). */
static int long_chat(gc_client_t *c, uint32_t total, uint32_t rows, const char *policy,
                     uint32_t turn, const char *dat)
{
    static const char *const lines[] = {"Tell me more.", "What happened next?",
                                        "And then what did they do?", "Why was that?"};
    gc_stats_t st;
    err_info_t e;
    if (gc_stats(c, false, &st, &e)) {
        fprintf(stderr, "bench_daemon: %s\n", err_msg(&e));
        return -1;
    }
    const size_t budget = (size_t)st.kv_bytes_per_token * rows;
    gc_stats_free(&st);
    gc_open_opts_t oo = {.policy = policy, .budget_bytes = budget, .chat_template = "plain"};
    uint32_t s;
    if (gc_open(c, &oo, &s, &e)) {
        fprintf(stderr, "bench_daemon: open: %s\n", err_msg(&e));
        return -1;
    }
    FILE *df = dat ? fopen(dat, "w") : NULL;
    printf("# long chat: policy %s, budget %zu bytes (%u rows), %u-token replies\n", policy, budget,
           rows, turn);
    printf("%10s %12s %14s %12s %12s\n", "seen", "decode t/s", "kv bytes", "compactions", "ratio");
    if (df)
        fprintf(df, "# seen decode_tok_s kv_bytes compactions compression\n");
    gc_sampling_t smp = {
        .temp = 0.8f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.0f, .seed = 7};
    uint32_t seen = 0, k = 0;
    double first_tps = 0, last_tps = 0;
    while (seen < total) {
        track_t tr = {0};
        gc_gen_opts_t o = {.session = s,
                           .max_tokens = turn,
                           .prompt = lines[k++ % 4],
                           .prompt_role = GC_ROLE_USER,
                           .role = GC_ROLE_ASSISTANT,
                           .sampling = &smp};
        gc_callbacks_t cb = {.ctx = &tr, .on_token = on_tok_count};
        gc_result_t res = {0};
        if (gc_generate(c, &o, &cb, &res, &e)) {
            fprintf(stderr, "bench_daemon: turn %u: %s\n", k, err_msg(&e));
            if (df)
                fclose(df);
            return -1;
        }
        gc_result_free(&res);
        gc_session_info_t si;
        if (gc_session_info(c, s, &si, &e))
            break;
        seen = si.tokens;
        const double tps =
            tr.n > 1 && tr.t_last > tr.t_first ? (tr.n - 1) / (tr.t_last - tr.t_first) : 0;
        first_tps = first_tps > 0 ? first_tps : tps;
        last_tps = tps;
        if (k % 10 == 1 || seen >= total)
            printf("%10u %12.1f %14llu %12u %12.2f\n", seen, tps, (unsigned long long)si.bytes,
                   si.compactions, si.compression);
        if (df)
            fprintf(df, "%u %.3f %llu %u %.3f\n", seen, tps, (unsigned long long)si.bytes,
                    si.compactions, si.compression);
    }
    if (df)
        fclose(df);
    printf("# first turn %.1f tokens/s, last turn %.1f tokens/s (%.0f%%)\n", first_tps, last_tps,
           first_tps > 0 ? 100.0 * last_tps / first_tps : 0.0);
    gc_close(c, s, &e);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *gistd = "build/bin/gistd", *dat = NULL, *threads = "0";
    const char *policy = "auto";
    int counts[MAX_COUNTS] = {1, 2, 4, 8, 16}, n_counts = 5, reps = 3;
    uint32_t tokens = 32, chat = 0, rows = 2000, turn = 100;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sessions") && v) {
            n_counts = 0;
            for (char *p = argv[++i]; *p && n_counts < MAX_COUNTS;) {
                int k = (int)strtol(p, &p, 10);
                if (k < 1 || k > MAX_SESS) {
                    fprintf(stderr, "bench_daemon: --sessions: 1 to %d each\n", MAX_SESS);
                    return 2;
                }
                counts[n_counts++] = k;
                p += *p == ',';
            }
        } else if (!strcmp(a, "--tokens") && v) {
            tokens = (uint32_t)atoi(argv[++i]);
        } else if (!strcmp(a, "--reps") && v) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(a, "--threads") && v) {
            threads = argv[++i];
        } else if (!strcmp(a, "--gistd") && v) {
            gistd = argv[++i];
        } else if (!strcmp(a, "--dat") && v) {
            dat = argv[++i];
        } else if (!strcmp(a, "--long-chat") && v) {
            chat = (uint32_t)atoi(argv[++i]);
        } else if (!strcmp(a, "--budget-rows") && v) {
            rows = (uint32_t)atoi(argv[++i]);
        } else if (!strcmp(a, "--turn") && v) {
            turn = (uint32_t)atoi(argv[++i]);
        } else if (!strcmp(a, "--policy") && v) {
            policy = argv[++i];
        } else if (a[0] != '-' && !model) {
            model = a;
        } else {
            fprintf(stderr, "usage: bench_daemon MODEL.gguf [--sessions 1,2,4,8,16] [--tokens N] "
                            "[--reps N] [--threads N] [--gistd PATH] [--dat FILE]\n"
                            "       bench_daemon MODEL.gguf --long-chat N [--budget-rows N] "
                            "[--policy P] [--turn N] [--threads N] [--gistd PATH] [--dat FILE]\n");
            return 2;
        }
    }
    if (!model || tokens < 2 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "bench_daemon: give a model, --tokens >= 2, --reps 1..%d\n", MAX_REPS);
        return 2;
    }
    char ep[256];
    pid_t pid = start_gistd(gistd, model, threads, ep, sizeof ep);
    if (pid < 0) {
        fprintf(stderr, "bench_daemon: %s did not start\n", gistd);
        return 1;
    }
    gc_client_t *c = NULL;
    err_info_t e;
    int rc = 1;
    if (gc_connect(ep, 600000, &c, &e)) {
        fprintf(stderr, "bench_daemon: %s\n", err_msg(&e));
        goto done;
    }
    bench_print_machine();
    const gc_model_info_t *mi = gc_model(c);
    printf("# model: %s (%s): n_embd %u, n_layer %u, n_head %u/%u, n_vocab %u\n", model, mi->name,
           mi->n_embd, mi->n_layer, mi->n_head, mi->n_head_kv, mi->n_vocab);
    if (chat) {
        rc = long_chat(c, chat, rows, policy, turn ? turn : 100, dat) ? 1 : 0;
        goto done;
    }
    printf("# %u tokens per session, greedy; %d repetitions, medians; gistd --threads %s\n", tokens,
           reps, threads);

    static double tps[MAX_COUNTS][MAX_REPS], tmed[MAX_COUNTS][MAX_REPS], tmax[MAX_COUNTS][MAX_REPS];
    double dummy[3];
    if (round_once(c, 1, 4, &dummy[0], &dummy[1], &dummy[2])) /* warm the caches */
        goto done;
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < n_counts; k++) {
            const int kk = r % 2 ? n_counts - 1 - k : k; /* alternate the order */
            if (round_once(c, counts[kk], tokens, &tps[kk][r], &tmed[kk][r], &tmax[kk][r]))
                goto done;
        }
    FILE *df = dat ? fopen(dat, "w") : NULL;
    if (df)
        fprintf(df, "# sessions aggregate_tok_s per_session_tok_s speedup ttft_med_ms "
                    "ttft_max_ms\n");
    printf("%8s %14s %14s %8s %14s %14s\n", "sessions", "aggregate t/s", "per session t/s",
           "speedup", "ttft med ms", "ttft max ms");
    double base = 0;
    for (int k = 0; k < n_counts; k++) {
        const double a = bench_median(tps[k], reps), m = bench_median(tmed[k], reps),
                     x = bench_median(tmax[k], reps);
        if (counts[k] == 1)
            base = a;
        const double sp = base > 0 ? a / base : 0;
        printf("%8d %14.1f %14.1f %8.2f %14.1f %14.1f\n", counts[k], a, a / counts[k], sp, m, x);
        if (df)
            fprintf(df, "%d %.3f %.3f %.3f %.3f %.3f\n", counts[k], a, a / counts[k], sp, m, x);
    }
    if (df)
        fclose(df);
    gc_stats_t st;
    if (!gc_stats(c, false, &st, &e)) {
        printf("# daemon: %llu steps, %.2f items per step on average\n",
               (unsigned long long)st.steps, st.avg_batch);
        gc_stats_free(&st);
    }
    rc = 0;
done:
    gc_disconnect(&c);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    return rc;
}
