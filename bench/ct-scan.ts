/**
 * Bench "ct-scan": on a 1 Mi-entry kernel TCP4 CT map, ctmapd's Count and full dumps as
 * received by a gRPC client, each as a ratio against the C/libbpf scan (ctscan, lookup_batch
 * of 4096) of the same map in the same run; bpftool's dump of the same map for scale.
 *
 * The map is created and filled by ctscan in a private bpffs directory laid out like
 * Cilium's (<dir>/tc/globals/cilium_ct4_global), and the daemon, started on that directory
 * with a matching --bpf-ct-global-tcp-max, reuses it (checked via Count). Nothing writes to
 * the map during the bench, so every scan must see exactly the same entries: any other
 * count is a harness error, not a result.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { services } from '../src/api/proto';
import { CTMAP_BIN } from '../src/config/paths';
import {
  BenchContext,
  BenchSection,
  HarnessError,
  Measured,
  Measurement,
  Sample,
  countLenFields,
  ctscan,
  fmtInt,
  fmtMs,
  fmtRatio,
  machineInfo,
  markdownTable,
  measureRounds,
  privateBpffsDir,
  processCpuMs,
  runCommand,
  spawnDaemon,
  tempDir,
  timeIt,
  unaryCall,
  waitReady,
  waitServing,
} from './lib';

const MAX_ENTRIES = 1 << 20;
/** ctscan's batch, the daemon's dump batch (DumpCursor) and Cilium's default. */
const C_BATCH = 4096;
const FILL_SEED = 1;
/** bpftool takes seconds per dump: fewer runs keep the bench short, medians still hold. */
const BPFTOOL_RUNS = 3;

const TCP4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP' };
const ANY4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_ANY' };

interface Row {
  m: Measured;
  /** Target ratio: this row's median / the median of `vs` (default: the C scan). */
  target?: number;
  vs?: { m: Measured; name: string };
  note: string;
}

