/**
 * Socket flows of the fate-sharing and lifecycle-event e2e tests: echo servers in one
 * namespace, and one client process per flow in the other, placed into a cgroup, that
 * closes its socket as asked (FIN, RST, kill -9, UDP close). The traffic itself is
 * test/helpers/fate-traffic.ts, run in the namespace as its own process.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import { ctNow } from '../../src/maps/clock';
import { inCgroup } from './cgroup';
import { DaemonProcess, cleanupScope, ctmapOk, startDaemonProcess } from './datapath-e2e';
import { tempDir } from './grpc';
import { privateBpfRoot } from './kernel';
import { NetnsSide, createVethPair, waitQuiet } from './netns';

const TRAFFIC = path.join(__dirname, 'fate-traffic.js');
export const TCP_PORT = 7101;
export const UDP_PORT = 7102;

export type Kind = 'tcp-fin' | 'tcp-rst' | 'kill-9' | 'udp';
export const KINDS: readonly Kind[] = ['tcp-fin', 'tcp-rst', 'kill-9', 'udp'];

export interface Flow {
  readonly label: string;
  readonly fam: 4 | 6;
  readonly kind: Kind;
  readonly map: { family: string; kind: string; cluster_id: number };
  readonly key: { daddr: string; saddr: string; sport: number; dport: number; nexthdr: number; flags: number };
  /** CT clock just before the socket was closed (or its process killed). */
  readonly closedAt: number;
}

export function spawnClient(ns: string, cgroup: string, cfg: object, procs: ChildProcess[]): ChildProcess {
  const argv = inCgroup(cgroup, ['ip', 'netns', 'exec', ns, process.execPath, TRAFFIC, JSON.stringify(cfg)]);
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(child);
  return child;
}

/** Resolves with the first line matching `re` on the child's stdout; rejects if it exits first. */
export function lineOf(child: ChildProcess, re: RegExp, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const onData = (d: Buffer): void => {
      out += d;
      const line = out.split('\n').find((l) => re.test(l));
      if (line !== undefined) {
        child.stdout!.off('data', onData);
        resolve(line);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (d) => (err += d));
    child.on('exit', (code) => reject(new Error(`${what}: exited ${code} before ${re}: ${out}${err}`)));
  });
}

export async function startServer(side: NetnsSide, procs: ChildProcess[]): Promise<void> {
  const child = spawn('ip', ['netns', 'exec', side.ns, process.execPath, TRAFFIC, JSON.stringify({ mode: 'serve', addresses: [side.ipv4, side.ipv6], tcpPort: TCP_PORT, udpPort: UDP_PORT })], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  procs.push(child);
  await lineOf(child, /^ready$/, `server in ${side.ns}`);
}

/** One flow of `kind` from A (in the cgroup) to B; resolves once its socket is closed. */
export async function runFlow(a: NetnsSide, b: NetnsSide, cgroup: string, fam: 4 | 6, kind: Kind, clusterId: number, procs: ChildProcess[]): Promise<Flow> {
  const host = fam === 4 ? b.ipv4 : b.ipv6;
  const udp = kind === 'udp';
  const child = spawnClient(a.ns, cgroup, { mode: 'client', kind: kind === 'kill-9' ? 'tcp-hold' : kind, host, port: udp ? UDP_PORT : TCP_PORT }, procs);
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const { localPort } = JSON.parse(await lineOf(child, /^\{/, `${kind} IPv${fam}`)) as { localPort: number };
  // For the others the client closes right after printing; kill -9 closes it here.
  const closedAt = ctNow();
  if (kind === 'kill-9') child.kill('SIGKILL');
  await exited;
  return {
    label: `${kind} IPv${fam}${clusterId ? ` cluster ${clusterId}` : ''}`,
    fam,
    kind,
    map: { family: fam === 4 ? 'FAMILY_IPV4' : 'FAMILY_IPV6', kind: udp ? 'MAP_KIND_ANY' : 'MAP_KIND_TCP', cluster_id: clusterId },
    // OUT: A's first packet went out on A's egress, where the datapath runs (facts §2 swap).
    key: { daddr: fam === 4 ? a.ipv4 : a.ipv6, saddr: host, sport: localPort, dport: udp ? UDP_PORT : TCP_PORT, nexthdr: udp ? 17 : 6, flags: 0 },
    closedAt,
  };
}


/** Two namespaces joined by a veth pair, a daemon on a private bpf-root, the datapath on A's side. */
export interface FlowScenario {
  /** Cleanups registered here run also on failure. */
  readonly scope: { after(fn: () => unknown): void };
  /** Child processes of the test: SIGKILLed at the end whatever happened. */
  readonly procs: ChildProcess[];
  readonly root: string;
  readonly a: NetnsSide;
  readonly b: NetnsSide;
  readonly daemon: DaemonProcess;
}

/**
 * The set-up the fate-sharing and lifecycle e2e tests share: bin/ctmapd (with
 * `daemonFlags`) on a private bpf-root, a veth pair between two namespaces of this test,
 * and `ctmap datapath attach` on A's device; everything removed at the end, also on failure.
 */
export async function startFlowScenario(t: { after(fn: () => unknown): void }, daemonFlags: readonly string[] = []): Promise<FlowScenario> {
  const scope = cleanupScope(t);
  const procs: ChildProcess[] = [];
  scope.after(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });
  const root = privateBpfRoot(scope).root;
  const sockDir = tempDir(scope);
  const { a, b } = await createVethPair(scope);
  const daemon = await startDaemonProcess(scope, root, path.join(sockDir.dir, 'ctmapd.sock'), daemonFlags);
  await waitQuiet(a.ns, a.dev);
  ctmapOk(['datapath', 'attach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', root, '--json']);
  scope.after(() => ctmapOk(['datapath', 'detach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', root]));
  return { scope, procs, root, a, b, daemon };
}
