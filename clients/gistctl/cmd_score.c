/*
 * clients/gistctl/cmd_score.c — `gistctl score`: a whole file's perplexity through the daemon,
 * as one session under its policy and budget (the figure `gist-model perplexity --ctx 0`
 * gives for the same text, budget and policy).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistctl/ctl.h"

#define SCORE_CHUNK 65536 /* bytes of text per Score request, cut after a newline */

/* The end of the chunk that starts at `at`: after the last newline within SCORE_CHUNK bytes
 * (tokens do not cross a line end), or SCORE_CHUNK bytes on when there is none. */
static size_t chunk_end(const char *text, size_t len, size_t at)
{
    if (len - at <= SCORE_CHUNK)
        return len;
    for (size_t i = at + SCORE_CHUNK; i > at; i--)
        if (text[i - 1] == '\n')
            return i;
    return at + SCORE_CHUNK;
}

int ctl_score(ctl_t *x, int argc, char **argv)
{
    const char *policy = NULL;
    ctl_prompt_t prompt = {0};
    size_t budget = 0;
    uint32_t session = 0;
    ctl_params_t pp = {.n = 0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val)
            return ctl_usage("score: '%s' needs a value or is unknown", a);
        i++;
        unsigned long v;
        if (!strcmp(a, "--prompt-file") || !strcmp(a, "--file")) {
            prompt.file = val;
        } else if (!strcmp(a, "--policy")) {
            policy = val;
        } else if (!strcmp(a, "--budget")) {
            if (gc_parse_size(val, &budget))
                return ctl_usage("--budget: '%s' is not a size (bytes, 64K, 1.5M)", val);
        } else if (!strcmp(a, "--param")) {
            if (ctl_param(&pp, val))
                return CTL_USAGE;
        } else if (!strcmp(a, "--session")) {
            if (ctl_uint(a, val, UINT32_MAX, &v) || v == 0)
                return ctl_usage("--session: '%s' is not a session id", val);
            session = (uint32_t)v;
        } else {
            return ctl_usage("score: unknown option '%s'", a);
        }
    }
    if (!prompt.file)
        return ctl_usage("usage: gistctl score --prompt-file F|- [--policy P] [--budget SIZE] "
                         "[--param KEY=VALUE]... [--session ID]");
    if (session && (policy || budget || pp.n))
        return ctl_usage("score: --policy, --budget and --param are for a new session, not "
                         "--session %u",
                         session);
    if (ctl_prompt_read(&prompt))
        return CTL_USAGE;
    char *text = prompt.buf; /* the file's bytes, NUL-terminated */
    const size_t len = prompt.len;
    int st = CTL_OK;
    gc_client_t *c = ctl_client(x, &st);
    if (!c) {
        ctl_prompt_free(&prompt);
        return st;
    }
    /* Ctrl-C (gistctl's handler, in place before the session exists) ends the scoring between
     * requests; the session this command opens is closed on every path */
    err_info_t e;
    err_clear(&e);
    const bool opened = session == 0;
    if (opened) {
        gc_open_opts_t o = {.policy = policy,
                            .param_keys = pp.key,
                            .param_values = pp.value,
                            .n_params = pp.n,
                            .budget_bytes = budget,
                            .name = "score"};
        if (gc_open(c, &o, &session, &e)) {
            ctl_prompt_free(&prompt);
            return ctl_fail(&e);
        }
    }
    double nll = 0.0;
    size_t scored = 0, n_tokens = 0;
    int rc = CTL_OK;
    for (size_t at = 0; at < len && !ctl_interrupted();) {
        const size_t end = chunk_end(text, len, at);
        char save = text[end];
        text[end] = 0;
        float *lp = NULL;
        int32_t *tok = NULL;
        size_t n = 0;
        double total;
        int r = gc_score(c, session, text + at, NULL, 0, &lp, &tok, &n, &total, &e);
        text[end] = save;
        if (r) {
            rc = ctl_interrupted() ? CTL_INTERRUPTED : ctl_fail(&e);
            free(lp);
            free(tok);
            break;
        }
        for (size_t i = 0; i < n; i++)
            if (isfinite(lp[i])) { /* the session's very first token has no prediction */
                nll -= lp[i];
                scored++;
            }
        n_tokens += n;
        free(lp);
        free(tok);
        at = end;
    }
    if (ctl_interrupted()) {
        fprintf(stderr, "gistctl: score interrupted after %zu tokens\n", n_tokens);
        rc = CTL_INTERRUPTED;
    }
    gc_session_info_t info;
    memset(&info, 0, sizeof info);
    err_info_t ie;
    err_clear(&ie);
    const bool have_info = gc_session_info(c, session, &info, &ie) == 0;
    if (opened) {
        const int crc = ctl_close_quietly(c, session, x->timeout_ms);
        if (crc && rc == CTL_OK) {
            fprintf(stderr, "gistctl: cannot close session %u: %s\n", session, err_str(crc));
            rc = crc == ERR_TIMEOUT ? CTL_NO_ANSWER : CTL_DAEMON;
        }
    }
    ctl_prompt_free(&prompt);
    if (rc != CTL_OK)
        return rc;
    printf("session: %u%s\n", session, opened ? " (closed)" : "");
    printf("policy: %s\n", have_info ? info.policy : "?");
    printf("tokens: %zu\n", scored);
    printf("peak_kv_bytes: %llu\n", (unsigned long long)info.peak_bytes);
    printf("compactions: %u\n", info.compactions);
    printf("ppl: %.4f\n", scored ? exp(nll / (double)scored) : NAN);
    return CTL_OK;
}