export const ctScan: BenchSection = {
  name: 'ct-scan',
  title: 'CT scan: Count and full dump of a 1 Mi-entry TCP4 map vs C libbpf',

  async run(ctx: BenchContext) {
    // --- the map, made and filled by the C baseline ---
    const dir = privateBpffsDir(ctx);
    const globals = path.join(dir, 'tc', 'globals');
    fs.mkdirSync(globals, { recursive: true });
    const pin = path.join(globals, 'cilium_ct4_global');
    ctx.progress(`ct-scan: creating and filling ${pin} (${fmtInt(MAX_ENTRIES)} entries)`);
    await ctscan(['create', pin, String(MAX_ENTRIES)]);
    const fill = await ctscan(['fill', pin, String(MAX_ENTRIES), String(FILL_SEED)]);
    // An LRU map may evict while it fills up to max_entries (per-CPU free lists), so the
    // map may hold fewer than were written: every check below uses what it really holds.
    const entries = Number((await ctscan(['scan', pin, String(C_BATCH)])).entries);
    if (!(entries > 0 && entries <= MAX_ENTRIES)) throw new HarnessError(`ctscan scan: ${entries} entries after filling ${fill.filled}`);

    // --- the daemon, on the same bpffs directory ---
    const sock = path.join(tempDir(ctx), 'ctmapd.sock');
    const daemon = spawnDaemon(ctx, sock, [
      '--backend', 'kernel',
      '--bpf-root', dir,
      '--bpf-ct-global-tcp-max', String(MAX_ENTRIES),
      '--enable-ipv6=false',
      '--log-level', 'warn',
    ]);
    ctx.progress(`ct-scan: ctmapd pid ${daemon.pid} on ${daemon.address}`);
    await waitServing(daemon);

    const creds = grpc.credentials.createInsecure();
    const ct = new (services().CTMaps)(daemon.address, creds);
    // A bare client: messages arrive as the received bytes, with no protobuf decoding, so
    // the dump rows time the server and the transport, not a client-side decoder.
    const raw = new grpc.Client(daemon.address, creds);
    ctx.cleanup.add('close gRPC clients', () => {
      ct.close();
      raw.close();
    });
    await Promise.all([waitReady(ct), waitReady(raw)]);

    const countReq = { maps: [TCP4] };
    const cidrCountReq = { maps: [TCP4], filter: { src: ['0.0.0.0/1', '128.0.0.0/1'] } };
    const daemonCount = await countOnce(ct, countReq);
    if (daemonCount !== entries) {
      throw new HarnessError(
        `ctmapd Count says ${daemonCount} entries, ctscan ${entries}: the daemon did not reuse the filled map (attribute mismatch?)\n${daemon.output()}`,
      );
    }

    // `ctmap ct list` dumps every open global map of the enabled families (ActiveMaps): with
    // --enable-ipv6=false, TCP4 (the filled map) and ANY4 (empty). Its raw-client baseline
    // makes the same request.
    const cliMaps = [TCP4, ANY4];
    const cliEntries = (await unaryCall<{ counts: Array<{ entries: string }> }>(ct, 'Count', { maps: cliMaps })).counts.reduce((n, x) => n + Number(x.entries), 0);
    if (cliEntries !== entries) throw new HarnessError(`Count of TCP4 + ANY4: ${cliEntries}, TCP4 alone ${entries}: the ANY4 map is not empty`);
    const cliArgs = ['ct', 'list', '-o', 'jsonl', '--socket', daemon.address.slice('unix:'.length)];

    // --- measurements ---
    const def = services().CTMaps.service;
    const dumpReq = { maps: [TCP4] };
    const expect = (what: string, got: number) => {
      if (got !== entries) throw new HarnessError(`${what}: ${got} records, the map holds ${entries}`);
    };
    /** Wraps a client-side action with the daemon's and this process's CPU time. */
    const withCpu = async (fn: () => Promise<Record<string, number>>): Promise<Sample> => {
      const server0 = processCpuMs(daemon.pid);
      const client0 = process.cpuUsage();
      const { ms, value } = await timeIt(fn);
      const client = process.cpuUsage(client0);
      return { ms, extra: { ...value, serverCpuMs: processCpuMs(daemon.pid) - server0, clientCpuMs: (client.user + client.system) / 1000 } };
    };

    const measurements: Measurement[] = [
      {
        label: `C ctscan scan (lookup_batch ${C_BATCH})`,
        async run() {
          const r = await ctscan(['scan', pin, String(C_BATCH)]);
          expect('ctscan scan', Number(r.entries));
          // ctscan's own clock around the batch loop: no process start-up, no output.
          return { ms: Number(r.ns) / 1e6 };
        },
      },
      {
        label: 'ctmapd Count (TCP4), unary',
        run: () =>
          withCpu(async () => {
            expect('Count', await countOnce(ct, countReq));
            return {};
          }),
      },
      {
        // Two /1 prefixes cover every IPv4 source, so the count is exactly the map's and
        // every entry pays the prefix test (mask + table lookup) and the key walk.
        label: 'ctmapd Count (TCP4) with a CIDR filter, unary',
        run: () =>
          withCpu(async () => {
            expect('Count with a CIDR filter', await countOnce(ct, cidrCountReq));
            return {};
          }),
      },
      {
        label: 'ctmapd DumpEntriesBatched, raw client',
        run: () =>
          withCpu(async () => {
            const r = await rawStream(raw, def.DumpEntriesBatched, dumpReq, (b) => countLenFields(b, 1));
            expect('DumpEntriesBatched', r.records);
            return r;
          }),
      },
      {
        label: 'ctmapd DumpEntries, raw client',
        run: () =>
          withCpu(async () => {
            const r = await rawStream(raw, def.DumpEntries, dumpReq, () => 1);
            expect('DumpEntries', r.records);
            return r;
          }),
      },
      {
        label: 'ctmapd DumpEntriesBatched, decoded client',
        run: () =>
          withCpu(async () => {
            const r = await decodedStream(ct, dumpReq);
            expect('DumpEntriesBatched (decoded)', r.records);
            return r;
          }),
      },
      {
        label: 'ctmapd DumpEntriesBatched, raw client, the CLI\'s maps (TCP4 + ANY4)',
        run: () =>
          withCpu(async () => {
            const r = await rawStream(raw, def.DumpEntriesBatched, { maps: cliMaps }, (b) => countLenFields(b, 1));
            expect('DumpEntriesBatched (TCP4 + ANY4)', r.records);
            return r;
          }),
      },
      {
        label: '`ctmap ct list -o jsonl` (CLI process, stdout a FIFO)',
        async run() {
          const server0 = processCpuMs(daemon.pid);
          const r = await ctmapJsonl(cliArgs);
          if (r.lines !== entries) throw new HarnessError(`ctmap ct list -o jsonl: ${r.lines} lines, the maps hold ${entries}`);
          return { ms: r.wallMs, extra: { serverCpuMs: processCpuMs(daemon.pid) - server0, clientCpuMs: r.cpuMs, bytes: r.bytes } };
        },
      },
      {
        label: '`ctmap health` (CLI process start-up and one RPC)',
        run: async () => ({ ms: (await runCommand(process.execPath, [CTMAP_BIN, 'health', '--socket', daemon.address.slice('unix:'.length)])).wallMs }),
      },
      {
        label: 'bpftool map dump pinned',
        runs: Math.min(ctx.runs, BPFTOOL_RUNS),
        run: async () => ({ ms: (await runCommand('bpftool', ['map', 'dump', 'pinned', pin], { discardStdout: true })).wallMs }),
      },
      {
        label: 'bpftool -j map dump pinned',
        runs: Math.min(ctx.runs, BPFTOOL_RUNS),
        run: async () => ({ ms: (await runCommand('bpftool', ['-j', 'map', 'dump', 'pinned', pin], { discardStdout: true })).wallMs }),
      },
    ];
    ctx.progress(`ct-scan: map holds ${fmtInt(entries)} entries; measuring (${ctx.warmup} warm-up + ${ctx.runs} runs, bpftool ${Math.min(ctx.runs, BPFTOOL_RUNS)})`);
    const [c, count, cidrCount, batched, single, decoded, cliBatched, cliList, cliHealth, bpftool, bpftoolJson] = await measureRounds(ctx, measurements);

    await daemon.stop();
    if (ctx.cpuProfDir) ctx.progress(`ct-scan: daemon CPU profile in ${ctx.cpuProfDir}`);

    const dumpNote = (m: Measured) =>
      [`${fmtInt(m.extra.messages)} msgs`, m.extra.bytes === undefined ? '' : `${(m.extra.bytes / 2 ** 20).toFixed(1)} MiB`, `${fmtRatesM(entries, m.medianMs)} rec/s`]
        .filter(Boolean)
        .join(', ');
    const rows: Row[] = [
      { m: c, note: `${fmtRatesM(entries, c.medianMs)} rec/s; kernel time of the batch loop (ctscan's clock)` },
      { m: count, target: 1.1, note: 'unary call wall time at the client' },
      {
        m: cidrCount,
        target: 1.5,
        vs: { m: count, name: 'Count' },
        note: `filter.src 0.0.0.0/1 + 128.0.0.0/1 (every entry tested, all match): ${fmtRatio(cidrCount.medianMs / count.medianMs)} the unfiltered Count row`,
      },
      { m: batched, target: 2, note: dumpNote(batched) },
      { m: single, note: dumpNote(single) },
      { m: decoded, note: `${dumpNote(decoded)}; protobufjs objects (proto-loader options)` },
      { m: cliBatched, note: `${dumpNote(cliBatched)}; the request \`ctmap ct list\` makes (ANY4 is empty): the baseline of the next row` },
      {
        m: cliList,
        target: 3,
        vs: { m: cliBatched, name: 'raw client' },
        note: `${fmtRatio(cliList.medianMs / cliBatched.medianMs)} the raw client of the same maps; wall time from spawn until exit and the last byte read (start-up included); ${fmtInt(entries)} lines counted per run; ${(cliList.extra.bytes / 2 ** 20).toFixed(0)} MiB of JSON; client CPU = the ctmap process (user + sys)`,
      },
      { m: cliHealth, note: 'process wall time: what any ctmap command pays before its work (Node start-up, loading the protos, connecting)' },
      { m: bpftool, note: 'process wall time, hex text to /dev/null' },
      { m: bpftoolJson, note: 'process wall time, JSON to /dev/null' },
    ];
    const header = ['measurement', 'median ms', 'min ms', 'runs', '×C (median)', 'target (of C unless named)', 'result', 'server CPU ms', 'client CPU ms', 'notes'];
    const table = markdownTable(
      header,
      rows.map(({ m, target, vs, note }) => {
        const ratio = m.medianMs / c.medianMs;
        const targetRatio = m.medianMs / (vs ?? { m: c }).m.medianMs;
        return [
          m.label,
          fmtMs(m.medianMs),
          fmtMs(m.minMs),
          String(m.samples.length),
          m === c ? '1.00× (baseline)' : fmtRatio(ratio),
          target === undefined ? '—' : `≤ ${target}×${vs ? ` ${vs.name}` : ''}`,
          target === undefined ? '—' : targetRatio <= target ? 'PASS' : 'MISS',
          m.extra.serverCpuMs === undefined ? '—' : fmtMs(m.extra.serverCpuMs),
          m.extra.clientCpuMs === undefined ? '—' : fmtMs(m.extra.clientCpuMs),
          note,
        ];
      }),
    );

    const mi = machineInfo();
    const held = entries === Number(fill.filled) ? `${fmtInt(entries)} (all written)` : `${fmtInt(entries)} of ${fmtInt(Number(fill.filled))} written (LRU evictions)`;
    const markdown = [
      `Latest run: ${new Date().toISOString()} — \`make bench\` (this section alone: \`node dist/bench/run.js ct-scan\`).`,
      '',
      `- Machine: ${mi.cpu}, ${mi.nproc} CPUs, ${mi.memory}; ${mi.kernel}; Node ${mi.node}.`,
      `- Map: LRU_HASH \`tc/globals/cilium_ct4_global\`, key 14 B, value 56 B, max_entries ${fmtInt(MAX_ENTRIES)}; filled by \`ctscan fill\` (seed ${FILL_SEED}); holds ${held}.`,
      `- Daemon: \`node bin/ctmapd --backend kernel --bpf-ct-global-tcp-max ${MAX_ENTRIES} --enable-ipv6=false\`, a child process on a unix socket; Count confirmed it reused the filled map.`,
      `- Runs: ${ctx.warmup} warm-up + ${ctx.runs} measured per row (bpftool: ${ctx.warmup} + ${Math.min(ctx.runs, BPFTOOL_RUNS)}), interleaved in rounds; ×C = median / C median; a target naming a row compares with that row's median instead. Dump rows assert ${fmtInt(entries)} records per run, the \`ctmap ct list -o jsonl\` row ${fmtInt(entries)} lines (counted through the pipe; the first parsed as a CtRecord).`,
      `- Load: load average ${os.loadavg().map((x) => x.toFixed(2)).join(' / ')} (1 / 5 / 15 min) when the section ended; the two CPUs are shared with whatever else runs.`,
      '- CPU columns: medians per run; server = every thread of the daemon (schedstat), client = this bench process.',
      '',
      table,
    ].join('\n');
    return { text: `${this.title}\n\n${table}\n\nmap holds ${fmtInt(entries)} entries`, markdown };
  },
};

