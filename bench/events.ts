/**
 * Bench "events" (issue 13): CT lifecycle events published into the bus of a running
 * gRPC server (ctEventsService, in this process) reach one WatchBatched subscriber in
 * another process, with no loss; target ≥ 500,000 events/s. Baseline in the same rounds:
 * the same number of records as already-encoded bytes (the identical messages, encoded
 * once before timing) through a plain grpc-js server stream to the same kind of client:
 * what the transport alone costs. Also the raw encode rate of events, in process.
 *
 * The source is pluggable (EventSource), and both run in the same rounds:
 * - synthetic: prepared DESTROY batches published straight into the bus;
 * - the datapath ring, end to end: the bench build of the datapath (--ct-events=all)
 *   creates new flows in BPF_PROG_TEST_RUN over maps pinned as the daemon pins them, each
 *   create writes a NEW record into the ring, and the daemon's RingReader (epoll on the
 *   ring, records decoded in place) publishes them into the same bus.
 */
import * as path from 'node:path';
import { ChildProcess, spawn } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { CtEventBus, DEFAULT_SUBSCRIBER_BUFFER } from '../src/maps/ctmap/events/bus';
import type { CtEventInput } from '../src/maps/ctmap/events/types';
import { encodeEventBatch } from '../src/api/events-proto';
import { ctEventsService, EVENTS_PER_BATCH } from '../src/server/services/ctevents';
import { RingReader } from '../src/datapath/ring-reader';
import { pinDaemonMaps } from './daemon-maps';
import { BenchContext, BenchSection, HarnessError, REPO_ROOT, privateBpffsDir, fmtInt, fmtMs, fmtRatio, machineInfo, markdownTable, measureRounds, tempDir, timeIt } from './lib';

/** Events per measured run. */
const EVENTS = EVENTS_PER_BATCH * 245; // ~1 M, whole batches: the baseline sends whole messages
const TARGET_PER_SECOND = 500_000;
const CLIENT = path.join(REPO_ROOT, 'dist', 'bench', 'events-client.js');

/** Where a run's events come from: publishes `count` events into `bus`, pacing itself on it. */
export interface EventSource {
  readonly name: string;
  produce(bus: CtEventBus, count: number): Promise<void>;
}

/** IPv4 DESTROY events with distinct keys and realistic entries, built once. */
function syntheticEvents(n: number): CtEventInput[] {
  const ref = { family: 'ipv4' as const, kind: 'tcp' as const, clusterId: 0 };
  const keys = Buffer.alloc(n * 14);
  const entries = Buffer.alloc(n * 56);
  const out: CtEventInput[] = [];
  for (let i = 0; i < n; i++) {
    const k = keys.subarray(i * 14, (i + 1) * 14);
    k.set([192, 0, 2, (i & 0xff) || 1, 198, 51, 100, (i >> 8) & 0xff]);
    k.writeUInt16BE((i >> 16) + 1024, 8);
    k.writeUInt16BE(443, 10);
    k[12] = 6;
    const e = entries.subarray(i * 56, (i + 1) * 56);
    e.writeBigUInt64LE(BigInt(10 + (i % 1000)), 16);
    e.writeBigUInt64LE(BigInt(1500 * (10 + (i % 1000))), 24);
    e.writeUInt32LE(100_000 + i, 32);
    e.writeUInt16LE(0x10, 36);
    e[42] = 0x1b;
    e[43] = 0x1b;
    out.push({ kind: 'destroy', reason: 'gc-expired', ref, key: k, entry: e });
  }
  return out;
}

/** Publishes prepared batches of EVENTS_PER_BATCH, waiting for room as a GC pass does. */
function syntheticSource(events: readonly CtEventInput[]): EventSource {
  return {
    name: 'synthetic DESTROY batches',
    async produce(bus, count) {
      for (let off = 0; off < count; off += EVENTS_PER_BATCH) {
        // A stall period of 1 s: the client is a process of its own whose first runs compile.
        await bus.waitForRoom(EVENTS_PER_BATCH, 1000);
        bus.publish(events.slice(off % events.length, (off % events.length) + Math.min(EVENTS_PER_BATCH, count - off)));
      }
    },
  };
}

