/**
 * Issue 13 items 2 and 4: the datapath talks back through the ctmapd_ct_events ring.
 * Packets run through the loaded datapath with BPF_PROG_TEST_RUN over maps created with
 * the daemon's code in a private bpffs directory; the ring is read by src/sys's MappedRing
 * (synchronously, so every count is exact) and by the daemon's RingReader (epoll).
 * Shown: NEW and CLOSE records decode to the key and entry the map holds, with their
 * reasons; a 4 KiB ring reports its losses exactly in-band; --ct-events=none writes
 * nothing and signals writes no NEW/CLOSE; an insert the kernel refuses is signalled; a
 * 1,024-entry map flooded with 12,000 new flows makes the daemon run an early GC pass of
 * that family (status and metrics say so) and leaves the other family's schedule alone.
 * Kernel tier: root or CAP_BPF, a built bpf/.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { TCP_FLAGS, ip, tcp } from '../helpers/frames';
import { call, serviceClient, startTestDaemon, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';
import { waitUntil } from '../helpers/wait';
import { parseConfig } from '../../src/config/config';
import { bpfObjectPath } from '../../src/config/paths';
import { datapathSettingsFrom } from '../../src/datapath/settings';
import { CT_ENTRY, CT_KEY4 } from '../../src/maps/ctmap/layout';
import { globalCtMapSpec } from '../../src/maps/ctmap/spec';
import { MapType } from '../../src/maps/types';
import { services } from '../../src/api/proto';
import type { RingRecord } from '../../src/datapath/ring-decoder';

type Sys = typeof import('../../src/sys');
type Loader = typeof import('../../src/datapath/loader');
type Side = typeof import('../../src/datapath/side-maps');
type Kernel = typeof import('../../src/maps/kernel');
type Decoder = typeof import('../../src/datapath/ring-decoder');
type Reader = typeof import('../../src/datapath/ring-reader');

const SILENT = pino({ level: 'silent' });
const { SYN, ACK, FIN, RST } = TCP_FLAGS;

/** The datapath loaded over fresh maps in a private bpffs dir, with `flags` as the daemon's. */
function setUp(t: { after(fn: () => void): void }, flags: string[], opts: { ringSize?: number; tcpMapType?: number } = {}) {
  const sys = require('../../src/sys') as Sys;
  const { CtDatapath } = require('../../src/datapath/loader') as Loader;
  const side = require('../../src/datapath/side-maps') as Side;
  const { kernelBackend } = require('../../src/maps/kernel') as Kernel;
  const { decodeRingRecord } = require('../../src/datapath/ring-decoder') as Decoder;
  const bpf = privateBpfRoot(t);
  const config = parseConfig(['--bpf-root', bpf.root, ...flags], {});
  const cfg = {
    bpfRoot: bpf.root,
    enableIPv4: true,
    enableIPv6: true,
    ctTcpMax: config.bpfCtGlobalTcpMax,
    ctAnyMax: config.bpfCtGlobalAnyMax,
    distributedLru: false,
    clusterIdMax: config.maxConnectedClusters,
  };
  const closers: Array<() => void> = [];
  t.after(() => {
    for (const c of closers.reverse()) c();
  });
  for (const family of ['ipv4', 'ipv6'] as const) {
    for (const kind of ['tcp', 'any'] as const) {
      const spec = globalCtMapSpec(cfg, family, kind);
      // A plain HASH in place of the TCP LRU map refuses inserts when full (an LRU evicts).
      const typed = family === 'ipv4' && kind === 'tcp' && opts.tcpMapType !== undefined ? { ...spec, type: opts.tcpMapType as 1 } : spec;
      const map = kernelBackend.create(typed);
      closers.push(() => map.close());
    }
  }
  const sideMaps = side.DatapathSideMaps.open(kernelBackend, bpf.root, datapathSettingsFrom(config), SILENT, {
    ...side.eventSideMapOptionsFrom(config),
    ringSize: opts.ringSize ?? config.ctEventsRingSize,
  });
  closers.push(() => sideMaps.close());
  const dp = CtDatapath.load({ bpfRoot: bpf.root });
  closers.push(() => dp.close());
  const ringFd = sideMaps.eventRing()!;
  const ring = new sys.MappedRing(ringFd.fd, ringFd.size);
  closers.push(() => ring.close());
  const run = new sys.TestRunContext(sys.SK_BUFF_CTX.size, 256);
  closers.push(() => run.close());
  const send = (prog: 'egress' | 'ingress', frame: Buffer, repeat = 1): void => {
    run.setPacket(frame);
    run.repeat = repeat;
    assert.equal(dp[prog].testRun(run), -1, 'TC_ACT_UNSPEC');
  };
  const drain = (): RingRecord[] => {
    const out: RingRecord[] = [];
    ring.drain((data) => out.push(decodeRingRecord(data)));
    return out;
  };
  const bench = (): { program: import('../../src/sys').BpfProgram } => {
    const b = CtDatapath.load({ bpfRoot: bpf.root, objectPath: bpfObjectPath('ct_datapath_bench.bpf.o') });
    closers.push(() => b.close());
    return { program: b.object.program('ct_bench_egress') };
  };
  const tcpMap = kernelBackend.open(globalCtMapSpec(cfg, 'ipv4', 'tcp'))!;
  closers.push(() => tcpMap.close());
  return { root: bpf.root, side: sideMaps, ring, send, drain, run, bench, tcpMap, sys };
}