async function countOnce(client: grpc.Client, req: object): Promise<number> {
  const res = await unaryCall<{ counts: Array<{ entries: string }> }>(client, 'Count', req);
  if (res.counts.length !== 1) throw new HarnessError(`Count: ${res.counts.length} counts for one map`);
  return Number(res.counts[0].entries);
}

/**
 * Reads `stream` to its end, handing each message to `onData`. Resolves once both the
 * stream has ended and the status is OK (a status may arrive while messages still sit in
 * the buffer); rejects on a stream error.
 */
function readToEnd<T>(stream: grpc.ClientReadableStream<T>, onData: (msg: T) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let ended = false;
    let ok = false;
    const done = () => ended && ok && resolve();
    stream.on('data', onData);
    stream.on('error', reject);
    stream.on('status', (s: grpc.StatusObject) => {
      ok = s.code === grpc.status.OK;
      done();
    });
    stream.on('end', () => {
      ended = true;
      done();
    });
  });
}

/**
 * A server stream on a bare client with an identity deserializer; each message is counted
 * by `records` from its bytes.
 */
async function rawStream(
  client: grpc.Client,
  method: grpc.MethodDefinition<object, unknown>,
  req: object,
  records: (msg: Buffer) => number,
): Promise<{ records: number; messages: number; bytes: number }> {
  const out = { records: 0, messages: 0, bytes: 0 };
  const stream = client.makeServerStreamRequest<object, Buffer>(method.path, method.requestSerialize, (b: Buffer) => b, req);
  await readToEnd(stream, (msg) => {
    out.messages++;
    out.bytes += msg.length;
    out.records += records(msg);
  });
  return out;
}

