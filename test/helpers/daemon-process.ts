/**
 * bin/ctmapd as a child process for tests that kill it (kill -9 at chosen or random
 * moments): its JSON log lines are collected as they arrive, and the process is SIGKILLed
 * at the end of the test whatever happened.
 */
import { CTMAPD_BIN } from '../../src/config/paths';
import { ChildProcess, spawn } from 'node:child_process';

const BIN = CTMAPD_BIN;

export interface DaemonChild {
  readonly child: ChildProcess;
  readonly pid: number;
  /** "unix:<socket>". */
  readonly address: string;
  /** Every JSON log line so far, parsed; `at` is when it arrived (ms, performance.now()). */
  readonly lines: Array<Record<string, any> & { at: number }>;
  /** Resolves when the process has exited (code or signal) and its output is all read. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The first log line whose msg matches (waiting up to timeoutMs); rejects if the process exits first. */
  waitFor(msg: RegExp, timeoutMs?: number): Promise<Record<string, any> & { at: number }>;
  /** SIGKILL and wait for the exit. */
  kill9(): Promise<void>;
}

/**
 * Starts bin/ctmapd with `flags` (and `--socket <socket>`), extra environment `env`.
 * `after` registers the final SIGKILL (a test context's after()).
 */
export function spawnDaemon(after: (fn: () => Promise<void>) => void, socket: string, flags: string[], env: Record<string, string> = {}): DaemonChild {
  const child = spawn(process.execPath, [BIN, '--socket', socket, ...flags], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const lines: DaemonChild['lines'] = [];
  const waiters = new Set<() => void>();
  let buffered = '';
  const take = (chunk: Buffer): void => {
    buffered += chunk.toString();
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      try {
        lines.push({ ...JSON.parse(line), at: performance.now() });
      } catch {
        lines.push({ msg: line, at: performance.now() });
      }
    }
    for (const w of waiters) w();
  };
  child.stdout!.on('data', take);
  child.stderr!.on('data', take);
  // 'close', not 'exit': by then every line the process wrote has been read.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      for (const w of waiters) w();
      resolve({ code, signal });
    }),
  );
  const d: DaemonChild = {
    child,
    pid: child.pid!,
    address: `unix:${socket}`,
    lines,
    exited,
    waitFor(msg, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = lines.find((l) => msg.test(String(l.msg)));
          if (hit) return done(() => resolve(hit));
          if (child.exitCode !== null || child.signalCode !== null) {
            return done(() => reject(new Error(`ctmapd exited (${child.exitCode ?? child.signalCode}) before logging ${msg}: ${lines.map((l) => l.msg).slice(-5).join(' | ')}`)));
          }
        };
        const timer = setTimeout(() => done(() => reject(new Error(`ctmapd did not log ${msg} within ${timeoutMs} ms`))), timeoutMs);
        const done = (fn: () => void): void => {
          clearTimeout(timer);
          waiters.delete(check);
          fn();
        };
        waiters.add(check);
        check();
      });
    },
    async kill9() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  after(() => d.kill9());
  return d;
}