/** The raw IPv4 key the map holds for the flow a -> b, sport -> dport, sent on egress (facts §2). */
function key4(a: string, b: string, sport: number, dport: number, nexthdr: number, flags: number): Buffer {
  const k = Buffer.alloc(CT_KEY4.size);
  Buffer.from(a.split('.').map(Number)).copy(k, 0); // daddr: the packet's source
  Buffer.from(b.split('.').map(Number)).copy(k, 4);
  k.writeUInt16BE(dport, 8);
  k.writeUInt16BE(sport, 10);
  k[12] = nexthdr;
  k[13] = flags;
  return k;
}

test('mode all: NEW at create, CLOSE at the first FIN and at an RST, decoded to the map\'s key and entry', (t) => {
  if (!kernelTier(t)) return;
  const env = setUp(t, ['--ct-events', 'all']);
  const a = '192.0.2.1';
  const b = '198.51.100.2';
  env.send('egress', ip(a, b, 6, tcp(40000, 80, SYN)));
  const k = key4(a, b, 40000, 80, 6, 0);
  const created = env.tcpMap.lookup(k);
  assert.ok(created, 'the flow entry exists');
  let recs = env.drain();
  assert.equal(recs.length, 1, 'one record: the NEW event');
  const nw = recs[0];
  assert.equal(nw.type, 'event');
  if (nw.type !== 'event') return;
  assert.deepEqual({ kind: nw.event.kind, reason: nw.event.reason, ref: nw.event.ref, lost: nw.lost }, { kind: 'new', reason: 'created', ref: { family: 'ipv4', kind: 'tcp', clusterId: 0 }, lost: 0 });
  assert.deepEqual(nw.event.key, k, 'the key as the map holds it');
  assert.deepEqual(nw.event.entry, created, 'the entry as written');

  env.send('ingress', ip(b, a, 6, tcp(80, 40000, SYN | ACK)));
  env.send('egress', ip(a, b, 6, tcp(40000, 80, ACK)));
  assert.equal(env.drain().length, 0, 'hits write nothing');
  env.send('egress', ip(a, b, 6, tcp(40000, 80, FIN | ACK)));
  env.send('ingress', ip(b, a, 6, tcp(80, 40000, FIN | ACK)));
  recs = env.drain();
  assert.equal(recs.length, 1, 'one CLOSE: only the first FIN (not closing -> closing)');
  const close = recs[0];
  assert.ok(close.type === 'event');
  if (close.type !== 'event') return;
  assert.deepEqual({ kind: close.event.kind, reason: close.event.reason }, { kind: 'close', reason: 'fin' });
  assert.deepEqual(close.event.key, k);
  const after = env.tcpMap.lookup(k)!;
  // The record was written after the first FIN: tx_closing set, the reply's FIN came later.
  const flags = close.event.entry.readUInt16LE(CT_ENTRY.fields.flags.offset);
  assert.equal(flags & 0b11, 0b10, 'TxClosing only, as after the first FIN');
  assert.equal(after.readUInt16LE(CT_ENTRY.fields.flags.offset) & 0b11, 0b11, 'both closing now');

  env.send('egress', ip(a, b, 6, tcp(40001, 443, SYN)));
  env.send('ingress', ip(b, a, 6, tcp(443, 40001, RST | ACK)));
  recs = env.drain();
  assert.deepEqual(recs.map((r) => (r.type === 'event' ? `${r.event.kind}/${r.event.reason}` : r.type)), ['new/created', 'close/rst']);
  const c = env.side.counters();
  assert.deepEqual(
    { sent: c.events_sent, lost: c.events_lost, creates_tcp4: c.creates_tcp4, creates_any4: c.creates_any4, signals: c.fill_up_signals },
    { sent: 4n, lost: 0n, creates_tcp4: 2n, creates_any4: 0n, signals: 0n },
  );
});

