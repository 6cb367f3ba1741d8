#!/usr/bin/env bash
# Before/after speed of the forward pass: bench_model of the working tree against
# bench_model built from another revision, alternated (base, new, new, base, ...) on the
# SmolLM2-135M-shaped models of run-model-bench.sh, at 1 and 2 threads. Prints per type
# and thread count the median prefill and decode tokens/s of each side over the rounds and
# the ratio new / base. On a shared machine, run it when it is quiet and read the ratios.
# Usage: bench/compare-model.sh BASE_REV [ROUNDS (3)] [TYPES ("f32 f16 q8_0")]
#        [extra bench_model args, e.g. --prefill 512 --decode 128]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1 rounds=${2:-3} types=${3:-f32 f16 q8_0}
shift $(($# < 3 ? $# : 3))
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--prefill 512 --decode 128)
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
git archive "$rev" | tar -x -C "$base"
make -C "$base" -j2 --no-print-directory build/bin/bench_model >/dev/null
make -j2 --no-print-directory build/bin/bench_model build/bin/gist-model >/dev/null
for t in $types; do # the models of run-model-bench.sh
    f=bench/out/smollm2-135m-shape-$t.gguf
    if [ ! -s "$f" ]; then
        mkdir -p bench/out
        build/bin/gist-model make-tiny "$f.tmp" --seed 1 --type "$t" --n-embd 576 --n-layer 30 \
            --n-head 9 --n-head-kv 3 --n-ff 1536 --n-vocab 49152 --n-ctx 2048 >/dev/null
        mv "$f.tmp" "$f"
    fi
done
out=$base/results
: >"$out"
for r in $(seq "$rounds"); do
    for t in $types; do
        model=bench/out/smollm2-135m-shape-$t.gguf
        if [ $((r % 2)) -eq 1 ]; then order="base new"; else order="new base"; fi
        for side in $order; do
            bin=build/bin/bench_model
            [ "$side" = base ] && bin=$base/build/bin/bench_model
            # type weightMB T prefill best decode fast10% ...
            "$bin" "$model" --threads 1,2 --reps 1 "${extra[@]}" |
                awk -v s="$side" '$1 !~ /^#/ && $3 ~ /^[0-9]+$/ {print s, $1, $3, $4, $6}' >>"$out"
        done
    done
done
echo "# bench_model, $(git rev-parse --short "$rev") (base) against the working tree (new);"
echo "# medians of $rounds alternated rounds: ${extra[*]}"
printf '%-6s %2s %12s %12s %6s %12s %12s %6s\n' type T "prefill base" "prefill new" ratio \
    "decode base" "decode new" ratio
/usr/bin/python3 - "$out" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, t, th, pf, dec = line.split()
    rows.setdefault((t, int(th)), {}).setdefault(side, []).append((float(pf), float(dec)))
for (t, th), v in rows.items():
    if "base" not in v or "new" not in v:
        continue
    med = {s: [statistics.median(x[i] for x in v[s]) for i in (0, 1)] for s in ("base", "new")}
    b, n = med["base"], med["new"]
    print(f"{t:<6} {th:>2} {b[0]:12.1f} {n[0]:12.1f} {n[0] / b[0]:6.2f} "
          f"{b[1]:12.1f} {n[1]:12.1f} {n[1] / b[1]:6.2f}")
PY
