/**
 * Shared machinery of the benchmark sections (bench/run.ts runs them): a private bpffs
 * directory, external commands and the ctmapd daemon as child processes, gRPC readiness,
 * timing and statistics, and the generated sections of bench/RESULTS.md.
 *
 * Every resource a section acquires is registered with a Cleanup, which run.ts drains on
 * success, on failure and on SIGINT/SIGTERM, so a bench never leaves a 1 Mi-entry map
 * pinned (it holds ~100 MB of kernel memory) or a daemon running.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { services } from '../src/api/proto';

/** Repository root: this file runs as dist/bench/lib.js. */
export { REPO_ROOT } from '../src/config/paths';
import { CTMAPD_BIN, REPO_ROOT } from '../src/config/paths';
/** The source file the sections write into (not the copy under dist/). */
export const RESULTS_FILE = path.join(REPO_ROOT, 'bench', 'RESULTS.md');
/** The C/libbpf baseline, built by `make build` (bench/c/Makefile). */
export const CTSCAN = path.join(REPO_ROOT, 'bench', '.output', 'ctscan');

/** statfs f_type of bpffs (BPF_FS_MAGIC in linux/magic.h). */
const BPF_FS_MAGIC = 0xcafe4a11;
const BENCH_DIR_PREFIX = 'ctmapd-bench-';

/** What every section gets from run.ts. */
export interface BenchContext {
  /** Measured runs per measurement (after the warm-up runs). */
  readonly runs: number;
  readonly warmup: number;
  /** bpffs mount the private directory is made under. */
  readonly bpffs: string;
  readonly cleanup: Cleanup;
  /** When set, daemons run with `node --cpu-prof` writing their profile here. */
  readonly cpuProfDir?: string;
  /** Progress lines (stderr): stdout is kept for the result tables. */
  progress(msg: string): void;
}

/** One bench: `name` is its CLI name and the id of its RESULTS.md markers. */
export interface BenchSection {
  readonly name: string;
  readonly title: string;
  run(ctx: BenchContext): Promise<SectionResult>;
}

export interface SectionResult {
  /** Printed to stdout. */
  readonly text: string;
  /** Replaces the section's generated part of RESULTS.md. */
  readonly markdown: string;
}

/** A harness failure (bad setup, wrong counts, a crashed child): run.ts exits non-zero. */
export class HarnessError extends Error {
  override name = 'HarnessError';
}

// ---------------------------------------------------------------------------------------
// Cleanup

/**
 * LIFO list of undo steps. drain() runs each once, even when an earlier one fails, so a
 * daemon that will not stop does not keep the bpffs directory from being removed.
 */
export class Cleanup {
  #steps: Array<{ what: string; fn: () => void | Promise<void> }> = [];
  #draining: Promise<void> | undefined;

  add(what: string, fn: () => void | Promise<void>): void {
    this.#steps.push({ what, fn });
  }

  /**
   * Runs the steps. A drain started while one is in progress (a signal arriving while a
   * failed section cleans up) joins it, so whoever exits the process waits for every step.
   */
  drain(report: (msg: string) => void): Promise<void> {
    this.#draining ??= (async () => {
      while (this.#steps.length > 0) {
        const { what, fn } = this.#steps.pop()!;
        try {
          await fn();
        } catch (err) {
          report(`cleanup: ${what}: ${errText(err)}`);
        }
      }
    })().finally(() => (this.#draining = undefined));
    return this.#draining;
  }
}

// ---------------------------------------------------------------------------------------
// Private bpffs directory

/**
 * Makes `<bpffs>/ctmapd-bench-<pid>/` and registers its removal. Directories of earlier
 * bench processes that no longer exist (killed with SIGKILL, say) are removed first: their
 * pinned maps would otherwise hold kernel memory until reboot.
 */
