#!/usr/bin/env bash
# gistd's aggregate decode speed and time to first token against 1, 2, 4, 8 and 16
# concurrent sessions, on the SmolLM2-135M-shaped model (random weights, seed 1; made once
# under bench/out/, git-ignored). Writes bench/out/daemon-bench.txt and .dat, and
# bench/out/daemon-bench.png when gnuplot is installed.
# Usage: bench/run-daemon-bench.sh [TYPE (default q8_0)] [extra bench_daemon args]
set -euo pipefail
cd "$(dirname "$0")/.."
type=${1:-q8_0}
shift || true
make -j2 --no-print-directory build/bin/gist-model build/bin/gistd build/bin/bench_daemon >/dev/null
mkdir -p bench/out
f=bench/out/smollm2-135m-shape-$type.gguf
if [ ! -s "$f" ]; then
    echo "making $f" >&2
    build/bin/gist-model make-tiny "$f.tmp" --seed 1 --type "$type" --n-embd 576 --n-layer 30 \
        --n-head 9 --n-head-kv 3 --n-ff 1536 --n-vocab 49152 --n-ctx 2048 >/dev/null
    mv "$f.tmp" "$f"
fi
build/bin/bench_daemon "$f" --sessions 1,2,4,8,16 --tokens 32 --reps 3 \
    --dat bench/out/daemon-bench.dat "$@" | tee bench/out/daemon-bench.txt
if command -v gnuplot >/dev/null; then
    gnuplot <<'PLOT'
set terminal pngcairo size 900,420
set output "bench/out/daemon-bench.png"
set multiplot layout 1,2 title "gistd, SmolLM2-135M-shaped model"
set xlabel "concurrent sessions"
set logscale x 2
set key left top
set ylabel "decode tokens/s"
plot "bench/out/daemon-bench.dat" using 1:2 with linespoints title "aggregate", \
     "" using 1:3 with linespoints title "per session"
set ylabel "time to first token (ms)"
plot "bench/out/daemon-bench.dat" using 1:5 with linespoints title "median", \
     "" using 1:6 with linespoints title "max"
unset multiplot
PLOT
    echo "plot: bench/out/daemon-bench.png"
fi
