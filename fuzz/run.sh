#!/usr/bin/env bash
# Runs each libFuzzer target of a fuzz build for a set time, one after another, and prints
# its figures (executions, executions per second, new inputs, coverage, peak memory); at the
# end, a table of them all, also written to BUILD_DIR/fuzz-summary.txt.
# Usage: fuzz/run.sh BUILD_DIR SECONDS [TARGET...]   (default: every BUILD_DIR/fuzz/fuzz_*)
#
# A target starts from its checked-in seeds, fuzz/corpus/<target>/, and writes what it finds
# to BUILD_DIR/corpus/<target>/ (kept between runs, never checked in). An input that crashes
# or breaks a property is saved as BUILD_DIR/crashes/<target>-crash-<sha1>; replay it with
# `BUILD_DIR/fuzz/<target> FILE`, then check it in under tests/data/fuzz/<target>/ once fixed.
# The full libFuzzer output of each run is BUILD_DIR/fuzz-<target>.log.
# Exit status 1 when any target found something.
set -u
build=${1:?usage: fuzz/run.sh BUILD_DIR SECONDS [TARGET...]}
secs=${2:-60}
shift 2 || shift $#
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in "$build"/fuzz/fuzz_*; do [ -x "$f" ] && targets+=("$(basename "$f")"); done
fi
here=$(cd "$(dirname "$0")" && pwd)
failed=()
summary=()
for t in "${targets[@]}"; do
    bin=$build/fuzz/$t
    [ -x "$bin" ] || { echo "$t: no such target ($bin)"; failed+=("$t"); continue; }
    mkdir -p "$build/corpus/$t" "$build/crashes"
    seeds=$here/corpus/$t
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
    log=$build/fuzz-$t.log
    echo "== $t: $secs s from $(ls "$seeds" 2>/dev/null | wc -l) seeds"
    # One process, no forking: the machine is shared. rss_limit and timeout catch inputs
    # that make the parser allocate or loop without bound.
    "$bin" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$build/crashes/$t-" "${dict[@]}" "$build/corpus/$t" "$seeds" \
        >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    units=$(sed -n 's/^stat::new_units_added: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
    echo "$t: ${execs:-?} executions, ${rate:-?}/s, ${units:-?} new inputs, $cov," \
        "peak ${rss:-?} MB"
    corpus=$(ls "$build/corpus/$t" | wc -l)
    summary+=("$(printf '%-16s %6s %12s %8s %8s %8s %8s %6s' "$t" "$secs" "${execs:-?}" \
        "${rate:-?}" "$(echo "$cov" | awk '{print $2}')" "$(echo "$cov" | awk '{print $4}')" \
        "$corpus" "$([ "$rc" -eq 0 ] && echo ok || echo FOUND)")")
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        grep -E 'ERROR|SUMMARY|property broken|Test unit written' "$log" | head -20 | sed "s|^|$t: |"
    fi
done
{
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-16s %6s %12s %8s %8s %8s %8s %6s\n' target seconds executions exec/s cov ft \
        corpus result
    printf '%s\n' "${summary[@]}"
} | tee "$build/fuzz-summary.txt"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzzing found problems in: ${failed[*]}"
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets, nothing found"