/** DumpEntriesBatched on the proto-loader client: every record becomes a JS object. */
async function decodedStream(client: grpc.Client, req: object): Promise<{ records: number; messages: number }> {
  const out = { records: 0, messages: 0 };
  const fn = (client as unknown as Record<string, (r: object) => grpc.ClientReadableStream<{ records: unknown[] }>>).DumpEntriesBatched;
  await readToEnd(fn.call(client, req), (msg) => {
    out.messages++;
    out.records += msg.records.length;
  });
  return out;
}

/** Children's CPU time this process has waited for, ms (utime + stime of reaped children, /proc/self/stat). */
function reapedChildrenCpuMs(): number {
  const stat = fs.readFileSync('/proc/self/stat', 'latin1');
  // Fields after the ")" of the command name: state is field 3; cutime 16, cstime 17.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[13]) + Number(f[14])) * 1000) / CLK_TCK;
}
/** USER_HZ: the unit of /proc's CPU times (100 on every Linux architecture ctmapd runs on). */
const CLK_TCK = 100;

/**
 * Runs `node bin/ctmap <args>` with stdout a pipe read here: counts its lines and bytes
 * (reading as fast as the pipe delivers), checks that the first line is a JSON CtRecord, and
 * times from spawn until the process has exited and the pipe's last byte is read. cpuMs is
 * the child's user + system time (10 ms resolution).
 *
 * The pipe is a FIFO, what a shell's `ctmap ct list -o jsonl | ...` gives the CLI (Node's
 * own `stdio: 'pipe'` is a unix socketpair instead, which no operator's pipeline is).
 */
