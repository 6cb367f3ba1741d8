/*
 * bench/bench_daemon.c — gistd's aggregate decode speed against the number of concurrent
 * sessions, and the time to the first token, through libgistc on loopback.
 *
 *   bench_daemon MODEL.gguf [--sessions 1,2,4,8,16] [--tokens 32] [--reps 3] [--threads N]
 *                [--gistd PATH] [--dat FILE]
 *   bench_daemon MODEL.gguf --long-chat 100000 [--budget-rows 512] [--policy auto]
 *                [--param KEY=VALUE]... [--turn 100] [--warm 3] [--corpus DIR]
 *                [--threads N] [--gistd PATH] [--dat FILE]
 *
 * Starts its own gistd (PATH, default build/bin/gistd) on a free loopback port. For each
 * session count N, N sessions each start a greedy generation of --tokens tokens from a short
 * prompt, all at once, so the scheduler decodes them in one batch per step. Decode speed is
 * the tokens after each session's first, over the time from the last first token to the last
 * token; time to first token is measured by the client from the request. Repetitions
 * alternate the session counts; medians are printed, and the speedup over one session
 * (the requirement: at least 3.5x at 8 sessions). "decode batch" is what the daemon's
 * counters say of each round alone: the tokens its decode steps decoded over those steps
 * (the whole run's items per step would mix in the other rounds and the prompts).
 * --dat writes the table for gnuplot.
 *
 * --long-chat N: one session under a budget of --budget-rows rows' bytes (the bytes a raw
 * token takes in every lane, times the rows) and the given policy, fed turns (a short user
 * line, then a sampled assistant reply of --turn tokens) through the daemon until it has
 * seen N tokens. Every tenth turn prints a line: tokens seen, the reply's decode tokens/s,
 * the session's KV bytes, compaction events so far and the share of the last ten replies'
 * words found in the vocabulary of the training corpus (--corpus, default
 * ../shared/corpus, every *.txt but the held-out persuasion.txt). Then the verdicts:
 *   decode    the median of 5 turns after the warm-up (the turns until the budget first
 *             filled, and --warm more) against the median of the last 5: flat when the
 *             last is at least 90% of the first;
 *   kv bytes  the session's peak against its budget: never over;
 *   events    compaction events per 1,000 tokens from the turn the budget first made the
 *             policy compact, and how many freed no bytes;
 *   english   the share of reply words in the vocabulary (target 85%), over all replies and
 *             apart for replies before and after the session passed the model's context.
 */
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench_english.h"
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

/* The daemon's decode steps and the tokens they decoded, so far. */
static int decode_counts(gc_client_t *c, uint64_t *steps, uint64_t *items)
{
    gc_stats_t st;
    err_info_t e;
    if (gc_stats(c, false, &st, &e)) {
        fprintf(stderr, "bench_daemon: stats: %s\n", err_msg(&e));
        return -1;
    }
    *steps = st.decode_steps;
    *items = st.decode_items;
    gc_stats_free(&st);
    return 0;
}

/* One round: n sessions generating `tokens` each at once. */
static int round_once(gc_client_t *c, int n, uint32_t tokens, double *dec_tps, double *ttft_med,
                      double *ttft_max, double *batch)
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
    uint64_t steps0, items0, steps1, items1;
    if (decode_counts(c, &steps0, &items0))
        return -1;
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
    if (decode_counts(c, &steps1, &items1))
        return -1;
    *batch = steps1 > steps0 ? (double)(items1 - items0) / (double)(steps1 - steps0) : 0.0;
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

/* Compaction events streamed with the replies. */
typedef struct events {
    uint64_t n, freed_none;
} events_t;

/* One reply: its timing and its text, and the events streamed with it. */
typedef struct reply {
    track_t t;
    events_t *ev;
    size_t len;
    char text[1 << 16];
} reply_t;

static int on_reply_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    reply_t *r = ctx;
    if (r->len + len < sizeof r->text) {
        memcpy(r->text + r->len, piece, len);
        r->len += len;
    }
    return on_token(&r->t, session, id, piece, len);
}

static void on_event(void *ctx, uint32_t session, const gc_compaction_t *c)
{
    events_t *ev = ((reply_t *)ctx)->ev;
    if (!strcmp(c->action, "expand"))
        return; /* a re-expansion stores bytes: counted from the session's figures */
    ev->n++;
    ev->freed_none += c->bytes_freed <= 0;
}

static double pct(uint64_t part, uint64_t whole)
{
    return whole ? 100.0 * (double)part / (double)whole : 0.0;
}