test('a 4 KiB ring: the records it had no room for are counted exactly and carried by the next record', (t) => {
  if (!kernelTier(t)) return;
  const env = setUp(t, ['--ct-events', 'all'], { ringSize: 4096 });
  const flows = 100;
  for (let i = 0; i < flows; i++) env.send('egress', ip('192.0.2.1', '198.51.100.2', 6, tcp(41000 + i, 80, SYN)));
  const first = env.drain();
  assert.ok(first.length > 0 && first.length < flows, `a 4 KiB ring holds some of ${flows} records (${first.length})`);
  assert.ok(first.every((r) => r.lost === 0), 'nothing was lost before these');
  const missing = flows - first.length;
  assert.equal(env.side.counters().events_lost, BigInt(missing), 'every failed reserve counted');
  env.send('egress', ip('192.0.2.1', '198.51.100.2', 6, tcp(42000, 80, SYN)));
  const next = env.drain();
  assert.equal(next.length, 1);
  assert.equal(next[0].lost, missing, 'the next record carries the exact loss count');
  const c = env.side.counters();
  assert.deepEqual({ lost: c.events_lost, reported: c.events_lost_reported, sent: c.events_sent }, { lost: BigInt(missing), reported: BigInt(missing), sent: BigInt(first.length + 1) });
});

test('--ct-events=none never touches the ring; signals writes fill-ups but no NEW/CLOSE', (t) => {
  if (!kernelTier(t)) return;
  for (const mode of ['none', 'signals'] as const) {
    // 1,024-entry maps: 600 creates pass the 50 % share many times over per step.
    const env = setUp(t, ['--ct-events', mode, '--bpf-ct-global-tcp-max', '1024', '--bpf-ct-global-any-max', '1024']);
    for (let i = 0; i < 600; i++) {
      env.send('egress', ip('192.0.2.1', '198.51.100.2', 6, tcp(43000 + i, 80, SYN)));
      env.send('egress', ip('192.0.2.1', '198.51.100.2', 6, tcp(43000 + i, 80, FIN | ACK)));
    }
    const c = env.side.counters();
    assert.equal(c.creates_tcp4, 600n, `${mode}: creates counted by kind`);
    assert.equal(c.closes, 600n, `${mode}: closes happened`);
    const recs = env.drain();
    if (mode === 'none') {
      assert.equal(env.ring.producerPos, 0, 'none: nothing was ever reserved in the ring');
      assert.deepEqual({ sent: c.events_sent, lost: c.events_lost, signals: c.fill_up_signals }, { sent: 0n, lost: 0n, signals: 0n });
    } else {
      assert.ok(recs.length > 0, 'signals: pressure signals were written');
      assert.ok(recs.every((r) => r.type === 'fill-up' && r.signal.reason === 'pressure' && r.signal.family === 'ipv4' && r.signal.kind === 'tcp'), 'signals: fill-ups only');
      assert.equal(BigInt(recs.length), c.fill_up_signals);
      assert.equal(c.events_sent, c.fill_up_signals);
    }
  }
});

test('an insert the kernel refuses is counted and signalled (a full HASH in place of the LRU map)', (t) => {
  if (!kernelTier(t)) return;
  const env = setUp(t, ['--ct-events', 'signals', '--bpf-ct-global-tcp-max', '1024'], { tcpMapType: MapType.HASH });
  for (let i = 0; i < 1100; i++) env.send('egress', ip('192.0.2.1', '198.51.100.2', 6, tcp(20000 + i, 80, SYN)));
  const c = env.side.counters();
  assert.equal(c.creates_tcp4, 1024n, 'the HASH took 1,024 entries');
  assert.equal(c.create_failed, 76n, 'and refused the rest');
  const failed = env.drain().filter((r) => r.type === 'fill-up' && r.signal.reason === 'insert-failed');
  // One signal per 64 failures on a CPU, the first at once: 76 failures on one CPU -> 2.
  assert.ok(failed.length >= 1 && failed.length <= 2, `insert-failed signals: ${failed.length}`);
  assert.deepEqual(failed[0].type === 'fill-up' && failed[0].signal, { family: 'ipv4', kind: 'tcp', clusterId: 0, reason: 'insert-failed' });
});

test('RingReader: woken by a fill-up signal through epoll, batches decoded; stop() closes what it opened', async (t) => {
  if (!kernelTier(t)) return;
  const { RingReader } = require('../../src/datapath/ring-reader') as Reader;
  const env = setUp(t, ['--ct-events', 'all', '--bpf-ct-global-tcp-max', '1024']);
  const before = env.sys.openRingCount();
  // A long timeout: only the forced wakeup of the fill-up signal can end the wait soon.
  const reader = RingReader.open({ ...env.side.eventRing()!, log: SILENT, timeoutMs: 60_000 });
  t.after(() => reader.stop());
  const batches: import('../../src/datapath/ring-reader').RingBatch[] = [];
  reader.batches.subscribe((b) => batches.push(b));
  reader.start();
  const bench = env.bench();
  const syn = ip('192.0.2.7', '198.51.100.2', 6, tcp(1024, 80, SYN));
  env.run.setPacket(syn);
  env.run.repeat = 600;
  bench.program.testRun(env.run);
  await waitUntil(() => batches.some((b) => b.fillUps.length > 0), 'a batch with a fill-up signal');
  await reader.stop();
  const news = batches.flatMap((b) => b.events);
  const fills = batches.flatMap((b) => b.fillUps);
  assert.equal(news.length, 600, 'every NEW read, the last ones by the final drain at stop()');
  assert.ok(news.every((e) => e.kind === 'new' && e.ref.family === 'ipv4'));
  assert.equal(BigInt(fills.length), env.side.counters().fill_up_signals);
  assert.equal(env.sys.openRingCount(), before, 'the reader\'s mapping and epoll closed (the test\'s own ring stays open)');
});

