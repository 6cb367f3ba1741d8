#!/usr/bin/env bash
# Prefill and decode speed of SmolLM2-135M-shaped models (random weights, seed 1) in F32,
# F16 and Q8_0 at 1 and 2 threads, against the machine's bandwidth bound.
# The models (about 1 GB in all) are made once under bench/out/ (git-ignored); the table
# is also written to bench/out/model-bench.txt.
# Usage: bench/run-model-bench.sh [TYPES (default "f32 f16 q8_0")] [extra bench_model args]
set -euo pipefail
cd "$(dirname "$0")/.."
types=${1:-f32 f16 q8_0}
shift || true
make -j2 --no-print-directory build/bin/gist-model build/bin/bench_model >/dev/null
mkdir -p bench/out
models=()
for t in $types; do
    f=bench/out/smollm2-135m-shape-$t.gguf
    if [ ! -s "$f" ]; then
        echo "making $f" >&2
        build/bin/gist-model make-tiny "$f.tmp" --seed 1 --type "$t" --n-embd 576 --n-layer 30 \
            --n-head 9 --n-head-kv 3 --n-ff 1536 --n-vocab 49152 --n-ctx 2048 >/dev/null
        mv "$f.tmp" "$f"
    fi
    models+=("$f")
done
build/bin/bench_model "${models[@]}" --threads 1,2 --prefill 512 --decode 128 "$@" |
    tee bench/out/model-bench.txt
