/*
 * tools/gist-model/cmd_tokenize.c — `gist-model tokenize` and `gist-model detokenize`.
 *
 *   tokenize MODEL [--bos] [--special] (--text STR | --file F)
 *       prints the token ids on one line, space separated, then a newline.
 *       --bos prepends BOS; --special finds control-token texts ("<s>") in the text.
 *   detokenize MODEL --tokens "ID ID ..."
 *       prints the text, exactly its bytes, with no newline added. BOS, EOS and other
 *       control tokens print nothing; SentencePiece's added leading space is dropped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/tokenizer.h"
#include "tools/gist-model/cmd.h"

/* Opens model and its tokenizer; on failure prints the reason and returns 2. */
static int open_tokenizer(const char *cmd, const char *path, gguf_t **g, tok_t **t)
{
    err_info_t e;
    err_clear(&e);
    *g = NULL;
    *t = NULL;
    if (gguf_open(path, g, &e) || tok_new(*g, t, &e)) {
        gguf_close(g);
        return cmd_usage_error("%s: %s: %s", cmd, path, err_msg(&e));
    }
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *file = NULL;
    bool bos = false, special = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--bos")) {
            bos = true;
        } else if (!strcmp(argv[i], "--special")) {
            special = true;
        } else if (!strcmp(argv[i], "--text") || !strcmp(argv[i], "--file")) {
            if (i + 1 >= argc)
                return cmd_usage_error("tokenize: %s needs a value", argv[i]);
            if (text || file)
                return cmd_usage_error("tokenize: give one of --text or --file");
            if (!strcmp(argv[i], "--text"))
                text = argv[++i];
            else
                file = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return cmd_usage_error("tokenize: unknown option '%s'", argv[i]);
        } else if (!model) {
            model = argv[i];
        } else {
            return cmd_usage_error("tokenize: unexpected argument '%s'", argv[i]);
        }
    }
    if (!model || (!text && !file))
        return cmd_usage_error(
            "tokenize: expected MODEL [--bos] [--special] (--text STR | --file F)");

    char *owned = NULL;
    size_t len;
    if (file) {
        if (cmd_read_file(file, &owned, &len))
            return 2;
        text = owned;
    } else {
        len = strlen(text);
    }
    gguf_t *g;
    tok_t *t;
    int status = open_tokenizer("tokenize", model, &g, &t);
    if (status) {
        free(owned);
        return status;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tok_encode(t, text, len, bos, special, &ids, &n);
    if (rc == ERR_NOTFOUND) {
        status = cmd_usage_error("tokenize: %s has no BOS token", model);
    } else if (rc) {
        fprintf(stderr, "gist-model: tokenize: %s\n", err_str(rc));
        status = 1;
    } else {
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
        if (fflush(stdout) != 0)
            status = 1;
    }
    free(ids);
    free(owned);
    tok_destroy(&t);
    gguf_close(&g);
    return status;
}

/* Parses "ID ID ..." (spaces, tabs, newlines or commas between) into a malloc'd array. */
static int parse_ids(const char *s, uint32_t n_vocab, int32_t **out, size_t *n_out)
{
    size_t cap = strlen(s) / 2 + 1, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return cmd_usage_error("detokenize: out of memory");
    for (const char *p = s;;) {
        p += strspn(p, " \t\r\n,");
        if (!*p)
            break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        size_t tok_len = strcspn(p, " \t\r\n,");
        if (end != p + tok_len || errno) {
            free(ids);
            return cmd_usage_error("detokenize: '%.*s' is not a token id", (int)tok_len, p);
        }
        if (v < 0 || v >= n_vocab) {
            free(ids);
            return cmd_usage_error("detokenize: token id %lld is outside the vocabulary "
                                   "(%u tokens)",
                                   v, n_vocab);
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *model = NULL, *tokens = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens")) {
            if (i + 1 >= argc)
                return cmd_usage_error("detokenize: --tokens needs a value");
            tokens = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            return cmd_usage_error("detokenize: unknown option '%s'", argv[i]);
        } else if (!model) {
            model = argv[i];
        } else {
            return cmd_usage_error("detokenize: unexpected argument '%s'", argv[i]);
        }
    }
    if (!model || !tokens)
        return cmd_usage_error("detokenize: expected MODEL --tokens \"ID ID ...\"");

    gguf_t *g;
    tok_t *t;
    int status = open_tokenizer("detokenize", model, &g, &t);
    if (status)
        return status;
    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL;
    size_t len = 0;
    status = parse_ids(tokens, tok_n_vocab(t), &ids, &n);
    if (status == 0) {
        int rc = tok_decode(t, ids, n, &text, &len);
        if (rc) {
            fprintf(stderr, "gist-model: detokenize: %s\n", err_str(rc));
            status = 1;
        } else if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
            status = 1;
        }
    }
    free(text);
    free(ids);
    tok_destroy(&t);
    gguf_close(&g);
    return status;
}
