# ctmapd container image: the daemon (entrypoint `ctmapd`) and the `ctmap` CLI, both on PATH.
#
# It owns the host's CT maps and attaches the datapath in the host's network namespaces, so
# it runs in the host's namespaces, with the host's bpffs:
#
#   docker run -d --name ctmapd --restart=always \
#     --pid=host \
#     --network=host \
#     --cap-add=BPF --cap-add=PERFMON --cap-add=NET_ADMIN --cap-add=SYS_ADMIN --cap-add=SYS_PTRACE \
#     --security-opt apparmor=unconfined \
#     -v /sys/fs/bpf:/sys/fs/bpf:rshared \
#     -v /run/netns:/run/netns:rslave \
#     -v /run/ctmapd:/run/ctmapd \
#     ctmapd [flags, or CTMAPD_* variables with -e]
#
# and `docker exec ctmapd ctmap datapath attach --dev eth0` (or `--netns NAME`) attaches
# the datapath. Why each piece (or use --privileged for all of them at once):
#   --pid=host         after a map migration the daemon runs `ctmap datapath reattach` inside
#                      every network namespace that has an attachment record, finding it by
#                      inode among /run/netns and /proc/*/ns/net: a namespace held only by a
#                      process (a Docker container's, one made by `unshare --net`) is found
#                      only in the host's /proc.
#   --network=host     `ctmap datapath attach --dev DEV` acts in the namespace it runs in; in a
#                      private one it would attach to the container's own eth0. It also puts
#                      --listen and --metrics-listen on the host's addresses.
#   -v /sys/fs/bpf:/sys/fs/bpf:rshared
#                      the pins must be the host's, so that maps outlive the container and the
#                      next container, bpftool and Cilium-style tools on the host see them.
#                      rshared: mounts made under it on either side (a bpffs mounted on an
#                      empty --bpf-root) propagate both ways; make the host side shared first
#                      if it is not (`mount --make-shared /sys/fs/bpf`).
#   -v /run/netns:/run/netns:rslave
#                      `--netns NAME` and the reloader open /run/netns/NAME, where
#                      `ip netns add` and CNI plugins bind-mount namespaces; rslave so that
#                      namespaces the host adds after the start appear here too.
#   -v /run/ctmapd:/run/ctmapd
#                      the directory of the gRPC unix socket (--socket), for clients on the host.
#   CAP_BPF            create maps, load programs (Linux 5.8 or later; map memory is charged to
#                      the memory cgroup, not RLIMIT_MEMLOCK, from 5.11).
#   CAP_NET_ADMIN      load tc (SCHED_CLS) programs, create the clsact qdisc, add and delete
#                      filters over rtnetlink.
#   CAP_SYS_ADMIN      setns(2) for `nsenter --net` (--netns and the migration reattach: without
#                      it a daemon with attachments in other namespaces cannot migrate and
#                      exits), and mounting bpffs on an empty --bpf-root.
#   CAP_PERFMON        the verifier's privileged mode: without it and without CAP_SYS_ADMIN
#                      (which implies it) ct_gc.bpf.o's map accesses are refused and GC falls
#                      back to re-checking in process. Redundant beside SYS_ADMIN; listed so
#                      that the need stays visible.
#   CAP_SYS_PTRACE     reading /proc/PID/ns/net of processes that hold capabilities this
#                      container lacks (the kernel's ptrace access check); without it the
#                      reloader misses such a namespace and leaves its datapath on the old maps.
#   apparmor=unconfined Docker's default AppArmor profile refuses mount(2) and reading other
#                      processes' /proc/PID/ns; drop it where AppArmor is enabled.
# This set (every other capability dropped) was checked on Linux 6.18: attach by --netns and
# in a process-held namespace, GC in the kernel, a migration reattaching both.

# The current Node LTS line, 24 ("Krypton", supported until April 2028; 26, the newest line,
# is not LTS: its releases carry no LTS name), on the Debian release this repository is built
# and tested on, so the image compiles the BPF objects with the same clang and links the same
# libbpf as the tests. The code keeps running on Node 20.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
# What the build needs, and nothing the bench or the tests need (bench/c's libbpf baseline,
# bpftool, etcd): clang compiles bpf/*.bpf.c (its own headers give <stdbool.h>), libbpf-dev
# holds <bpf/bpf_helpers.h> and <bpf/bpf_endian.h>, linux-libc-dev <linux/*.h> and <asm/*.h>,
# make runs bpf/Makefile. npm ci needs no compiler: koffi installs a prebuilt binary.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends clang libbpf-dev linux-libc-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
# Only the two objects the daemon (ct_gc) and the CLI (ct_datapath) load; the others in
# bpf/Makefile are for the tests and the bench.
RUN npx tsc -p tsconfig.json \
 && make -C bpf .output/ct_gc.bpf.o .output/ct_datapath.bpf.o .output/ct_fate.bpf.o \
 && npm prune --omit=dev

FROM ${NODE_IMAGE}
# libbpf1: loaded by ctmapd and ctmap (koffi, libbpf.so.1).
# util-linux (nsenter) and mount: run by ctmap --netns, the migration reattach and the bpffs
#   mount; both come with the base image and are listed so that no slimming removes them.
# iproute2, bpftool: not run by ctmapd or ctmap (they speak rtnetlink and bpf() themselves);
#   here for operators, who inspect what the daemon owns from inside the container, as
#   README.md shows (`tc filter show dev DEV ingress`, `ip netns`, `bpftool map dump pinned
#   ...`), also on nodes whose OS ships neither.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libbpf1 util-linux mount iproute2 bpftool \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ctmapd
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/proto ./proto
COPY --from=build /src/bpf/.output/ct_gc.bpf.o /src/bpf/.output/ct_datapath.bpf.o /src/bpf/.output/ct_fate.bpf.o ./bpf/.output/
COPY --from=build /src/bin ./bin
# On PATH for `docker exec` / `kubectl exec`; bin/* find the rest through their real path.
RUN ln -s /opt/ctmapd/bin/ctmapd /usr/local/bin/ctmapd \
 && ln -s /opt/ctmapd/bin/ctmap /usr/local/bin/ctmap \
 && ctmapd --help >/dev/null && ctmap --help >/dev/null
ENTRYPOINT ["ctmapd"]
