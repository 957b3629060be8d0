/**
 * deploy/ctmapd-daemonset.yaml and the Dockerfile, checked against the code they configure:
 * the host namespaces and mounts the datapath and the migration reattach need, the
 * capabilities, probes that run `ctmap health` on the daemon's own socket, flags and
 * CTMAPD_* variables that parseConfig accepts, a termination grace above the daemon's
 * shutdown grace. The Dockerfile is read as text (no container runtime runs here): its base,
 * ctmap on PATH, and the documented `docker run` line.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { parseCli } from '../../src/cli/args';
import { ConfigError, parseConfig, type Config } from '../../src/config/config';
import { DEFAULT_SOCKET } from '../../src/config/defaults';
import { REPO_ROOT, repoPath } from '../../src/config/paths';
import { SHUTDOWN_GRACE_MS } from '../../src/daemon/daemon';

/** A parsed manifest object: untyped. */
type K8s = Record<string, any>;

const docs: K8s[] = parseAllDocuments(fs.readFileSync(repoPath('deploy', 'ctmapd-daemonset.yaml'), 'utf8')).map((d) => {
  assert.deepEqual(d.errors, [], 'the manifest is valid YAML');
  return d.toJS() as K8s;
});
const ds = docs.find((d) => d.kind === 'DaemonSet');
assert.ok(ds, 'the manifest holds a DaemonSet');
const pod: K8s = ds.spec.template.spec;
const daemon: K8s = pod.containers.find((c: K8s) => c.name === 'ctmapd');
assert.ok(daemon, 'a container named ctmapd');
const allContainers: K8s[] = [...(pod.initContainers ?? []), ...pod.containers];

/** The container's environment as the probes and `kubectl exec` see it (plain values only). */
function envOf(c: K8s): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const e of c.env ?? []) {
    assert.equal(typeof e.value, 'string', `${e.name}: a plain string value`);
    env[e.name] = e.value;
  }
  return env;
}
const env = envOf(daemon);
const config: Config = parseConfig(daemon.args ?? [], env);

/** The hostPath volume mounted at `mountPath` in container `c`, with the mount. */
function hostMount(c: K8s, mountPath: string): { hostPath: string; propagation: string } {
  const m = (c.volumeMounts ?? []).find((v: K8s) => v.mountPath === mountPath);
  assert.ok(m, `${c.name} mounts ${mountPath}`);
  const vol = pod.volumes.find((v: K8s) => v.name === m.name);
  assert.ok(vol?.hostPath, `${mountPath} comes from a hostPath volume`);
  return { hostPath: vol.hostPath.path, propagation: m.mountPropagation ?? 'None' };
}

/** Every `--flag` a `ctmapd --help` documents with its [env CTMAPD_*] variable. */
function documentedEnvVars(): Set<string> {
  try {
    parseConfig(['--help'], {});
  } catch (err) {
    assert.ok(err instanceof ConfigError && err.exitCode === 0);
    return new Set([...err.message.matchAll(/\[env (CTMAPD_[A-Z0-9_]+)\]/g)].map((m) => m[1]));
  }
  assert.fail('no help');
}

const CAPABILITIES = ['BPF', 'PERFMON', 'NET_ADMIN', 'SYS_ADMIN', 'SYS_PTRACE'];

