/*
 * bench/bench_tokenize.c — tokenizer speed: encode and decode about 1 MiB of text.
 *
 *   build/bin/bench_tokenize VOCAB.gguf TEXT [--bytes N] [--reps R]
 *
 * Takes the first N bytes of TEXT (default 1 MiB, cut back to a line end), encodes them
 * R times (default 5, at most 32) and decodes the ids R times, and prints the best and
 * median MB/s of each with the machine it ran on. Checks the decoded text equals the
 * input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

enum { MAX_REPS = 32 };

static char *read_prefix(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max, f) : 0;
    int more = fgetc(f) != EOF;
    fclose(f);
    if (!buf)
        return NULL;
    if (more) /* cut back to a line end, so no UTF-8 character is split */
        while (n > 0 && buf[n - 1] != '\n')
            n--;
    buf[n] = '\0';
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenize VOCAB.gguf TEXT [--bytes N] [--reps R]\n");
        return 2;
    }
    size_t max = 1u << 20;
    int reps = 5;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--bytes"))
            max = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
    }
    if (reps < 1 || reps > MAX_REPS || max == 0) {
        fprintf(stderr, "bench_tokenize: bad --bytes or --reps\n");
        return 2;
    }

    err_info_t e;
    err_clear(&e);
    gguf_t *g = NULL;
    tok_t *t = NULL;
    double t0 = bench_now();
    if (gguf_open(argv[1], &g, &e) || tok_new(g, &t, &e)) {
        fprintf(stderr, "bench_tokenize: %s: %s\n", argv[1], err_msg(&e));
        gguf_close(&g);
        return 2;
    }
    double load_s = bench_now() - t0;
    size_t len;
    char *text = read_prefix(argv[2], max, &len);
    if (!text) {
        fprintf(stderr, "bench_tokenize: cannot read %s\n", argv[2]);
        return 2;
    }

    bench_print_machine();
    printf("vocab: %s (%s, %u tokens), loaded in %.1f ms\n", argv[1],
           tok_kind(t) == TOK_SPM ? "SentencePiece" : "byte-level BPE", tok_n_vocab(t),
           1e3 * load_s);
    printf("text: %s, %zu bytes\n", argv[2], len);

    double enc[MAX_REPS], dec[MAX_REPS];
    size_t n_ids = 0;
    int status = 0;
    for (int r = 0; r < reps && status == 0; r++) {
        int32_t *ids;
        char *back;
        size_t blen;
        double a = bench_now();
        if (tok_encode(t, text, len, false, false, &ids, &n_ids)) {
            fprintf(stderr, "bench_tokenize: encode failed\n");
            status = 1;
            break;
        }
        double b = bench_now();
        if (tok_decode(t, ids, n_ids, &back, &blen)) {
            fprintf(stderr, "bench_tokenize: decode failed\n");
            free(ids);
            status = 1;
            break;
        }
        double c = bench_now();
        if (blen != len || memcmp(back, text, len)) {
            fprintf(stderr, "bench_tokenize: decoded text differs from the input\n");
            status = 1;
        }
        enc[r] = b - a;
        dec[r] = c - b;
        free(ids);
        free(back);
    }
    if (status == 0) {
        double mb = (double)len / 1e6;
        /* bench_median sorts, so [0] is then the best run */
        double enc_med = bench_median(enc, reps), dec_med = bench_median(dec, reps);
        printf("tokens: %zu (%.2f bytes per token)\n", n_ids, (double)len / (double)n_ids);
        printf("encode: best %.1f ms = %.2f MB/s, median %.2f MB/s (%d runs)\n", 1e3 * enc[0],
               mb / enc[0], mb / enc_med, reps);
        printf("decode: best %.1f ms = %.2f MB/s, median %.2f MB/s\n", 1e3 * dec[0], mb / dec[0],
               mb / dec_med);
    }
    free(text);
    tok_destroy(&t);
    gguf_close(&g);
    return status;
}
