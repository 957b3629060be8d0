/**
 * Shared by the datapath e2e tests: the tier check (kernel tier plus the tools and the
 * built BPF object), bin/ctmapd as a child process on a private bpf-root and socket, and
 * bin/ctmap runs.
 */
import { CTMAPD_BIN, CTMAP_BIN, REPO_ROOT, bpfObjectPath } from '../../src/config/paths';
import { ChildProcess, SpawnSyncReturns, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TestContext } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import { kernelTier } from './kernel';
import { haveTool } from './netns';

const DATAPATH_OBJECT = bpfObjectPath('ct_datapath.bpf.o');

/**
 * kernelTier(t), plus what the datapath e2e tests need: ip, tc, nsenter, ping and the
 * built object. Missing pieces skip the test with a loud line, or fail it when
 * CTMAPD_REQUIRE_KERNEL=1 (never a silent skip on a machine that should run it).
 */
export function datapathE2eTier(t: Pick<TestContext, 'skip'>, tools: readonly string[] = ['ip', 'tc', 'nsenter', 'ping']): boolean {
  if (!kernelTier(t)) return false;
  const missing = tools.filter((tool) => !haveTool(tool));
  if (!fs.existsSync(DATAPATH_OBJECT)) missing.push(`${path.relative(REPO_ROOT, DATAPATH_OBJECT)} (make -C bpf)`);
  if (missing.length === 0) return true;
  const reason = `datapath e2e needs ${missing.join(', ')}${tools.includes('ping') ? ' (scripts/install-deps.sh installs iputils-ping)' : ''}`;
  if (process.env.CTMAPD_REQUIRE_KERNEL === '1') throw new Error(`kernel tier required (CTMAPD_REQUIRE_KERNEL=1) but cannot run: ${reason}`);
  process.stderr.write(`*** DATAPATH E2E SKIPPED: ${reason} ***\n`);
  t.skip(reason);
  return false;
}

export interface DaemonProcess {
  readonly child: ChildProcess;
  /** grpc address: unix:<socket>. */
  readonly address: string;
  /** Everything the daemon wrote (JSON log lines). */
  log(): string;
  /** SIGTERM, then SIGKILL after 3 s; resolves with the exit code. Idempotent. */
  stop(): Promise<number | null>;
}

/**
 * Starts bin/ctmapd on `bpfRoot` and `socket` with small maps (and `flags`), waits until
 * health says SERVING. The stop is registered with `t`. `prefix` runs it under a command
 * that execs it (e.g. `unshare -m --`), so the child is still the daemon itself.
 */
export async function startDaemonProcess(
  t: { after(fn: () => unknown): void },
  bpfRoot: string,
  socket: string,
  flags: readonly string[] = [],
  prefix: readonly string[] = [],
): Promise<DaemonProcess> {
  const args = [CTMAPD_BIN, '--bpf-root', bpfRoot, '--socket', socket, '--bpf-ct-global-tcp-max', '65536', '--bpf-ct-global-any-max', '32768', ...flags];
  const [cmd, ...cmdArgs] = [...prefix, process.execPath, ...args];
  const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let stopping: Promise<number | null> | undefined;
  const stop = (): Promise<number | null> => {
    if (stopping) return stopping;
    if (child.exitCode !== null || child.signalCode !== null) return (stopping = exited);
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    stopping = exited.finally(() => clearTimeout(timer));
    return stopping;
  };
  t.after(stop);
  const address = `unix:${socket}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`ctmapd exited with ${child.exitCode}: ${output}`);
    if ((await health(address)) === 'SERVING') break;
    if (Date.now() > deadline) throw new Error(`ctmapd not SERVING after 15 s: ${output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, address, log: () => output, stop };
}

async function health(address: string): Promise<string> {
  const client = new (services().Health)(address, grpc.credentials.createInsecure());
  try {
    return await new Promise<string>((resolve) =>
      (client as any).Check({ service: '' }, { deadline: Date.now() + 1000 }, (err: Error | null, res: { status: string }) => resolve(err ? '' : res.status)),
    );
  } finally {
    client.close();
  }
}

/**
 * Runs bin/ctmap with `args` to completion, with CTMAP_CHECK_LEAKS=1: a datapath command
 * that leaves a bpf fd or object open says `ctmap: leak:` on stderr (and exits 1).
 */
export function ctmap(args: readonly string[], env: NodeJS.ProcessEnv = process.env): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [CTMAP_BIN, ...args], { encoding: 'utf8', env: { ...env, CTMAP_CHECK_LEAKS: '1' } });
}

/** bin/ctmap that must exit 0; returns stdout (parsed when `--json` is among the args). */
export function ctmapOk(args: readonly string[]): any {
  const r = ctmap(args);
  if (r.status !== 0) throw new Error(`ctmap ${args.join(' ')}: exit ${r.status}: ${r.stderr}${r.stdout}`);
  return args.includes('--json') ? JSON.parse(r.stdout) : r.stdout;
}

/**
 * One cleanup stack for a test: `scope.after(fn)` registers, and when the test ends (also
 * on failure) the functions run in reverse order of registration, each awaited, a failing
 * one reported on stderr without stopping the rest (namespaces, daemons and pins must all
 * go).
 */
export function cleanupScope(t: { after(fn: () => unknown): void }): { after(fn: () => unknown): void } {
  const cleanups: Array<() => unknown> = [];
  t.after(async () => {
    for (const fn of cleanups) await Promise.resolve().then(fn).catch((err) => process.stderr.write(`cleanup: ${err}\n`));
  });
  return { after: (fn) => void cleanups.unshift(fn) };
}
