#!/usr/bin/env bash
# gistd's aggregate decode speed and time to first token against 1, 2, 4, 8 and 16
# concurrent sessions, on the SmolLM2-135M-shaped model (random weights, seed 1; made once
# under bench/out/, git-ignored); then a long chat (100,000 tokens of turns into one session
# under a budget of 512 rows' bytes, policy auto) on the project's models/gistd-6m.gguf
# (bench/long_chat.md says what it prints). Writes bench/out/daemon-bench.{txt,dat}, bench/out/daemon-chat.{txt,dat}, and
# the plots bench/out/daemon-bench.png and daemon-chat.png when gnuplot is installed.
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
chat_model=models/gistd-6m.gguf
if [ -s "$chat_model" ]; then
    build/bin/bench_daemon "$chat_model" --long-chat 100000 --budget-rows 512 --policy auto \
        --turn 100 --dat bench/out/daemon-chat.dat "$@" | tee bench/out/daemon-chat.txt
    if command -v gnuplot >/dev/null; then
        gnuplot <<'PLOT'
set terminal pngcairo size 900,420
set output "bench/out/daemon-chat.png"
set multiplot layout 1,2 title "gistd long chat: gistd-6m, one session, budget of 512 rows, policy auto"
set xlabel "tokens seen"
set xtics 20000
set ylabel "decode tokens/s"
plot "bench/out/daemon-chat.dat" using 1:2 with lines notitle
set ylabel "KV bytes"
plot "bench/out/daemon-chat.dat" using 1:3 with lines notitle
unset multiplot
PLOT
        echo "plot: bench/out/daemon-chat.png"
    fi
fi