/** The datapath's producer process (bench/ring-producer.ts). */
const PRODUCER = path.join(REPO_ROOT, 'dist', 'bench', 'ring-producer.js');
/** New flows asked of the producer at a time. */
const CHUNK = 16_384;
/** The ring: 16 MiB, ~140,000 NEW records (112 bytes + 8 of header each). */
const RING_BYTES = 16 << 20;
/**
 * Records the producer may be ahead of the reader: half the ring, so it never fills, and
 * half a subscriber's buffer: the reader drains the ring as fast as it can (the datapath
 * cannot wait for it), so a burst larger than the buffer is lost at the subscriber.
 */
const AHEAD = Math.min(Math.floor(RING_BYTES / 120 / 2), DEFAULT_SUBSCRIBER_BUFFER / 2);

/**
 * NEW events from the datapath itself: a producer process runs the bench build of the
 * datapath (--ct-events=all) over maps pinned as the daemon pins them, in a private bpffs,
 * so each create writes a NEW record into the ring; the daemon's RingReader (epoll on the
 * ring, records decoded in place) publishes them into the bus. The producer is kept at most
 * half a ring ahead of what the reader has published, so the ring never fills (a loss
 * would be counted in-band and fail the run): what is measured is how fast the daemon's
 * side takes events from the ring to the subscriber.
 */
function ringSource(ctx: BenchContext, bus: CtEventBus): EventSource {
  const root = privateBpffsDir(ctx);
  const side = pinDaemonMaps(ctx, root, ['--ct-events', 'all', '--ct-events-ring-size', String(RING_BYTES)]);
  const ring = side.eventRing();
  if (!ring) throw new HarnessError('events: the side maps have no ring (kernel backend?)');
  const reader = RingReader.open({ ...ring, log: pino({ level: 'silent' }) });
  let published = 0;
  let lost = 0;
  let progress: (() => void) | undefined;
  const sub = reader.batches.subscribe((b) => {
    if (b.lost > 0) {
      lost += b.lost;
      bus.reportSourceLoss(b.lost);
    }
    if (b.events.length > 0) bus.publish(b.events);
    published += b.events.length;
    progress?.();
  });
  reader.start();
  ctx.cleanup.add('stop ring reader', async () => {
    await reader.stop();
    sub.unsubscribe();
  });
  const child = spawn(process.execPath, [PRODUCER, root], { stdio: ['pipe', 'pipe', 'inherit'] });
  ctx.cleanup.add('stop ring producer', () => {
    child.stdin!.end();
    child.kill('SIGKILL');
  });
  let acked = 0;
  let buf = '';
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      acked += Number(buf.slice(3, nl));
      buf = buf.slice(nl + 1);
      progress?.();
    }
  });
  const until = (ok: () => boolean): Promise<void> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        if (lost > 0) return reject(new HarnessError(`events: the ring lost ${lost} records`));
        if (child.exitCode !== null) return reject(new HarnessError(`events: the ring producer exited (${child.exitCode})`));
        if (ok()) {
          progress = undefined;
          resolve();
        }
      };
      progress = check;
      check();
    });
  let asked = 0;
  return {
    name: 'the datapath ring: NEW records of creates in a producer process, read by RingReader',
    async produce(_bus, count) {
      const end = asked + count;
      while (asked < end) {
        await until(() => asked - published < AHEAD);
        // As a GC pass does: room for what is still in the ring and the next chunk.
        await bus.waitForRoom(asked - published + CHUNK, 1000);
        const n = Math.min(CHUNK, end - asked);
        child.stdin!.write(`${n}\n`);
        asked += n;
      }
      await until(() => acked >= end && published >= end);
    },
  };
}

