#!/bin/sh
# bench/quality.sh — perplexity against KV budget for every policy, and the recall test.
# Builds gist-model if needed, then runs bench/quality.py (Debian's python3, gnuplot for the
# plot). Results: bench/out/quality/{quality.csv,quality.md,quality.png,recall.csv}.
#   bench/quality.sh            every policy, budgets 100/50/25/12.5% (a few minutes)
#   bench/quality.sh --quick    shorter texts
set -e
cd "$(dirname "$0")/.."
make -s -j2 build/bin/gist-model
exec /usr/bin/python3 bench/quality.py "$@"