describe('deploy/ctmapd-daemonset.yaml', () => {
  it("runs in the host's network and pid namespaces on every node", () => {
    assert.equal(pod.hostNetwork, true, 'hostNetwork: attach acts on the node, not a pod netns');
    assert.equal(pod.hostPID, true, 'hostPID: the reloader finds namespaces in /proc/*/ns/net');
    assert.ok(
      pod.tolerations.some((t: K8s) => t.operator === 'Exists' && t.key === undefined && t.effect === undefined),
      'one toleration that tolerates every taint',
    );
    const sa = docs.find((d) => d.kind === 'ServiceAccount');
    assert.equal(pod.serviceAccountName, sa?.metadata.name);
    assert.equal(sa?.metadata.namespace, ds.metadata.namespace);
  });

  it('mounts the host bpffs at the bpf-root, /run/netns and the socket directory, with the right propagation', () => {
    const bpffs = hostMount(daemon, config.bpfRoot);
    assert.equal(bpffs.hostPath, '/sys/fs/bpf');
    assert.match(bpffs.propagation, /^(HostToContainer|Bidirectional)$/, 'a bpffs mounted on the host is seen');
    assert.deepEqual(hostMount(daemon, '/run/netns'), { hostPath: '/run/netns', propagation: 'HostToContainer' });
    assert.equal(hostMount(daemon, path.dirname(config.socket)).hostPath, path.dirname(config.socket));

    // A bpffs mounted from a container reaches the host only through Bidirectional, which
    // the API allows in privileged containers only: that one mounts it before ctmapd starts.
    const mounter = (pod.initContainers ?? []).find((c: K8s) =>
      (c.volumeMounts ?? []).some((m: K8s) => m.mountPath === '/sys/fs/bpf' && m.mountPropagation === 'Bidirectional'),
    );
    assert.ok(mounter, 'an init container mounts bpffs on the host with Bidirectional propagation');
    assert.equal(hostMount(mounter, '/sys/fs/bpf').hostPath, '/sys/fs/bpf');
    assert.match(mounter.command.join(' '), /mount -t bpf bpf \/sys\/fs\/bpf/);
    for (const c of allContainers) {
      for (const m of c.volumeMounts ?? []) {
        if (m.mountPropagation === 'Bidirectional') assert.equal(c.securityContext?.privileged, true, `${c.name}: Bidirectional needs privileged`);
      }
    }
    assert.ok(allContainers.every((c) => c.image === daemon.image), 'one image');
  });

  it('grants the capabilities the datapath needs, and drops every other one', () => {
    const sc = daemon.securityContext;
    assert.equal(sc.privileged, false);
    assert.deepEqual(sc.capabilities.drop, ['ALL']);
    assert.deepEqual([...sc.capabilities.add].sort(), [...CAPABILITIES].sort());
    assert.equal(sc.appArmorProfile?.type, 'Unconfined', "the default AppArmor profile refuses other processes' /proc/PID/ns");
  });

  it("passes flags and CTMAPD_* variables the daemon accepts; kernel backend, the API on the unix socket only", () => {
    assert.equal(config.backend, 'kernel', 'no silent fallback to the memory backend in a pod');
    assert.equal(config.listen, undefined, 'no plaintext TCP listener');
    const known = documentedEnvVars();
    for (const name of Object.keys(env)) if (name.startsWith('CTMAPD_')) assert.ok(known.has(name), `${name} is a flag's variable`);
    assert.ok(env.CTMAPD_SOCKET && env.CTMAPD_BPF_ROOT, 'socket and bpf-root in the environment, shared with ctmap');
    const port = Number(/:(\d+)$/.exec(config.metricsListen ?? '')?.[1]);
    assert.ok(daemon.ports.some((p: K8s) => p.name === 'metrics' && p.containerPort === port), 'the metrics port is declared');
  });

  it('probes run `ctmap health` against this daemon socket, finishing within their timeout', () => {
    for (const kind of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const probe = daemon[kind];
      assert.ok(probe?.exec, `${kind} is an exec probe`);
      const [bin, ...argv] = probe.exec.command as string[];
      assert.equal(bin, 'ctmap');
      const cmd = parseCli(argv, env);
      assert.equal(cmd.kind, 'health', `${kind}: ${argv.join(' ')}`);
      if (cmd.kind !== 'health') continue;
      assert.equal(cmd.server.target, `unix:${config.socket}`, `${kind} asks the daemon's socket`);
      assert.equal(cmd.service, '', 'the whole server');
      // Node's start-up (about 0.4 s) plus the call's own timeout, within the kubelet's.
      assert.ok(cmd.timeoutMs + 1000 <= probe.timeoutSeconds * 1000, `${kind}: --timeout ${cmd.timeoutMs} ms vs timeoutSeconds ${probe.timeoutSeconds}`);
    }
    const startup = daemon.startupProbe;
    assert.ok(startup.periodSeconds * startup.failureThreshold >= 300, 'a start that migrates maps gets minutes');
  });

  it("waits longer than the daemon's shutdown grace, and never runs two daemons on one node", () => {
    assert.ok(pod.terminationGracePeriodSeconds * 1000 > SHUTDOWN_GRACE_MS, `${pod.terminationGracePeriodSeconds} s > ${SHUTDOWN_GRACE_MS} ms`);
    assert.equal(ds.spec.updateStrategy.type, 'RollingUpdate');
    assert.equal(ds.spec.updateStrategy.rollingUpdate.maxSurge ?? 0, 0, 'one owner per bpf-root');
  });

  it('requests resources, with no memory limit under the maps it creates', () => {
    assert.ok(daemon.resources.requests.cpu && daemon.resources.requests.memory);
    assert.equal(daemon.resources.limits?.memory, undefined);
  });
});

