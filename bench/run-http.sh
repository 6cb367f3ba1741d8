#!/usr/bin/env bash
# gistd-http's cost and its behaviour under load, through bench_http: gistd and gistd-http
# each start on a free loopback port; the latency part takes turns between libgistc, the
# gateway and `gistctl gen` for the same greedy completion, the load part runs 64 HTTP
# clients at once, each resending its conversation whole every turn (zero errors expected).
# On the shared stories260K model when it is there, else a tiny random one made under
# bench/out/ (git-ignored). Writes bench/out/http.txt.
# Usage: bench/run-http.sh [extra bench_http options]
#   REQUESTS=300 CLIENTS=64 TURNS=8 TOKENS=16 override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
make -j2 --no-print-directory build/bin/gist-model build/bin/gistd build/bin/gistctl \
    build/bin/gistd-http build/bin/bench_http >/dev/null
mkdir -p bench/out
model=${GISTD_SHARED:-../shared}/models/stories260K-f32.gguf
if [ ! -s "$model" ]; then
    model=bench/out/tiny-http.gguf
    [ -s "$model" ] || build/bin/gist-model make-tiny "$model" --seed 1 >/dev/null
fi
clients=${CLIENTS:-64}
work=$(mktemp -d)
cleanup() {
    [ -n "${http_pid:-}" ] && kill "$http_pid" 2>/dev/null && wait "$http_pid" || true
    [ -n "${gistd_pid:-}" ] && kill "$gistd_pid" 2>/dev/null && wait "$gistd_pid" || true
    rm -rf "$work"
}
trap cleanup EXIT
build/bin/gistd --model "$model" --listen 'tcp://127.0.0.1:*' --log-level error \
    --max-sessions $((clients * 2 + 16)) >"$work/gistd.out" &
gistd_pid=$!
for _ in $(seq 100); do [ -s "$work/gistd.out" ] && break; sleep 0.1; done
endpoint=$(head -1 "$work/gistd.out")
build/bin/gistd-http --connect "$endpoint" --listen 127.0.0.1:0 \
    --max-conversations $((clients * 2)) >"$work/http.out" &
http_pid=$!
for _ in $(seq 100); do [ -s "$work/http.out" ] && break; sleep 0.1; done
url=$(head -1 "$work/http.out")
echo "# model: $model; gistd at $endpoint, gistd-http at $url"
build/bin/bench_http --endpoint "$endpoint" --http "${url#http://}" \
    --gistctl build/bin/gistctl --requests "${REQUESTS:-300}" --tokens "${TOKENS:-16}" \
    --clients "$clients" --turns "${TURNS:-8}" "$@" | tee bench/out/http.txt.tmp
mv bench/out/http.txt.tmp bench/out/http.txt