#define MAX_PARAMS 8

typedef struct chat_opts {
    uint32_t total, rows, turn, warm;
    const char *policy, *corpus, *dat, *tmpl;
    const char *keys[MAX_PARAMS], *values[MAX_PARAMS]; /* --param key=value */
    uint32_t n_params;
} chat_opts_t;

/* One session fed turns until it has seen o->total tokens (see the header). */
static int long_chat(gc_client_t *c, const chat_opts_t *o)
{
    static const char *const lines[] = {"Tell me more.", "What happened next?",
                                        "And then what did they do?", "Why was that?"};
    bench_vocab_t voc = {0};
    if (bench_vocab_load(&voc, o->corpus, "persuasion.txt") < 0)
        return -1;
    gc_stats_t st;
    err_info_t e;
    if (gc_stats(c, false, &st, &e)) {
        fprintf(stderr, "bench_daemon: %s\n", err_msg(&e));
        bench_vocab_free(&voc);
        return -1;
    }
    const size_t budget = (size_t)st.kv_bytes_per_token * o->rows;
    const uint32_t n_ctx = gc_model(c)->n_ctx;
    gc_stats_free(&st);
    gc_open_opts_t oo = {.policy = o->policy,
                         .param_keys = o->keys,
                         .param_values = o->values,
                         .n_params = o->n_params,
                         .budget_bytes = budget,
                         .chat_template = o->tmpl};
    uint32_t s;
    if (gc_open(c, &oo, &s, &e)) {
        fprintf(stderr, "bench_daemon: open: %s\n", err_msg(&e));
        bench_vocab_free(&voc);
        return -1;
    }
    const uint32_t max_turns = o->total / 8 + 64;
    double *tps = calloc(max_turns, sizeof *tps);
    reply_t *r = malloc(sizeof *r);
    FILE *df = o->dat ? fopen(o->dat, "w") : NULL;
    printf("# long chat: chat template %s, policy %s", *o->tmpl ? o->tmpl : "the model's",
           o->policy);
    for (uint32_t i = 0; i < o->n_params; i++)
        printf(" %s=%s", o->keys[i], o->values[i]);
    printf(", budget %zu bytes (%u rows), %u-token replies, model context %u; vocabulary of %zu "
           "words from %s (persuasion.txt left out)\n",
           budget, o->rows, o->turn, n_ctx, voc.n, o->corpus);
    printf("%10s %12s %14s %10s %12s %10s\n", "seen", "decode t/s", "kv bytes", "events", "ratio",
           "english %");
    if (df)
        fprintf(df, "# seen decode_tok_s kv_bytes events compression english_pct\n");
    gc_sampling_t smp = {
        .temp = 0.8f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.0f, .seed = 7};
    events_t ev = {0};
    bench_english_t all = {0}, in_ctx = {0}, past = {0}, win = {0}; /* counts only */
    uint32_t seen = 0, k = 0, steady_from = 0;
    uint64_t steady_ev0 = 0, peak = 0, events = 0, expansions = 0, expand_tokens = 0;
    uint32_t steady_turn = 0; /* the turn in which the budget first filled */
    int rc = 0;
    while (seen < o->total && k < max_turns && tps && r) {
        r->len = 0;
        r->ev = &ev;
        memset(&r->t, 0, sizeof r->t);
        gc_gen_opts_t go = {.session = s,
                            .max_tokens = o->turn,
                            .prompt = lines[k % 4],
                            .prompt_role = GC_ROLE_USER,
                            .role = GC_ROLE_ASSISTANT,
                            .sampling = &smp};
        gc_callbacks_t cb = {.ctx = r, .on_token = on_reply_token, .on_compaction = on_event};
        gc_result_t res = {0};
        if (gc_generate(c, &go, &cb, &res, &e)) {
            fprintf(stderr, "bench_daemon: turn %u: %s\n", k + 1, err_msg(&e));
            rc = -1;
            break;
        }
        gc_result_free(&res);
        gc_session_info_t si;
        if (gc_session_info(c, s, &si, &e)) {
            fprintf(stderr, "bench_daemon: session info: %s\n", err_msg(&e));
            rc = -1;
            break;
        }
        const uint32_t before = seen;
        seen = si.tokens;
        events = si.compactions;
        expansions = si.expansions;
        expand_tokens = si.expand_tokens;
        peak = si.peak_bytes > peak ? si.peak_bytes : peak;
        if (!steady_from && events > 0) { /* the budget is full from here on */
            steady_from = seen;
            steady_ev0 = events;
            steady_turn = k;
        }
        tps[k] = r->t.n > 1 && r->t.t_last > r->t.t_first
                     ? (r->t.n - 1) / (r->t.t_last - r->t.t_first)
                     : 0;
        bench_english_t one = {.v = &voc};
        bench_english_count(&one, r->text, r->len);
        bench_english_t *part = before < n_ctx ? &in_ctx : &past;
        all.words += one.words, win.words += one.words, part->words += one.words;
        all.known += one.known, win.known += one.known, part->known += one.known;
        k++;
        if (k % 10 == 0 || seen >= o->total) {
            printf("%10u %12.1f %14llu %10llu %12.2f %10.1f\n", seen, tps[k - 1],
                   (unsigned long long)si.bytes, (unsigned long long)events, si.compression,
                   pct(win.known, win.words));
            win.words = win.known = 0;
        }
        if (df)
            fprintf(df, "%u %.3f %llu %llu %.3f %.2f\n", seen, tps[k - 1],
                    (unsigned long long)si.bytes, (unsigned long long)events, si.compression,
                    pct(one.known, one.words));
    }
    if (df)
        fclose(df);
    if (rc == 0 && k > 0) {
        /* medians of 5 turns: a single turn is at the mercy of the machine's other work */
        /* warm-up: until the budget has filled (the store grows until then, and attention
         * with it), then --warm turns more */
        uint32_t w = steady_turn + o->warm;
        w = w + 5 <= k ? w : (k > 5 ? k - 5 : 0);
        const uint32_t m = k - w < 5 ? k - w : 5;
        double a[5], b[5];
        memcpy(a, tps + w, m * sizeof *a);
        memcpy(b, tps + k - m, m * sizeof *b);
        const double first = bench_median(a, (int)m), last = bench_median(b, (int)m);
        printf("# decode: turns %u-%u %.1f tokens/s, last %u turns %.1f tokens/s (%.0f%%): %s "
               "(flat: the last at least 90%% of the first)\n",
               w + 1, w + m, first, m, last, first > 0 ? 100.0 * last / first : 0.0,
               first > 0 && last >= 0.9 * first ? "flat" : "NOT flat");
        printf("# kv bytes: peak %llu of a budget of %zu: %s\n", (unsigned long long)peak, budget,
               peak <= budget ? "never over" : "OVER THE BUDGET");
        if (steady_from)
            printf("# compactions: %llu events in %u tokens; %.1f per 1,000 tokens from %u tokens "
                   "seen (the budget full); %llu of the %llu streamed freed no bytes\n",
                   (unsigned long long)events, seen,
                   seen > steady_from
                       ? 1000.0 * (double)(events - steady_ev0) / (seen - steady_from)
                       : 0.0,
                   steady_from, (unsigned long long)ev.freed_none, (unsigned long long)ev.n);
        else
            printf("# compactions: none in %u tokens (the budget never filled)\n", seen);
        printf("# expansions: %llu spans, %llu tokens re-prefilled (%.1f per turn)\n",
               (unsigned long long)expansions, (unsigned long long)expand_tokens,
               k ? (double)expand_tokens / k : 0.0);
        r->text[r->len < 240 ? r->len : 240] = '\0';
        for (char *q = r->text; *q; q++)
            *q = *q == '\n' ? ' ' : *q;
        printf("# the last reply: \"%s\"\n", r->text);
        printf("# english: %.1f%% of %llu reply words in the corpus vocabulary (target 85%%): %s; "
               "replies before the model's context of %u tokens %.1f%% (%llu words), after it "
               "%.1f%% (%llu words)\n",
               pct(all.known, all.words), (unsigned long long)all.words,
               pct(all.known, all.words) >= 85.0 ? "English" : "NOT English", n_ctx,
               pct(in_ctx.known, in_ctx.words), (unsigned long long)in_ctx.words,
               pct(past.known, past.words), (unsigned long long)past.words);
    }
    free(tps);
    free(r);
    bench_vocab_free(&voc);
    gc_close(c, s, &e);
    return rc;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *gistd = "build/bin/gistd", *dat = NULL, *threads = "0";
    const char *policy = "auto", *tmpl = "";
    int counts[MAX_COUNTS] = {1, 2, 4, 8, 16}, n_counts = 5, reps = 3;
    uint32_t tokens = 32, chat = 0, rows = 512, turn = 100, warm = 3;
    const char *corpus = NULL, *pkeys[MAX_PARAMS], *pvalues[MAX_PARAMS];
    uint32_t n_params = 0;
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
        } else if (!strcmp(a, "--param") && v && strchr(v, '=') && n_params < MAX_PARAMS) {
            char *kv = argv[++i], *eq = strchr(kv, '=');
            *eq = '\0';
            pkeys[n_params] = kv;
            pvalues[n_params++] = eq + 1;
        } else if (!strcmp(a, "--warm") && v) {
            warm = (uint32_t)atoi(argv[++i]);
        } else if (!strcmp(a, "--corpus") && v) {
            corpus = argv[++i];
        } else if (!strcmp(a, "--turn") && v) {
            turn = (uint32_t)atoi(argv[++i]);
        } else if (!strcmp(a, "--policy") && v) {
            policy = argv[++i];
        } else if (!strcmp(a, "--chat-template") && v) {
            tmpl = argv[++i];
        } else if (a[0] != '-' && !model) {
            model = a;
        } else {
            fprintf(stderr,
                    "usage: bench_daemon MODEL.gguf [--sessions 1,2,4,8,16] [--tokens N] "
                    "[--reps N] [--threads N] [--gistd PATH] [--dat FILE]\n"
                    "       bench_daemon MODEL.gguf --long-chat N [--budget-rows N] "
                    "[--policy P] [--param K=V] [--chat-template T] [--turn N] [--warm N] [--corpus DIR] [--threads N] "
                    "[--gistd PATH] [--dat FILE]\n");
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
        char dir[4096];
        const char *shared = getenv("GISTD_SHARED");
        snprintf(dir, sizeof dir, "%s/corpus", shared && *shared ? shared : "../shared");
        chat_opts_t co = {.total = chat,
                          .rows = rows ? rows : 512,
                          .turn = turn ? turn : 100,
                          .warm = warm,
                          .policy = policy,
                          .tmpl = tmpl,
                          .corpus = corpus ? corpus : dir,
                          .dat = dat,
                          .n_params = n_params};
        memcpy(co.keys, pkeys, n_params * sizeof *pkeys);
        memcpy(co.values, pvalues, n_params * sizeof *pvalues);
        rc = long_chat(c, &co) ? 1 : 0;
        goto done;
    }
    printf("# %u tokens per session, greedy; %d repetitions, medians; gistd --threads %s\n", tokens,
           reps, threads);

    static double tps[MAX_COUNTS][MAX_REPS], tmed[MAX_COUNTS][MAX_REPS], tmax[MAX_COUNTS][MAX_REPS];
    static double batch[MAX_COUNTS][MAX_REPS];
    double dummy[4];
    if (round_once(c, 1, 4, &dummy[0], &dummy[1], &dummy[2], &dummy[3])) /* warm the caches */
        goto done;
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < n_counts; k++) {
            const int kk = r % 2 ? n_counts - 1 - k : k; /* alternate the order */
            if (round_once(c, counts[kk], tokens, &tps[kk][r], &tmed[kk][r], &tmax[kk][r],
                           &batch[kk][r]))
                goto done;
        }
    FILE *df = dat ? fopen(dat, "w") : NULL;
    if (df)
        fprintf(df, "# sessions aggregate_tok_s per_session_tok_s speedup ttft_med_ms "
                    "ttft_max_ms decode_batch\n");
    printf("%8s %14s %14s %8s %14s %14s %13s\n", "sessions", "aggregate t/s", "per session t/s",
           "speedup", "ttft med ms", "ttft max ms", "decode batch");
    double base = 0;
    for (int k = 0; k < n_counts; k++) {
        const double a = bench_median(tps[k], reps), m = bench_median(tmed[k], reps),
                     x = bench_median(tmax[k], reps), bt = bench_median(batch[k], reps);
        if (counts[k] == 1)
            base = a;
        const double sp = base > 0 ? a / base : 0;
        printf("%8d %14.1f %14.1f %8.2f %14.1f %14.1f %13.2f\n", counts[k], a, a / counts[k], sp, m,
               x, bt);
        if (df)
            fprintf(df, "%d %.3f %.3f %.3f %.3f %.3f %.3f\n", counts[k], a, a / counts[k], sp, m, x,
                    bt);
    }
    if (df)
        fclose(df);
    gc_stats_t st;
    if (!gc_stats(c, false, &st, &e)) {
        printf("# daemon, the whole run (every round, prompts too): %llu steps, %.2f items per "
               "step\n",
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
