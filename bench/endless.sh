#!/bin/bash
# bench/endless.sh — a whole held-out text as ONE session under a budget of half of one
# context's full cache, for every policy, against the full cache scored in context-sized
# windows (the model's trained setting). Through gist-model (--ctx 0) and, for the default
# policy, through a real gistd with `gistctl score`.
#   bench/endless.sh [MODEL] [TEXT] [CHARS]
# Defaults: models/gistd-6m.gguf, the first 60,000 characters of ../shared/corpus/persuasion.txt
# (held out from training). Results: bench/out/endless/{endless.md,endless.csv}.
# The tool runs 64-token steps, as gistd prefills (its --prefill-chunk).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/gistd-6m.gguf}
src=${2:-${GISTD_SHARED:-../shared}/corpus/persuasion.txt}
chars=${3:-60000}
out=bench/out/endless
mkdir -p "$out"
make -s -j2 build/bin/gist-model build/bin/gistd build/bin/gistctl
text=$out/text.txt
head -c "$chars" "$src" > "$text"
gm() { build/bin/gist-model perplexity "$model" --file "$text" "$@" 2>/dev/null; }
field() { sed -n "s/^$1: //p"; }

ref=$(gm --policy full --ubatch 64) # windows of n_ctx, each a full cache
full=$(field full_kv_bytes <<<"$ref")
budget=$((full / 2))
echo "# $model, $(wc -c < "$text") characters of $(basename "$src"); budget $budget bytes" \
     "(half of one context's full cache, $full)" >&2

ref_ppl=$(field ppl <<<"$ref")
row() { # policy, run, the tool's output: a CSV line
    local ppl
    ppl=$(field ppl <<<"$3")
    printf '%s,%s,%s,%s,%s,%s,%s\n' "$1" "$2" "$budget" "$(field peak_kv_bytes <<<"$3")" \
        "$(field tokens <<<"$3")" "$ppl" "$(awk -v a="$ppl" -v b="$ref_ppl" \
        'BEGIN{printf "%.4f", a / b - 1}')"
}
tokens=$(field tokens <<<"$ref")
{
    echo "policy,mode,budget_bytes,peak_kv_bytes,tokens,ppl,vs_windows"
    echo "full,windows of n_ctx,0,$(field peak_kv_bytes <<<"$ref"),$tokens,$ref_ppl,0"
} > "$out/endless.csv"
for p in auto pool h2o tova window trim gist; do
    r=$(gm --ctx 0 --policy "$p" --kv-budget "$budget" --ubatch 64) || {
        echo "$p,one session,$budget,,,refused," >> "$out/endless.csv"; continue; }
    row "$p" "one session" "$r" >> "$out/endless.csv"
done
# the same text through the daemon
ep=ipc://$(mktemp -u /tmp/gistd-endless-XXXXXX)
build/bin/gistd --model "$model" --listen "$ep" --log-level warn > "$out/gistd.log" 2>&1 &
gpid=$!
trap 'kill $gpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do build/bin/gistctl --connect "$ep" stats > /dev/null 2>&1 && break; done
r=$(build/bin/gistctl --connect "$ep" --timeout 600000 score --file "$text" --policy auto \
    --budget "$budget")
row auto "gistctl score" "$r" >> "$out/endless.csv"
kill $gpid
{
    echo "| policy | run | peak KV bytes | tokens | ppl | vs full cache in windows |"
    echo "|---|---|---|---|---|---|"
    tail -n +2 "$out/endless.csv" | awk -F, '{
        d = ($7 == "" || $7 == "0") ? "—" : sprintf("%+.2f%%", 100 * $7);
        printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $4, $5, $6, d }'
} > "$out/endless.md"
cat "$out/endless.md"
