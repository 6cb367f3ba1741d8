#!/usr/bin/env bash
# bench/chat-turns.sh — three-turn chats through a real gistd and gistctl, as a user has
# them: a first turn stating a name and a city, a second asking a sum, a third asking for
# the name or the city. Prints each answer to the third turn and how many hold the fact.
# Greedy, the model file's chat template, no budget. The names and cities are none of
# train/synth.py's lists.
#
#   bash bench/chat-turns.sh [MODEL.gguf] [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/gistd-6m.gguf}
port=${2:-5599}
bin=${GISTD_BUILD:-build}/bin
endpoint=tcp://127.0.0.1:$port
"$bin/gistd" --model "$model" --listen "$endpoint" --threads 1 >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 50); do
    "$bin/gistctl" --connect "$endpoint" --timeout 200 stats >/dev/null 2>&1 && break
    sleep 0.1
done
right=0
n=0
while IFS='|' read -r name city question want; do
    answer=$(printf 'Hello! My name is %s. I live in %s.\nWhat is 3 plus 4?\n%s\n' \
        "$name" "$city" "$question" |
        "$bin/gistctl" --connect "$endpoint" chat --temp 0 -n 24 2>/dev/null |
        sed -n "/^> $question/{n;p}")
    n=$((n + 1))
    case "$answer" in *"$want"*) right=$((right + 1)) ;; esac
    printf '%s, %s: %s -> %s\n' "$name" "$city" "$question" "$answer"
done <<'CHATS'
Marta|Seville|Where do I live?|Seville
Tom|Paris|What is my name?|Tom
Anna|Berlin|Where do I live?|Berlin
Oscar|Madrid|What is my name?|Oscar
Greta|Vienna|Where do I live?|Vienna
Anton|Glasgow|What is my name?|Anton
Clara|Bremen|Where do I live?|Bremen
Pablo|Prague|What is my name?|Pablo
Ruth|Kampala|Where do I live?|Kampala
Ivan|Tokyo|What is my name?|Ivan
CHATS
echo "$model: the fact recalled in $right of $n chats"
