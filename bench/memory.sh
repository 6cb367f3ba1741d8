#!/bin/sh
# bench/memory.sh — long-memory recall (pass key, needles, chat) against KV budget for every
# policy. Builds gist-model if needed, then runs bench/memory.py (Debian's python3, gnuplot
# for the plot). Results: bench/out/memory/{memory.csv,memory_runs.csv,memory.md,memory.png}.
#   bench/memory.sh                      models/gistd-6m.gguf, 5 probes per task and depth
#   bench/memory.sh --model M --probes 20
#   bench/memory.sh --quick              a smoke test (depth 1/2, one probe a task)
set -e
cd "$(dirname "$0")/.."
make -s -j2 build/bin/gist-model
exec /usr/bin/python3 bench/memory.py "$@"