describe('Dockerfile', () => {
  const text = fs.readFileSync(path.join(REPO_ROOT, 'Dockerfile'), 'utf8');
  const lines = text.split('\n');
  /** The documented `docker run` command: its comment line and the ones its trailing `\` continue. */
  const runLine = ((): string | undefined => {
    const start = lines.findIndex((l) => /^#\s+docker run /.test(l));
    if (start < 0) return undefined;
    let end = start;
    while (lines[end]!.trimEnd().endsWith('\\')) end++;
    return lines.slice(start, end + 1).map((l) => l.replace(/^#\s*/, '').replace(/\\$/, '')).join(' ');
  })();

  it('builds on a Node LTS newer than 20', () => {
    const base = /^ARG NODE_IMAGE=(\S+)$/m.exec(text)?.[1];
    assert.ok(base, 'the base image is the NODE_IMAGE argument');
    const major = Number(/^node:(\d+)-/.exec(base)?.[1]);
    assert.ok(major > 20 && major % 2 === 0, `${base}: an even (LTS) Node line after 20`);
    const froms = lines.filter((l) => /^FROM\s/.test(l));
    assert.equal(froms.length, 2);
    assert.ok(froms.every((l) => l.startsWith('FROM ${NODE_IMAGE}')), 'both stages on that base');
  });

  it('the build stage installs what make -C bpf needs and none of the bench-only packages', () => {
    const build = text.slice(text.indexOf('AS build'), text.lastIndexOf('FROM '));
    const install = /apt-get install[^\n]*/.exec(build)?.[0] ?? '';
    for (const p of ['clang', 'libbpf-dev', 'linux-libc-dev', 'make']) assert.ok(install.includes(` ${p}`), p);
    for (const p of ['bpftool', 'gcc', 'libelf-dev', 'zlib1g-dev', 'etcd']) assert.ok(!install.includes(p), `${p} is not needed to build`);
  });

  it('ships every BPF object src/ loads, and puts ctmapd and ctmap on PATH', () => {
    const loaded = new Set<string>();
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else for (const m of fs.readFileSync(p, 'utf8').matchAll(/bpfObjectPath\('([^']+)'\)/g)) loaded.add(m[1]);
      }
    };
    walk(path.join(REPO_ROOT, 'src'));
    assert.ok(loaded.size >= 2, [...loaded].join(' '));
    const copy = lines.find((l) => l.startsWith('COPY --from=build /src/bpf/.output/')) ?? '';
    for (const obj of loaded) {
      assert.ok(text.includes(`.output/${obj}`) && copy.includes(obj), `${obj} is built and copied`);
    }
    for (const bin of ['ctmapd', 'ctmap']) assert.match(text, new RegExp(`ln -s /opt/ctmapd/bin/${bin} /usr/local/bin/${bin}\\b`));
    assert.match(text, /^ENTRYPOINT \["ctmapd"\]$/m);
  });

  it("documents a docker run line in the host's namespaces, with the host's bpffs, /run/netns, the socket and the capabilities", () => {
    assert.ok(runLine, 'a documented docker run line');
    for (const opt of ['--pid=host', '--network=host', '-v /sys/fs/bpf:/sys/fs/bpf:rshared', '-v /run/netns:/run/netns', `-v ${path.dirname(DEFAULT_SOCKET)}:${path.dirname(DEFAULT_SOCKET)}`]) {
      assert.ok(runLine.includes(opt), opt);
    }
    const caps = [...runLine.matchAll(/--cap-add=([A-Z_]+)/g)].map((m) => m[1]).sort();
    assert.deepEqual(caps, [...CAPABILITIES].sort(), 'the same set as the DaemonSet');
  });
});
