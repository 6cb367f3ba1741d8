/*
 * clients/gistctl/opts.c — the options that every command which generates shares: the prompt
 * (--prompt STR, or --prompt-file F with '-' for standard input) and the sampler's settings.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistctl/ctl.h"

int ctl_gen_opt(const char *a, const char *val, ctl_gen_opts_t *g, int *bad)
{
    unsigned long v;
    *bad = 0;
    if (!strcmp(a, "--prompt")) {
        g->prompt.text = val;
        g->prompt.file = NULL;
    } else if (!strcmp(a, "--prompt-file")) {
        g->prompt.file = val;
        g->prompt.text = NULL;
    } else if (!strcmp(a, "--temp")) {
        *bad = ctl_float(a, val, &g->smp.temp);
    } else if (!strcmp(a, "--top-k")) {
        *bad = ctl_uint(a, val, INT32_MAX, &v);
        g->smp.top_k = (int32_t)v;
    } else if (!strcmp(a, "--top-p")) {
        *bad = ctl_float(a, val, &g->smp.top_p);
    } else if (!strcmp(a, "--min-p")) {
        *bad = ctl_float(a, val, &g->smp.min_p);
    } else if (!strcmp(a, "--repeat-penalty")) {
        *bad = ctl_float(a, val, &g->smp.repeat_penalty);
    } else if (!strcmp(a, "--seed")) {
        char *end;
        errno = 0;
        g->smp.seed = strtoull(val, &end, 10);
        *bad = errno || *end || end == val || val[0] == '-'
                   ? ctl_usage("--seed: '%s' is not an unsigned integer", val)
                   : 0;
    } else {
        return 0;
    }
    if (strcmp(a, "--prompt") && strcmp(a, "--prompt-file"))
        g->sampled = true;
    return 1;
}

void ctl_gen_opts_init(ctl_gen_opts_t *g)
{
    memset(g, 0, sizeof *g);
    gc_sampling_default(&g->smp);
}

int ctl_prompt_read(ctl_prompt_t *p)
{
    if (!p->file) {
        p->len = p->text ? strlen(p->text) : 0;
        return 0;
    }
    const bool std_in = !strcmp(p->file, "-");
    FILE *f = std_in ? stdin : fopen(p->file, "rb");
    if (!f)
        return ctl_usage("--prompt-file: cannot open '%s': %s", p->file, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *t = realloc(buf, cap * 2 + 1);
        if (!t) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = t;
        cap *= 2;
    }
    const bool failed = ferror(f);
    if (!std_in)
        fclose(f);
    if (!buf || failed) {
        free(buf);
        return ctl_usage("--prompt-file: cannot read '%s'%s", p->file,
                         buf ? "" : ": out of memory");
    }
    buf[n] = 0;
    p->buf = buf;
    p->text = buf;
    p->len = n;
    return 0;
}

void ctl_prompt_free(ctl_prompt_t *p)
{
    free(p->buf);
    p->buf = NULL;
}