/** A subscriber process; resolves each `next()` with the counts of one run. */
function startClient(ctx: BenchContext, address: string, method: string, expected: number) {
  const child: ChildProcess = spawn(process.execPath, [CLIENT, address, method, String(expected)], { stdio: ['ignore', 'pipe', 'inherit'] });
  ctx.cleanup.add(`kill ${method} client`, () => void child.kill('SIGKILL'));
  const waiting: Array<(r: { events: number; lost: number }) => void> = [];
  let buf = '';
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      waiting.shift()?.(line);
    }
  });
  return {
    next: () => new Promise<{ events: number; lost: number }>((resolve) => waiting.push(resolve)),
    stop: () => child.kill('SIGKILL'),
  };
}

export const eventsBench: BenchSection = {
  name: 'events',
  title: 'CT lifecycle events to one gRPC subscriber (issue 13)',
  async run(ctx: BenchContext) {
    const events = syntheticEvents(EVENTS_PER_BATCH * 16);
    const source = syntheticSource(events);
    const dir = tempDir(ctx);
    const log = pino({ level: 'silent' });
    const shutdown = new AbortController();
    const bus = new CtEventBus();
    const fromRing = ringSource(ctx, bus);
    const server = new grpc.Server({ 'grpc.max_send_message_length': 64 << 20 });
    const svc = ctEventsService({ log, shutdown: shutdown.signal, bus });
    server.addService(svc.definition, svc.implementation);

    // The baseline: the very messages WatchBatched sends, encoded once, on a plain stream.
    const encoded: Buffer[] = [];
    for (let off = 0; off < events.length; off += EVENTS_PER_BATCH) {
      const batch = events.slice(off, off + EVENTS_PER_BATCH).map((e, i) => ({ ...e, sequence: off + i + 1 }));
      encoded.push(encodeEventBatch({ kind: 'events', family: 'ipv4', events: batch }, 1000));
    }
    let go: (() => void) | undefined;
    const baselineRuns: Array<() => void> = [];
    server.addService(
      {
        Stream: {
          path: '/bench.Baseline/Stream',
          requestStream: false,
          responseStream: true,
          requestSerialize: (x: Buffer) => x,
          requestDeserialize: (x: Buffer) => x,
          responseSerialize: (x: Buffer) => x,
          responseDeserialize: (x: Buffer) => x,
        },
      },
      {
        Stream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
          // One call serves every run: each `go` sends EVENTS records' worth of messages.
          const serve = async (): Promise<void> => {
            for (;;) {
              await new Promise<void>((resolve) => baselineRuns.push(resolve));
              for (let sent = 0, i = 0; sent < EVENTS; i++) {
                const m = encoded[i % encoded.length];
                if (!call.write(m)) await new Promise((r) => call.once('drain', r));
                sent += EVENTS_PER_BATCH;
              }
            }
          };
          void serve();
          go?.();
        },
      },
    );
    const socket = path.join(dir, 'events.sock');
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
    ctx.cleanup.add('events bench server', () => {
      shutdown.abort();
      server.forceShutdown();
    });
    const address = `unix:${socket}`;
    const ours = startClient(ctx, address, '/ctmap.v1.CTEvents/WatchBatched', EVENTS);
    const baselineOpen = new Promise<void>((resolve) => (go = resolve));
    const base = startClient(ctx, address, '/bench.Baseline/Stream', EVENTS);
    await baselineOpen;
    for (let i = 0; i < 200 && !bus.observed; i++) await new Promise((r) => setTimeout(r, 25));
    if (!bus.observed) throw new HarnessError('events: the WatchBatched subscriber never subscribed');

    /** Events each row's subscriber was told it lost, warm-up included. */
    const lostBy = new Map<string, number>();
    const measured = await measureRounds(ctx, [
      {
        label: 'plain grpc-js stream of pre-encoded batches',
        async run() {
          const done = base.next();
          const { ms, value } = await timeIt(async () => {
            baselineRuns.shift()!();
            return done;
          });
          if (value.events !== EVENTS) throw new HarnessError(`baseline: ${value.events} records, want ${EVENTS}`);
          return { ms };
        },
      },
      ...[source, fromRing].map((src) => ({
        label: `ctmapd WatchBatched (${src.name})`,
        async run() {
          const done = ours.next();
          const { ms, value } = await timeIt(async () => {
            await src.produce(bus, EVENTS);
            return done;
          });
          lostBy.set(src.name, (lostBy.get(src.name) ?? 0) + value.lost);
          if (value.events + value.lost !== EVENTS) throw new HarnessError(`WatchBatched: ${value.events} events + ${value.lost} lost, want ${EVENTS}`);
          return { ms, extra: { lost: value.lost } };
        },
      })),
    ]);
    ours.stop();
    base.stop();

    // Raw encode rate: what the server spends per event before the transport.
    const encodeBatch = events.slice(0, EVENTS_PER_BATCH).map((e, i) => ({ ...e, sequence: i + 1 }));
    const item = { kind: 'events' as const, family: 'ipv4' as const, events: encodeBatch };
    const rounds = Math.ceil(EVENTS / EVENTS_PER_BATCH);
    const enc = await timeIt(async () => {
      for (let r = 0; r < rounds; r++) encodeEventBatch(item, 1000);
    });

    const [b, o, r] = measured;
    const rate = (ms: number) => (EVENTS / ms) * 1000;
    const lostOf = (m: typeof o): number => [...lostBy].find(([name]) => m.label.includes(name))?.[1] ?? 0;
    const verdict = (m: typeof o) => (rate(m.medianMs) >= TARGET_PER_SECOND && lostOf(m) === 0 ? 'PASS' : 'MISS');
    const table = markdownTable(
      ['measurement', 'median ms', 'events/s', 'runs', '× baseline time', 'lost', 'target', 'verdict'],
      [
        [b.label, fmtMs(b.medianMs), fmtInt(Math.round(rate(b.medianMs))), String(b.samples.length), fmtRatio(1), '—', '—', '—'],
        ...[o, r].map((m) => [m.label, fmtMs(m.medianMs), fmtInt(Math.round(rate(m.medianMs))), String(m.samples.length), fmtRatio(m.medianMs / b.medianMs), fmtInt(lostOf(m)), `≥ ${fmtInt(TARGET_PER_SECOND)}/s, no loss`, verdict(m)]),
        ['encode only (encodeEventBatch, in process)', fmtMs(enc.ms), fmtInt(Math.round(((rounds * EVENTS_PER_BATCH) / enc.ms) * 1000)), '1', '—', '—', '—', '—'],
      ],
    );
    const info = machineInfo();
    const markdown = [
      `Latest run: ${new Date().toISOString()} — \`node dist/bench/run.js events\` (also part of \`make bench\`).`,
      '',
      `- Machine: ${info.cpu}, ${info.nproc} CPUs; ${info.kernel}; Node ${info.node}.`,
      `- ${fmtInt(EVENTS)} IPv4 DESTROY events per run, published in batches of ${fmtInt(EVENTS_PER_BATCH)} into the CtEventBus of a gRPC server (ctEventsService) in the bench process, pacing on the bus as a GC pass does; one WatchBatched subscriber in a child process counts events and lost notices from the wire (bench/events-client.ts). A run ends when the subscriber has accounted for every event.`,
      `- Baseline, in the same rounds: the same messages encoded once before timing, written to a plain grpc-js server stream (flow control, nothing else) to the same client; × baseline time = median / baseline median.`,
      `- Runs: ${ctx.warmup} warm-up + ${ctx.runs} measured each, interleaved. Sources: ${source.name}; and ${fromRing.name} (bench build over maps pinned like the daemon's in a private bpffs, --ct-events=all, a ${RING_BYTES >> 20} MiB ring; the producer, bench/ring-producer.ts, is a process of its own, at most half a ring ahead of the reader). `,
      '',
      table,
    ].join('\n');
    return { text: `${this.title}\n\n${table}\n`, markdown };
  },
};
