#!/usr/bin/env bash
# Prefill and decode speed of random-weight models (seed 1) at 1 and 2 threads, against the
# machine's bandwidth bound: SmolLM2-135M-shaped in F32, F16 and Q8_0 (and any type whose
# blocks fit its rows of 576), Qwen3-0.6B-shaped (rows of 1024 and 3072: whole 256-blocks)
# for the K-quants, e.g. q4_K_M and q6_K.
# The models (about 1 GB for the first three, 0.9 GB for q4_K_M and q6_K) are made once
# under bench/out/ (git-ignored); the table is also written to bench/out/model-bench.txt.
# Usage: bench/run-model-bench.sh [TYPES (default "f32 f16 q8_0")] [extra bench_model args]
set -euo pipefail
cd "$(dirname "$0")/.."
types=${1:-f32 f16 q8_0}
shift || true
make -j2 --no-print-directory build/bin/gist-model build/bin/bench_model >/dev/null
mkdir -p bench/out
models=()
for t in $types; do
    case $t in
    q[2-6]_[kK]*) # Qwen3-0.6B: 28 layers, 16 heads of 128 over 8 kv-heads, tied output
        shape=qwen3-0.6b
        args=(--arch qwen3 --n-embd 1024 --n-layer 28 --n-head 16 --n-head-kv 8 --head-dim 128
            --n-ff 3072 --n-vocab 151936 --n-ctx 4096 --tied) ;;
    *)
        shape=smollm2-135m
        args=(--n-embd 576 --n-layer 30 --n-head 9 --n-head-kv 3 --n-ff 1536 --n-vocab 49152
            --n-ctx 2048) ;;
    esac
    f=bench/out/$shape-shape-$t.gguf
    if [ ! -s "$f" ]; then
        echo "making $f" >&2
        build/bin/gist-model make-tiny "$f.tmp" --seed 1 --type "$t" "${args[@]}" >/dev/null
        mv "$f.tmp" "$f"
    fi
    models+=("$f")
done
build/bin/bench_model "${models[@]}" --threads 1,2 --prefill 512 --decode 128 "$@" |
    tee bench/out/model-bench.txt
