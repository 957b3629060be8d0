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
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { services } from '../src/api/proto';
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

interface Row {
  m: Measured;
  target?: number;
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
    const [c, count, cidrCount, batched, single, decoded, bpftool, bpftoolJson] = await measureRounds(ctx, measurements);

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
        note: (() => {
          const vsCount = cidrCount.medianMs / count.medianMs;
          return `filter.src 0.0.0.0/1 + 128.0.0.0/1 (every entry tested, all match): ${fmtRatio(vsCount)} the unfiltered Count, target ≤ 1.5× ${vsCount <= 1.5 ? 'PASS' : 'MISS'}`;
        })(),
      },
      { m: batched, target: 2, note: dumpNote(batched) },
      { m: single, note: dumpNote(single) },
      { m: decoded, note: `${dumpNote(decoded)}; protobufjs objects (proto-loader options)` },
      { m: bpftool, note: 'process wall time, hex text to /dev/null' },
      { m: bpftoolJson, note: 'process wall time, JSON to /dev/null' },
    ];
    const header = ['measurement', 'median ms', 'min ms', 'runs', '×C (median)', 'target', 'result', 'server CPU ms', 'client CPU ms', 'notes'];
    const table = markdownTable(
      header,
      rows.map(({ m, target, note }) => {
        const ratio = m.medianMs / c.medianMs;
        return [
          m.label,
          fmtMs(m.medianMs),
          fmtMs(m.minMs),
          String(m.samples.length),
          m === c ? '1.00× (baseline)' : fmtRatio(ratio),
          target === undefined ? '—' : `≤ ${target}×`,
          target === undefined ? '—' : ratio <= target ? 'PASS' : 'MISS',
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
      `- Runs: ${ctx.warmup} warm-up + ${ctx.runs} measured per row (bpftool: ${ctx.warmup} + ${Math.min(ctx.runs, BPFTOOL_RUNS)}), interleaved in rounds; ratios are median / C median. Dump rows assert ${fmtInt(entries)} records per run.`,
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

/** Records per second in millions, "3.2 M". */
function fmtRatesM(records: number, ms: number): string {
  return `${(records / ms / 1000).toFixed(2)} M`;
}
