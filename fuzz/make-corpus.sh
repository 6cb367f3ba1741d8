#!/usr/bin/env bash
# Rewrites the checked-in seed corpora, fuzz/corpus/<target>/, from the current build:
# tiny random-weight models from `gist-model make-tiny` (small shapes, several storage types,
# gist tokens and retention gates) and the crafted files of fuzz/seeds.c.
# Usage: fuzz/make-corpus.sh [BUILD_DIR]   (default build; run `make` first)
set -eu
build=${1:-build}
cd "$(dirname "$0")/.."
tool=$build/bin/gist-model
[ -x "$tool" ] || { echo "make-corpus: $tool is missing; run make first" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# shellcheck disable=SC2046
cc -std=c11 -D_GNU_SOURCE -I. -I"$build/gen" -O1 -o "$tmp/seeds" fuzz/seeds.c \
    "$build"/lib/libgist_proto.a "$build"/lib/libgist_kvstore.a "$build"/lib/libgist_model.a \
    "$build"/lib/libgist_common.a $(pkg-config --libs jemalloc openblas libprotobuf-c) -fopenmp -lm
mkdir -p "$tmp/out"
"$tmp/seeds" "$tmp/out"

g=$tmp/out/fuzz_gguf
"$tool" make-tiny "$g/tiny-f32-tied.gguf" --seed 1 --n-embd 8 --n-layer 1 --n-head 2 \
    --n-head-kv 1 --n-ff 8 --n-vocab 259 --n-ctx 16 --tied >/dev/null
"$tool" make-tiny "$g/tiny-q8_0-gist-gates.gguf" --seed 2 --type q8_0 --n-embd 32 --n-layer 1 \
    --n-head 2 --n-head-kv 1 --n-ff 32 --n-vocab 262 --n-ctx 16 --gist 2 \
    --retention-hidden 4 >/dev/null
"$tool" make-tiny "$g/tiny-f16-2layers.gguf" --seed 3 --type f16 --n-embd 16 --n-layer 2 \
    --n-head 4 --n-head-kv 2 --n-ff 16 --n-vocab 259 --n-ctx 8 >/dev/null
# The tiny models carry a real vocabulary: a seed for the vocabulary target as well.
cp "$g/tiny-f32-tied.gguf" "$tmp/out/fuzz_gguf_vocab/"

for t in "$tmp"/out/*/; do
    name=$(basename "$t")
    rm -rf "fuzz/corpus/$name"
    mkdir -p "fuzz/corpus/$name"
    cp "$t"/* "fuzz/corpus/$name/"
    echo "fuzz/corpus/$name: $(ls "$t" | wc -l) files, $(du -sk "$t" | cut -f1) KiB"
done
