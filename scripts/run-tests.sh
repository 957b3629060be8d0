#!/usr/bin/env bash
# Runs every test tier with node's test runner over the compiled tests in dist/test.
# As root with bpf() permitted, the kernel tier must run: CTMAPD_REQUIRE_KERNEL=1 turns a
# skipped kernel test into a failure. Elsewhere it is skipped with a loud line.
# The etcd tier (clustermesh sources against a real etcd) must run too: install-deps.sh
# installs etcd-server, etcd-client and openssl, so CTMAPD_REQUIRE_ETCD=1 unless the caller
# sets it (CTMAPD_REQUIRE_ETCD=0: skipped with a loud line when etcd is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ] && [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = "bpf_fs" ]; then
  export CTMAPD_REQUIRE_KERNEL=1
  echo "ctmapd tests: kernel tier ENABLED (root, bpffs at /sys/fs/bpf): kernel tests must run"
else
  echo "*** ctmapd tests: kernel tier will be SKIPPED: not root or no bpffs at /sys/fs/bpf ***"
fi

export CTMAPD_REQUIRE_ETCD="${CTMAPD_REQUIRE_ETCD:-1}"
if [ "$CTMAPD_REQUIRE_ETCD" = "1" ]; then
  echo "ctmapd tests: etcd tier ENABLED (CTMAPD_REQUIRE_ETCD=1): etcd tests must run"
else
  echo "ctmapd tests: etcd tier optional (CTMAPD_REQUIRE_ETCD=$CTMAPD_REQUIRE_ETCD): skipped if etcd is missing"
fi

mapfile -t files < <(find dist/test -name '*.test.js' | sort)
if [ ${#files[@]} -eq 0 ]; then echo "no test files under dist/test (did the build run?)" >&2; exit 1; fi
exec node --test --test-reporter=spec "$@" "${files[@]}"