function ctmapJsonl(args: readonly string[]): Promise<{ wallMs: number; cpuMs: number; lines: number; bytes: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmap-jsonl-'));
  const fifo = path.join(dir, 'stdout');
  const made = spawnSync('mkfifo', [fifo]);
  if (made.status !== 0) throw new HarnessError(`mkfifo ${fifo}: ${made.stderr?.toString().trim() || made.error?.message}`);
  // The read end first, non-blocking, so that opening the write end does not wait for it.
  const readFd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const writeFd = fs.openSync(fifo, fs.constants.O_WRONLY);
  fs.rmSync(dir, { recursive: true, force: true });
  return new Promise((resolve, reject) => {
    const cpu0 = reapedChildrenCpuMs();
    const started = process.hrtime.bigint();
    const child = spawn(process.execPath, [CTMAP_BIN, ...args], { stdio: ['ignore', writeFd, 'pipe'] });
    fs.closeSync(writeFd);
    const stdout = new net.Socket({ fd: readFd, readable: true, writable: false });
    let lines = 0;
    let bytes = 0;
    let head: Buffer[] | undefined = [];
    let stderr = '';
    stdout.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, i + 1)) lines++;
      if (head) {
        head.push(chunk);
        if (lines > 0) {
          const text = Buffer.concat(head).toString('utf8');
          head = undefined;
          try {
            const first = JSON.parse(text.slice(0, text.indexOf('\n'))) as { key?: { daddr?: unknown } };
            if (typeof first.key?.daddr !== 'string') throw new Error('no key.daddr');
          } catch (err) {
            child.kill('SIGTERM');
            reject(new HarnessError(`ctmap ${args.join(' ')}: the first line is not a CtRecord (${(err as Error).message}): ${text.slice(0, 200)}`));
          }
        }
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (t: string) => (stderr = (stderr + t).slice(-4000)));
    child.on('error', (err) => {
      stdout.destroy();
      reject(new HarnessError(`ctmap: ${err.message}`));
    });
    // Done when the process has exited and the pipe is drained (its end read).
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on('close', (code, signal) => res({ code, signal })));
    const drained = new Promise<void>((res) => stdout.on('close', () => res()));
    void Promise.all([exited, drained]).then(([{ code, signal }]) => {
      const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
      if (code !== 0) return reject(new HarnessError(`ctmap ${args.join(' ')}: exit ${code ?? signal}: ${stderr.trim()}`));
      resolve({ wallMs, cpuMs: reapedChildrenCpuMs() - cpu0, lines, bytes });
    });
  });
}

/** Records per second in millions, "3.2 M". */
function fmtRatesM(records: number, ms: number): string {
  return `${(records / ms / 1000).toFixed(2)} M`;
}
