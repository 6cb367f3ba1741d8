#!/usr/bin/env bash
# Runs every test program (build/tests/test_*) and every Python test
# (tests/test_*.py, with Debian's /usr/bin/python3), reads their TAP lines,
# and ends with one line: `N passed, N failed, N skipped`. Exit 1 on any failure.
# A program that exits non-zero without reporting a failed test counts as one failure.
# Every skip is listed at the end with its reason. With GISTD_REQUIRE_SHARED=1 (CI) a test
# that lacks shared data or an installed package fails instead of skipping; skips for
# reasons of the machine (a CPU feature, mount rights) stay skips.
# Usage: tests/run.sh BUILD_DIR [FILTER]
set -u
build=${1:-build}
filter=${2:-}
export GISTD_BUILD=$build GISTD_ROOT=$PWD
export GISTD_SHARED=${GISTD_SHARED:-$PWD/../shared}
python=${GISTD_PYTHON:-/usr/bin/python3}
# GISTD_WRAP: a command put before each C test program (make check: valgrind), except those
# whose name matches the pattern GISTD_NOWRAP; when it is set, Python tests are left out.
read -r -a wrap <<<"${GISTD_WRAP:-}"
passed=0 failed=0 skipped=0
failed_names=()
skip_lines=()

run_one() { # name, command...
    local name=$1; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    local p f s
    p=$(grep -cE '^ok [0-9]+' <<<"$out" || true)
    s=$(grep -cE '^ok [0-9]+.*# SKIP' <<<"$out" || true)
    f=$(grep -cE '^not ok [0-9]+' <<<"$out" || true)
    p=$((p - s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        out+=$'\n'"# $name exited with status $rc"
    fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    local line
    while IFS= read -r line; do
        skip_lines+=("$name: ${line#ok }")
    done < <(grep -E '^ok [0-9]+.*# SKIP' <<<"$out")
    if [ "$f" -ne 0 ]; then
        failed_names+=("$name")
        printf '%s\n' "$out" | sed "s|^|$name: |"
    else
        printf '%s\n' "$out" | grep -E '^(ok|not ok) ' | sed "s|^|$name: |"
    fi
}

for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    [ -n "$filter" ] && [[ $name != *$filter* ]] && continue
    if [[ -n ${GISTD_NOWRAP:-} && $name == $GISTD_NOWRAP ]]; then
        run_one "$name" "$t"
    else
        run_one "$name" "${wrap[@]}" "$t"
    fi
done
for t in tests/test_*.py; do
    [ -f "$t" ] && [ ${#wrap[@]} -eq 0 ] || continue
    name=$(basename "$t")
    [ -n "$filter" ] && [[ $name != *$filter* ]] && continue
    run_one "$name" "$python" "$t"
done

if [ ${#skip_lines[@]} -ne 0 ]; then
    echo "skipped (${#skip_lines[@]}):"
    printf '  %s\n' "${skip_lines[@]}"
fi
if [ ${#failed_names[@]} -ne 0 ]; then
    echo "failed programs: ${failed_names[*]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