test('daemon: 12,000 new flows into a 1,024-entry map trigger an early GC pass of that family within 1 s; the other family\'s schedule is unchanged', async (t) => {
  if (!kernelTier(t)) return;
  const sys = require('../../src/sys') as Sys;
  const { CtDatapath } = require('../../src/datapath/loader') as Loader;
  const bpf = privateBpfRoot(t);
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, [
    '--backend', 'kernel', '--bpf-root', bpf.root, '--bpf-ct-global-tcp-max', '1024', '--bpf-ct-global-any-max', '1024',
    '--metrics-listen', '127.0.0.1:0',
  ]);
  t.after(() => d.stop());
  const gc = serviceClient(services().GCRunner.service, 'GCRunner', d.address);
  t.after(() => gc.close());
  const status = async (): Promise<Record<string, any>> => {
    const s = await call(gc, 'Status', {});
    return Object.fromEntries(s.families.map((f: any) => [f.family, f]));
  };
  // The initial passes first: the flood must be what makes the next IPv4 pass.
  await waitUntil(async () => {
    const s = await status();
    return s.FAMILY_IPV4.runs === '1' && s.FAMILY_IPV6.runs === '1' && s.FAMILY_IPV4.next_run_unix_ms !== '0' && s.FAMILY_IPV6.next_run_unix_ms !== '0';
  }, 'the initial passes', 10_000);
  const before = await status();
  assert.equal(before.FAMILY_IPV4.last_pass_reason, 'initial');

  const dp = CtDatapath.load({ bpfRoot: bpf.root, objectPath: bpfObjectPath('ct_datapath_bench.bpf.o') });
  t.after(() => dp.close());
  const run = new sys.TestRunContext(sys.SK_BUFF_CTX.size, 256);
  t.after(() => run.close());
  run.setPacket(ip('192.0.2.9', '198.51.100.2', 6, tcp(1024, 80, SYN)));
  run.repeat = 12_000;
  const floodAt = Date.now();
  assert.equal(dp.object.program('ct_bench_egress').testRun(run), -1);
  assert.equal(d.daemon.datapath.counters().creates_tcp4, 12_000n, '12,000 new flows');

  const deadline = floodAt + 1000;
  let after = before;
  while (Date.now() < deadline) {
    after = await status();
    if (after.FAMILY_IPV4.last_pass_reason === 'signal' && Number(after.FAMILY_IPV4.runs) >= 2) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(after.FAMILY_IPV4.last_pass_reason, 'signal', 'an early IPv4 pass ran within 1 s of the flood');
  assert.equal(after.FAMILY_IPV4.last_signal_source, 'pressure');
  assert.ok(Number(after.FAMILY_IPV4.signals_pressure) >= 1, 'pressure signals counted');
  assert.equal(after.FAMILY_IPV4.signals_insert_failed, '0', 'an LRU never refused an insert');
  assert.ok(Number(after.FAMILY_IPV4.runs) >= 2);
  assert.deepEqual(
    { runs: after.FAMILY_IPV6.runs, next: after.FAMILY_IPV6.next_run_unix_ms, reason: after.FAMILY_IPV6.last_pass_reason, signals: after.FAMILY_IPV6.signals_pressure },
    { runs: before.FAMILY_IPV6.runs, next: before.FAMILY_IPV6.next_run_unix_ms, reason: 'initial', signals: '0' },
    'the IPv6 schedule is untouched',
  );
  const body = await (await fetch(`http://${d.daemon.metricsServer!.address}/metrics`)).text();
  assert.match(body, /^ctmapd_datapath_fill_up_signals_total\{family="ipv4",reason="pressure",outcome="started"\} [1-9]\d*$/m);
  assert.match(body, /^ctmapd_gc_passes_total\{family="ipv4",reason="signal"\} [1-9]\d*$/m);
  assert.doesNotMatch(body, /^ctmapd_gc_passes_total\{family="ipv6",reason="signal"\}/m);
  assert.match(body, /^ctmapd_datapath_conntrack_events_total\{event="fill_up_signals"\} [1-9]\d*$/m);
});
