#!/usr/bin/env bash
# gistd under load, through bench_load (each run spawns its own gistd on a free loopback port):
#   load: 64 clients sharing 5,000 requests of the chat mix (open, user line, 8-32 token reply,
#         continue, score, stats, session info, close and reopen), sessions under policy auto
#         with a budget of 256 tokens' KV bytes, the daemon under a global --kv-budget of 16M;
#   soak: the same mix for 10 minutes, a line every 10 s (requests, p99, VmRSS, jemalloc), and
#         the RSS slope over the second half (KiB/min): memory is flat when it is near zero.
# On the shared stories260K model when it is there, else a tiny random one made under
# bench/out/ (git-ignored). Writes bench/out/load.txt, bench/out/soak.txt, the soak's interval
# lines as bench/out/soak.dat and, when gnuplot is installed, bench/out/soak.png (VmRSS and
# jemalloc's figures, and p99 latency, over time). Both runs take the machine's cores for
# their length: run them on a quiet machine, once.
# Usage: bench/run-load.sh [load|soak|both (default)] [extra bench_load or gistd options]
#   CLIENTS=64 REQUESTS=5000 SOAK_SECONDS=600 INTERVAL=10 KV_BUDGET=16M override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-both}
shift || true
make -j2 --no-print-directory build/bin/gist-model build/bin/gistd build/bin/bench_load >/dev/null
mkdir -p bench/out
model=${GISTD_SHARED:-../shared}/models/stories260K-f32.gguf
if [ ! -s "$model" ]; then
    model=bench/out/tiny-load.gguf
    [ -s "$model" ] || build/bin/gist-model make-tiny "$model" --seed 1 >/dev/null
fi
clients=${CLIENTS:-64}
common=(--spawn --model "$model" --clients "$clients" --kv-budget "${KV_BUDGET:-16M}")
status=0
if [ "$what" = load ] || [ "$what" = both ]; then
    build/bin/bench_load "${common[@]}" --requests "${REQUESTS:-5000}" "$@" \
        | tee bench/out/load.txt || status=1
fi
if [ "$what" = soak ] || [ "$what" = both ]; then
    build/bin/bench_load "${common[@]}" --duration "${SOAK_SECONDS:-600}" \
        --interval "${INTERVAL:-10}" "$@" | tee bench/out/soak.txt || status=1
    # the interval lines: time, requests, req/s, p99 ms, errors, rss, je allocated, je resident
    awk 'NF == 8 && $1 ~ /^[0-9]+$/' bench/out/soak.txt >bench/out/soak.dat
    if command -v gnuplot >/dev/null && [ -s bench/out/soak.dat ]; then
        gnuplot <<'PLOT'
set terminal pngcairo size 900,420
set output "bench/out/soak.png"
set multiplot layout 1,2 title "gistd soak: chat mix, many clients"
set xlabel "seconds"
set key center right
set ylabel "MiB"
set yrange [0:*]
plot "bench/out/soak.dat" using 1:($6/1024) with lines title "VmRSS", \
     "" using 1:($8/1024) with lines title "jemalloc resident (KV)", \
     "" using 1:($7/1024) with lines title "jemalloc allocated (KV)"
set ylabel "p99 latency (ms)"
plot "bench/out/soak.dat" using 1:4 with lines notitle
unset multiplot
PLOT
        echo "plot: bench/out/soak.png"
    fi
fi
exit $status
