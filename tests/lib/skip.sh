# SPDX-License-Identifier: MIT
# Sourced by the shell tests that exit 77 to skip: skip REASON skips, or fails where CI requires every
# test to run (IMGCACHE_TESTS_REQUIRE_ALL=1, set by .ci/run).
skip() {
        if [ "${IMGCACHE_TESTS_REQUIRE_ALL:-}" = 1 ]; then
                echo "FAIL (IMGCACHE_TESTS_REQUIRE_ALL=1): $*" >&2
                exit 1
        fi
        echo "SKIP: $*" >&2
        exit 77
}