export function privateBpffsDir(ctx: BenchContext): string {
  const st = fs.statfsSync(ctx.bpffs);
  if (st.type !== BPF_FS_MAGIC) throw new HarnessError(`${ctx.bpffs} is not a bpf filesystem (run make bpffs)`);
  for (const name of fs.readdirSync(ctx.bpffs)) {
    const pid = Number(name.slice(BENCH_DIR_PREFIX.length));
    if (!name.startsWith(BENCH_DIR_PREFIX) || !Number.isInteger(pid) || pid <= 0 || pid === process.pid || processAlive(pid)) continue;
    ctx.progress(`removing stale ${path.join(ctx.bpffs, name)} (pid ${pid} is gone)`);
    fs.rmSync(path.join(ctx.bpffs, name), { recursive: true, force: true });
  }
  const dir = path.join(ctx.bpffs, `${BENCH_DIR_PREFIX}${process.pid}`);
  fs.mkdirSync(dir);
  // Unlinking a pin drops the map once no fd (daemon, ctscan, bpftool) holds it.
  ctx.cleanup.add(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A temporary directory (for sockets) removed at cleanup. */
export function tempDir(ctx: BenchContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), BENCH_DIR_PREFIX));
  ctx.cleanup.add(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------
// External commands

export interface CommandResult {
  stdout: string;
  /** Wall time from spawn to exit, ms: includes process start-up. */
  wallMs: number;
}

/**
 * Runs a command to completion. stdout is captured, or sent to /dev/null with
 * `discardStdout` (a large dump must not be buffered here: that would time this process,
 * not the command). Rejects with a HarnessError carrying stderr on a non-zero exit.
 */
const running = new Set<ChildProcess>();

/** SIGTERMs the commands runCommand has running (on interrupt: bpftool can take seconds). */
export function killCommands(): void {
  for (const child of running) child.kill('SIGTERM');
}

export function runCommand(file: string, args: readonly string[], opts: { discardStdout?: boolean } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const devNull = opts.discardStdout ? fs.openSync('/dev/null', 'w') : undefined;
    const started = process.hrtime.bigint();
    let child: ChildProcess;
    try {
      child = spawn(file, args, { stdio: ['ignore', devNull ?? 'pipe', 'pipe'] });
    } finally {
      // The child has its own copy of the descriptor once spawned.
      if (devNull !== undefined) fs.closeSync(devNull);
    }
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-4000)));
    child.on('error', (err) => {
      running.delete(child);
      reject(new HarnessError(`${file}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      running.delete(child);
      const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
      if (code === 0) resolve({ stdout, wallMs });
      else reject(new HarnessError(`${path.basename(file)} ${args.join(' ')}: exit ${code ?? signal}: ${stderr.trim()}`));
    });
  });
}

/** The one JSON line a ctscan command prints. */
export async function ctscan(args: readonly string[]): Promise<Record<string, number | string>> {
  const { stdout } = await runCommand(CTSCAN, args);
  try {
    return JSON.parse(stdout.trim()) as Record<string, number | string>;
  } catch {
    throw new HarnessError(`ctscan ${args.join(' ')}: not one JSON line: ${stdout.slice(0, 200)}`);
  }
}

// ---------------------------------------------------------------------------------------
// The daemon as a child process

export interface DaemonProcess {
  readonly pid: number;
  /** gRPC target, "unix:<socket>". */
  readonly address: string;
  /** Whether the child has exited (then `exitError()` says how). */
  exited(): boolean;
  /** The last lines it wrote, for error messages. */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts `node bin/ctmapd <args> --socket <socket>` and registers its stop. The daemon
 * runs in a process of its own, as in production, so the bench client and the server do
 * not share an event loop. With ctx.cpuProfDir it runs under `--cpu-prof`; Node writes the
 * profile when the daemon exits after SIGTERM.
 */
export function spawnDaemon(ctx: BenchContext, socket: string, args: readonly string[]): DaemonProcess {
  const nodeFlags = ctx.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', ctx.cpuProfDir] : [];
  const child = spawn(process.execPath, [...nodeFlags, CTMAPD_BIN, ...args, '--socket', socket], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new HarnessError('ctmapd: spawn failed');
  let out = '';
  const keep = (s: string) => (out = (out + s).slice(-8000));
  child.stdout!.setEncoding('utf8').on('data', keep);
  child.stderr!.setEncoding('utf8').on('data', keep);
  let exitInfo: string | undefined;
  const exitedP = new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      exitInfo = `exit ${code ?? signal}`;
      resolve();
    });
    child.on('error', (err) => {
      exitInfo = `spawn error: ${err.message}`;
      resolve();
    });
  });
  let stopping: Promise<void> | undefined;
  const handle: DaemonProcess = {
    pid: child.pid,
    address: `unix:${socket}`,
    exited: () => exitInfo !== undefined,
    output: () => (exitInfo ? `${out.trim()}\n(${exitInfo})` : out.trim()),
    stop(graceMs = 10_000) {
      stopping ??= (async () => {
        if (exitInfo !== undefined) return;
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await exitedP;
        clearTimeout(timer);
      })();
      return stopping;
    },
  };
  ctx.cleanup.add(`stop ctmapd (pid ${child.pid})`, () => handle.stop());
  return handle;
}

/**
 * Polls grpc.health.v1.Health/Check (service "") until it answers SERVING. Throws a
 * HarnessError with the daemon's output when it exits first or `timeoutMs` passes.
 */
export async function waitServing(daemon: DaemonProcess, timeoutMs = 30_000): Promise<void> {
  const client = new (services().Health)(daemon.address, grpc.credentials.createInsecure());
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer yet';
  try {
    while (Date.now() < deadline) {
      if (daemon.exited()) throw new HarnessError(`ctmapd exited before serving:\n${daemon.output()}`);
      try {
        const res = await unaryCall<{ status: string }>(client, 'Check', { service: '' }, 1000);
        if (res.status === 'SERVING') return;
        last = `health ${res.status}`;
      } catch (err) {
        last = errText(err);
      }
      await sleep(50);
    }
    throw new HarnessError(`ctmapd not SERVING after ${timeoutMs} ms (${last}):\n${daemon.output()}`);
  } finally {
    client.close();
  }
}

/** A unary call on a proto-loader client, with an optional deadline in ms. */
export function unaryCall<T>(client: grpc.Client, method: string, req: object, timeoutMs?: number): Promise<T> {
  const fn = (client as unknown as Record<string, Function>)[method];
  const options: grpc.CallOptions = timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs };
  return new Promise((resolve, reject) => {
    fn.call(client, req, options, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

/** Resolves once `client`'s channel is connected (so no run pays for the connect). */
export function waitReady(client: grpc.Client, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())));
}

/**
 * CPU time the process has used so far, ms, all threads (V8 helper threads and the
 * libuv pool included), from the per-thread schedstat run times: ns resolution, where
 * /proc/<pid>/stat only counts 10 ms ticks.
 */
export function processCpuMs(pid: number): number {
  let ns = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'latin1').split(' ')[0]);
    } catch {
      // The thread ended between readdir and read: its time is lost, which is noise here.
    }
  }
  return ns / 1e6;
}

// ---------------------------------------------------------------------------------------
// Timing and statistics

/** Wall time of `fn`, ms, with its result. */
export async function timeIt<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, value };
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function min(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : Math.min(...xs);
}

/** One run of a measurement: its time and whatever else it observed (CPU, bytes, ...). */
export interface Sample {
  ms: number;
  extra?: Record<string, number>;
}

export interface Measurement {
  readonly label: string;
  /** Measured runs; defaults to ctx.runs. Slow measurements ask for fewer. */
  readonly runs?: number;
  readonly warmup?: number;
  run(): Promise<Sample>;
}

export interface Measured {
  readonly label: string;
  readonly samples: Sample[];
  readonly medianMs: number;
  readonly minMs: number;
  /** Median of each `extra` key over the measured runs. */
  readonly extra: Record<string, number>;
}

/**
 * Runs the measurements in interleaved rounds: round r runs every measurement that still
 * needs a run, in order. A drift of the machine (another tenant, frequency, page cache)
 * then hits the baseline and the measurements it is compared with alike, which matters
 * more for a ratio than for either number. Warm-up runs come first and are discarded.
 */
export async function measureRounds(ctx: BenchContext, ms: readonly Measurement[]): Promise<Measured[]> {
  const need = ms.map((m) => (m.warmup ?? ctx.warmup) + (m.runs ?? ctx.runs));
  const samples: Sample[][] = ms.map(() => []);
  const rounds = Math.max(...need);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < ms.length; i++) {
      if (r >= need[i]) continue;
      const warm = r < (ms[i].warmup ?? ctx.warmup);
      const s = await ms[i].run();
      ctx.progress(`  ${ms[i].label}: ${s.ms.toFixed(1)} ms${warm ? ' (warm-up)' : ''}`);
      if (!warm) samples[i].push(s);
    }
  }
  return ms.map((m, i) => {
    const xs = samples[i];
    const extra: Record<string, number> = {};
    for (const k of new Set(xs.flatMap((s) => Object.keys(s.extra ?? {})))) extra[k] = median(xs.map((s) => s.extra?.[k] ?? NaN));
    return { label: m.label, samples: xs, medianMs: median(xs.map((s) => s.ms)), minMs: min(xs.map((s) => s.ms)), extra };
  });
}

// ---------------------------------------------------------------------------------------
// Reporting

/** Machine facts for a results header. */
export function machineInfo(): Record<string, string> {
  let cpu = 'unknown';
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'latin1'))?.[1]?.trim() ?? cpu;
  } catch {
    // Not Linux /proc: leave unknown.
  }
  return {
    nproc: String(os.availableParallelism()),
    cpu,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
  };
}

/** A Markdown table; also what is printed to stdout (readable as plain text). */
export function markdownTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

export const fmtMs = (ms: number): string => (Number.isFinite(ms) ? (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1)) : 'n/a');
export const fmtRatio = (r: number): string => (Number.isFinite(r) ? `${r.toFixed(2)}×` : 'n/a');
export const fmtInt = (n: number): string => n.toLocaleString('en-US');

const marker = (name: string, edge: 'begin' | 'end') => `<!-- bench:${name}:${edge} -->`;

/**
 * Replaces the text between `<!-- bench:<name>:begin -->` and `<!-- bench:<name>:end -->`
 * in `file`, keeping everything outside the markers (the hand-written intro, other
 * benches' sections). A section seen for the first time is appended under `## title`.
 * Written to a temp file and renamed, so an interrupted run never leaves half a file.
 */
export function writeResultsSection(file: string, name: string, title: string, body: string): void {
  const begin = marker(name, 'begin');
  const end = marker(name, 'end');
  let doc = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# ctmapd benchmarks\n';
  const block = `${begin}\n${body.trim()}\n${end}`;
  const b = doc.indexOf(begin);
  const e = doc.indexOf(end);
  if (b >= 0 && e > b) doc = doc.slice(0, b) + block + doc.slice(e + end.length);
  else if (b >= 0 || e >= 0) throw new HarnessError(`${file}: unbalanced ${begin} / ${end} markers`);
  else doc = `${doc.trimEnd()}\n\n## ${title}\n\n${block}\n`;
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, doc);
  fs.renameSync(tmp, file);
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------
// Protobuf wire walking

/**
 * Counts the occurrences of length-delimited field `field` at the top level of one
 * encoded message, skipping each body without decoding it (for CtRecordBatch, field 1 is
 * `repeated CtRecord records`). Fields of other numbers are skipped by wire type. Throws a
 * HarnessError on a malformed message: a miscount must never pass as a result.
 */
export function countLenFields(buf: Buffer, field: number): number {
  let pos = 0;
  let n = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (pos >= buf.length) throw new HarnessError('protobuf: truncated varint');
      const b = buf[pos++];
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
      if (mul > 2 ** 63) throw new HarnessError('protobuf: varint longer than 10 bytes');
    }
  };
  while (pos < buf.length) {
    const tag = varint();
    const wire = tag % 8;
    if (wire === 2) {
      const len = varint();
      if (pos + len > buf.length) throw new HarnessError('protobuf: field runs past the message end');
      pos += len;
      if (Math.floor(tag / 8) === field) n++;
    } else if (wire === 0) varint();
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new HarnessError(`protobuf: unexpected wire type ${wire}`);
  }
  if (pos !== buf.length) throw new HarnessError('protobuf: fixed-size field runs past the message end');
  return n;
}
