#!/usr/bin/env bash
# Decode and prefill speed at depth (bench_depth): a SmolLM2-135M-shaped model with random weights
# (seed 1, context 32768 so that every depth is inside it), decoding after 0, 1k, 4k and 8k
# tokens with the full cache and under a 47 MB budget, for f32, f16 and q8_0 rows, the
# variants alternated in each round. The model (about 145 MB at q8_0) is made once under
# bench/out/ (git-ignored); the table is also written to bench/out/depth-bench.txt.
# Usage: bench/run-depth-bench.sh [WEIGHT TYPE (default q8_0)] [extra bench_depth args]
#   e.g. bench/run-depth-bench.sh q8_0 --depths 0,1024,4096,8192,32768 --rounds 5
#   a quick check: bench/run-depth-bench.sh q8_0 --depths 0,1024 --decode 8 --rounds 2
set -euo pipefail
cd "$(dirname "$0")/.."
wtype=${1:-q8_0}
shift || true
make -j2 --no-print-directory build/bin/gist-model build/bin/bench_depth >/dev/null
mkdir -p bench/out
f=bench/out/smollm2-135m-shape-$wtype-ctx32k.gguf
if [ ! -s "$f" ]; then
    echo "making $f" >&2
    build/bin/gist-model make-tiny "$f.tmp" --seed 1 --type "$wtype" --n-embd 576 --n-layer 30 \
        --n-head 9 --n-head-kv 3 --n-ff 1536 --n-vocab 49152 --n-ctx 32768 >/dev/null
    mv "$f.tmp" "$f"
fi
build/bin/bench_depth "$f" --threads 2 "$@" | tee bench/out/depth-bench.txt
