#!/usr/bin/env bash
# Before/after batching speed of the daemon: bench_daemon (of the working tree) against the
# gistd built from another revision and the working tree's gistd, alternated (base, new,
# new, base, ...), each round one repetition of 1 and 8 concurrent sessions generating
# --tokens each. Prints every round with the load average beside it, then per side the
# median aggregate tokens/s at 1 and at 8 sessions and the median of the rounds' speedups
# (8 sessions over 1, measured in the same bench_daemon run), and new / base.
# On a shared machine the load moves every figure: read the ratios, and the load.
# Usage: bench/compare-daemon.sh BASE_REV [ROUNDS (4)] [MODEL (the SmolLM2-135M-shaped
#        q8_0 model of run-daemon-bench.sh)] [extra bench_daemon args, e.g. --tokens 32]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1 rounds=${2:-4} model=${3:-bench/out/smollm2-135m-shape-q8_0.gguf}
shift $(($# < 3 ? $# : 3))
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--tokens 64)
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
git archive "$rev" | tar -x -C "$base"
make -C "$base" -j2 --no-print-directory build/bin/gistd >/dev/null
make -j2 --no-print-directory build/bin/gistd build/bin/bench_daemon build/bin/gist-model >/dev/null
if [ ! -s "$model" ]; then # the model of run-daemon-bench.sh
    mkdir -p "$(dirname "$model")"
    build/bin/gist-model make-tiny "$model.tmp" --seed 1 --type q8_0 --n-embd 576 --n-layer 30 \
        --n-head 9 --n-head-kv 3 --n-ff 1536 --n-vocab 49152 --n-ctx 2048 >/dev/null
    mv "$model.tmp" "$model"
fi
out=$base/results
: >"$out"
echo "# $model, base $rev against the working tree; bench_daemon --sessions 1,8 ${extra[*]}"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="base new"; else order="new base"; fi
    for side in $order; do
        gistd=build/bin/gistd
        [ "$side" = base ] && gistd=$base/build/bin/gistd
        load0=$(cut -d' ' -f1 /proc/loadavg)
        res=$(build/bin/bench_daemon "$model" --gistd "$gistd" --sessions 1,8 --reps 1 \
            "${extra[@]}" | awk '$1 == "1" {one = $2} $1 == "8" {eight = $2; sp = $4}
                                 END {print one, eight, sp}')
        load1=$(cut -d' ' -f1 /proc/loadavg)
        echo "round $r $side: 1 session $(echo "$res" | cut -d' ' -f1) t/s, 8 sessions" \
            "$(echo "$res" | cut -d' ' -f2) t/s, speedup $(echo "$res" | cut -d' ' -f3)" \
            "(load $load0 .. $load1)"
        echo "$side $res" >>"$out"
    done
done
awk '
function median(a, n,    i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
        t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
    }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ n[$1]++; one[$1, n[$1]] = $2; eight[$1, n[$1]] = $3; sp[$1, n[$1]] = $4 }
END {
    printf "%-6s %16s %16s %16s\n", "", "1 session t/s", "8 sessions t/s", "speedup (median)"
    for (s = 0; s < 2; s++) {
        side = s ? "new" : "base"
        for (i = 1; i <= n[side]; i++) { a[i] = one[side, i]; b[i] = eight[side, i]; c[i] = sp[side, i] }
        m1[side] = median(a, n[side]); m8[side] = median(b, n[side]); ms[side] = median(c, n[side])
        printf "%-6s %16.1f %16.1f %16.2f\n", side, m1[side], m8[side], ms[side]
    }
    printf "%-6s %16.2f %16.2f %16.2f\n", "new/base", m1["new"] / m1["base"], m8["new"] / m8["base"],
        ms["new"] / ms["base"]
}' "$out"
