# ctmapd container image. Run privileged (or with CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN)
# with the host's bpffs mounted so that pins outlive the container:
#   docker run --privileged -v /sys/fs/bpf:/sys/fs/bpf -v /run/ctmapd:/run/ctmapd ctmapd
FROM node:20-bookworm-slim AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends clang llvm libbpf-dev libbpf1 bpftool make gcc libc6-dev libelf-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npx tsc -p tsconfig.json && make -C bpf && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libbpf1 bpftool iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ctmapd
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/proto ./proto
COPY --from=build /src/bpf/.output ./bpf/.output
COPY --from=build /src/bin ./bin
ENTRYPOINT ["node", "bin/ctmapd"]
