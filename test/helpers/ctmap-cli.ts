/**
 * bin/ctmap as a child process, the way an operator runs it: to completion (its exit
 * status, stdout and stderr), or running on (a watch) with its output collected as it
 * arrives and a SIGKILL at the end of the test if it is still there.
 */
import { ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import { CTMAP_BIN } from '../../src/config/paths';
import { DaemonChild, spawnDaemon } from './daemon-process';
import { tempDir, type Client } from './grpc';

export interface CtmapResult {
  readonly status: number | null;
  readonly out: string;
  readonly err: string;
}

/** Runs `ctmap <args>` to its end (at most 30 s). */
export function runCtmap(args: readonly string[]): CtmapResult {
  const r = spawnSync(process.execPath, [CTMAP_BIN, ...args], { encoding: 'utf8', timeout: 30_000, maxBuffer: 64 << 20 });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

/** runCtmap without blocking the test's event loop (several can run at once). */
export function runCtmapAsync(args: readonly string[]): Promise<CtmapResult> {
  return new Promise((resolve) =>
    execFile(process.execPath, [CTMAP_BIN, ...args], { encoding: 'utf8', timeout: 30_000, maxBuffer: 64 << 20 }, (err, out, errOut) =>
      resolve({ status: err ? ((err as { code?: number }).code ?? null) : 0, out, err: errOut }),
    ),
  );
}

export interface RunningCtmap {
  readonly child: ChildProcess;
  /** The exit code once the process has exited and its output is all read. */
  readonly exited: Promise<number | null>;
  out(): string;
  err(): string;
  /** stdout's non-empty lines, each parsed as JSON. */
  lines(): any[];
}

/** Starts `ctmap <args>` and leaves it running; `after` (a test context's) SIGKILLs it if it still runs. */
export function spawnCtmap(after: (fn: () => void) => void, args: readonly string[]): RunningCtmap {
  const child = spawn(process.execPath, [CTMAP_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  // 'close', not 'exit': by then every byte the process wrote has been read.
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return {
    child,
    exited,
    out: () => out,
    err: () => err,
    lines: () => out.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l)),
  };
}

/** A daemon for CLI tests: memory backend, 4096-entry CT maps, its socket, and CTMaps and ClusterCTMaps clients. */
export interface CliDaemon {
  readonly daemon: DaemonChild;
  readonly socket: string;
  readonly ct: Client;
  readonly clusters: Client;
}

/**
 * Starts bin/ctmapd on a private socket (memory backend, bpf-root named after `name`), with
 * `flags` added, and waits until it serves; everything is stopped after the test.
 */
export async function startCliDaemon(t: { after(fn: () => unknown): void }, name: string, flags: readonly string[] = []): Promise<CliDaemon> {
  const dir = tempDir(t);
  const socket = path.join(dir.dir, 'ctmapd.sock');
  const daemon = spawnDaemon((fn) => t.after(fn), socket, ['--backend', 'memory', '--bpf-root', `/memory-${name}-${process.pid}`, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096', ...flags]);
  t.after(() => daemon.kill9());
  await daemon.waitFor(/serving/i);
  const creds = grpc.credentials.createInsecure();
  const ct = new (services().CTMaps)(daemon.address, creds) as unknown as Client;
  const clusters = new (services().ClusterCTMaps)(daemon.address, creds) as unknown as Client;
  t.after(() => [ct, clusters].forEach((c) => c.close()));
  return { daemon, socket, ct, clusters };
}
