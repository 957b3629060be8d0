#!/usr/bin/env bash
# Mounts bpffs at $1 (default /sys/fs/bpf) when it is not mounted there. Without root it
# only reports: the daemon then falls back to the memory backend (--backend=auto).
set -euo pipefail
root=${1:-/sys/fs/bpf}
if [ "$(stat -f -c %T "$root" 2>/dev/null)" = "bpf_fs" ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-bpffs: $root is not a bpf filesystem and we are not root: kernel maps unavailable" >&2
  exit 0
fi
mkdir -p "$root"
mount -t bpf bpf "$root"
echo "ensure-bpffs: mounted bpffs at $root"
