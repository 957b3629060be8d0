#!/usr/bin/env bash
# Installs the Debian packages ctmapd needs to build and test, when any is missing.
# Idempotent and quiet when everything is there. Needs root (apt-get) for a fresh machine.
set -euo pipefail

# etcd-server, etcd-client, openssl: the real etcd (etcdctl, test certificates) of the
# clustermesh tests' etcd tier. iputils-ping: ICMP echo traffic of the datapath e2e tests.
# protobuf-compiler: protoc --decode, the reference parser request decoding is checked against,
# and protoc checking the descriptors reflection serves. python3-grpcio, python3-protobuf: a
# gRPC client that is not ours (Debian's grpcio on the reference protobuf implementation).
pkgs=(clang llvm libbpf-dev libbpf1 bpftool iproute2 gcc make libelf-dev zlib1g-dev etcd-server etcd-client openssl iputils-ping protobuf-compiler python3-grpcio python3-protobuf)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
