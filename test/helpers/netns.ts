/**
 * Network namespaces for the datapath e2e tests: two namespaces with unique names joined
 * by a veth pair, documentation addresses only (192.0.2.0/24, 2001:db8::/64), and as
 * quiet as Linux allows so that every packet on the link is one a test sent: static
 * neighbour entries (no ARP, no neighbour discovery), no link-local addresses and no
 * router solicitations, addresses added only once the link is up; the MLD reports of the
 * address setup are sent at once (unsolicited report interval 1 ms, no random delay) and
 * waited out (waitQuiet).
 *
 * Everything is removed by cleanup(), which is idempotent and also registered with the
 * test context, so a failed test does not leak namespaces.
 */
import { SpawnSyncReturns, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';

export interface NetnsSide {
  readonly ns: string;
  readonly dev: string;
  readonly mac: string;
  readonly ipv4: string;
  readonly ipv6: string;
}

export interface VethPair {
  readonly a: NetnsSide;
  readonly b: NetnsSide;
  /** Deletes both namespaces (and with them the veth pair and its tc filters). Idempotent. */
  cleanup(): void;
}

/** Runs a command; throws with its output when it fails. */
export function run(cmd: string, args: readonly string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

/** Runs a command inside a namespace (ip netns exec: fine for tools that need no bpffs). */
export function inNetns(ns: string, cmd: string, args: readonly string[]): string {
  return run('ip', ['netns', 'exec', ns, cmd, ...args]);
}

export function tryInNetns(ns: string, cmd: string, args: readonly string[]): SpawnSyncReturns<string> {
  return spawnSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8' });
}

/** A unique namespace name for this run: ctm-<pid>-<random>-<suffix>. */
export function uniqueNetnsName(suffix: string): string {
  return `ctm-${process.pid}-${randomBytes(3).toString('hex')}-${suffix}`;
}

/**
 * Creates namespaces A and B, vethA in A (192.0.2.1/24, 2001:db8::1/64) and vethB in B
 * (192.0.2.2/24, 2001:db8::2/64), up, with static neighbours. `t` gets the cleanup. The
 * MLD reports of the address setup may still be on their way: waitQuiet.
 */
export async function createVethPair(t?: { after(fn: () => void): void }): Promise<VethPair> {
  const a: NetnsSide = { ns: uniqueNetnsName('a'), dev: 'vethA', mac: '02:00:00:c0:00:01', ipv4: '192.0.2.1', ipv6: '2001:db8::1' };
  const b: NetnsSide = { ns: uniqueNetnsName('b'), dev: 'vethB', mac: '02:00:00:c0:00:02', ipv4: '192.0.2.2', ipv6: '2001:db8::2' };
  const created: string[] = [];
  const cleanup = (): void => {
    for (const ns of created.splice(0)) spawnSync('ip', ['netns', 'del', ns]);
  };
  t?.after(cleanup);
  try {
    for (const side of [a, b]) {
      run('ip', ['netns', 'add', side.ns]);
      created.push(side.ns);
      // Inherited by devices created afterwards: no RAs, no RS, no link-local address,
      // MLD reports sent right away instead of spread over a second.
      inNetns(side.ns, 'sysctl', [
        '-qw',
        'net.ipv6.conf.default.accept_ra=0',
        'net.ipv6.conf.default.router_solicitations=0',
        'net.ipv6.conf.default.addr_gen_mode=1',
        'net.ipv6.conf.default.router_solicitation_delay=0',
        'net.ipv6.conf.default.mldv1_unsolicited_report_interval=1',
        'net.ipv6.conf.default.mldv2_unsolicited_report_interval=1',
        'net.ipv6.conf.all.accept_ra=0',
      ]);
    }
    run('ip', ['link', 'add', a.dev, 'netns', a.ns, 'type', 'veth', 'peer', 'name', b.dev, 'netns', b.ns]);
    for (const side of [a, b]) {
      run('ip', ['-n', side.ns, 'link', 'set', side.dev, 'address', side.mac]);
      run('ip', ['-n', side.ns, 'link', 'set', 'lo', 'up']);
      run('ip', ['-n', side.ns, 'link', 'set', side.dev, 'up']);
    }
    // Carrier changes reach IPv6 through linkwatch, up to a second late, and then re-run
    // address configuration (MLD reports again): let that happen before any address.
    await waitOperUp(a, 5000);
    await waitOperUp(b, 5000);
    for (const [self, peer] of [
      [a, b],
      [b, a],
    ]) {
      const ipn = (...args: string[]): string => run('ip', ['-n', self.ns, ...args]);
      ipn('addr', 'add', `${self.ipv4}/24`, 'dev', self.dev);
      ipn('addr', 'add', `${self.ipv6}/64`, 'dev', self.dev, 'nodad');
      ipn('neigh', 'add', peer.ipv4, 'lladdr', peer.mac, 'dev', self.dev, 'nud', 'permanent');
      ipn('neigh', 'add', peer.ipv6, 'lladdr', peer.mac, 'dev', self.dev, 'nud', 'permanent');
    }
  } catch (err) {
    cleanup();
    throw err;
  }
  return { a, b, cleanup };
}

async function waitOperUp(side: NetnsSide, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!/ state UP /.test(run('ip', ['-n', side.ns, '-o', 'link', 'show', 'dev', side.dev]))) {
    if (Date.now() > deadline) throw new Error(`${side.dev} in ${side.ns}: not up after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** rx + tx packets of `dev` in `ns` (/proc/net/dev read inside the namespace). */
export function linkPackets(ns: string, dev: string): number {
  const line = inNetns(ns, 'cat', ['/proc/net/dev'])
    .split('\n')
    .find((l) => l.trim().startsWith(`${dev}:`));
  if (!line) throw new Error(`no ${dev} in ${ns}`);
  const f = line.split(':')[1].trim().split(/\s+/).map(Number);
  return f[1] + f[9];
}

/**
 * Waits until `dev` in `ns` has sent and received nothing for `quietMs` (the MLD reports
 * of the address setup are over). Throws after `timeoutMs`.
 */
export async function waitQuiet(ns: string, dev: string, quietMs = 300, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = linkPackets(ns, dev);
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error(`${dev} in ${ns} still busy after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
    const now = linkPackets(ns, dev);
    if (now !== last) {
      last = now;
      since = Date.now();
    }
  }
}

/** Whether an executable is on PATH (for the tier check). */
export function haveTool(name: string): boolean {
  return (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').some((dir) => {
    try {
      fs.accessSync(`${dir}/${name}`, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
