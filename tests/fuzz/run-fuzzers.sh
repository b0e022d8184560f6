#!/bin/bash
# SPDX-License-Identifier: MIT
# Builds the libFuzzer targets of tests/fuzz with clang, ASan and UBSan in build-fuzz/, then runs each for a
# bounded time on a scratch copy of its seed corpus (the corpus in the tree is never written). Fails on any
# crash, sanitizer report, leak or timeout; the reproducer is kept in build-fuzz/fuzz-artifacts/.
#
#   tests/fuzz/run-fuzzers.sh                  every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=600 tests/fuzz/run-fuzzers.sh the longer local run
#   tests/fuzz/run-fuzzers.sh config checksum  only these targets
#
# FUZZ_JOBS targets run at a time (default: half the CPUs, at least 1).
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${FUZZ_SECONDS:-20}
build=${FUZZ_BUILD_DIR:-build-fuzz}
cpus=$(nproc)
jobs=${FUZZ_JOBS:-$(( cpus / 2 > 0 ? cpus / 2 : 1 ))}

if [ $# -gt 0 ]; then
        targets=("$@")
else
        targets=()
        for f in tests/fuzz/fuzz-*.c; do
                n=${f#tests/fuzz/fuzz-}
                n=${n%.c}
                [ "$n" = main ] || targets+=("$n")
        done
fi

if [ ! -f "$build/build.ninja" ]; then
        CC=clang meson setup "$build" -Dfuzzing=true -Db_sanitize=address,undefined -Db_lundef=false \
                -Dbuildtype=debugoptimized
fi
meson compile -C "$build" "${targets[@]/#/fuzz-}"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export MALLOC_PERTURB_=85

artifacts=$build/fuzz-artifacts
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"

run_one() {
        local name=$1
        local corpus=$work/corpus-$name
        local log=$work/$name.log
        cp -r "tests/fuzz/corpus/$name" "$corpus"
        # -timeout: one input taking over 10 s is a hang; -rss_limit_mb bounds memory.
        if "$build/tests/fuzz/fuzz-$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
                        -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/$name-" \
                        "$corpus" >"$log" 2>&1; then
                local runs
                runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
                echo "fuzz-$name: OK, ${runs:-?} executions in ${seconds}s, corpus $(ls "$corpus" | wc -l) inputs"
                return 0
        fi
        echo "fuzz-$name: FAILED" >&2
        tail -n 60 "$log" >&2
        return 1
}

failed=0
running=0
for t in "${targets[@]}"; do
        if [ "$running" -ge "$jobs" ]; then
                wait -n || failed=1
                running=$((running - 1))
        fi
        run_one "$t" &
        running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
        wait -n || failed=1
        running=$((running - 1))
done

if [ "$failed" -ne 0 ]; then
        echo "fuzzing found a problem; reproducers in $artifacts" >&2
        exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${seconds}s each without a finding"
