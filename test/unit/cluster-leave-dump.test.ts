/**
 * Issue 12, defect 10: a dump racing a cluster's leave answered INTERNAL ("use after close:
 * EBADF"). A map that goes away mid-stream must end the stream with NOT_FOUND naming the
 * cluster. The race is driven, not waited for: the client pauses after the first message
 * (flow control holds the server between batches), the cluster leaves, the client resumes.
 * Daemon on the memory backend, in process; a kernel-backend variant of the cursor part is
 * in test/kernel/cluster-maps.test.ts.
 */
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { CtmapError } from '../../src/errors';
import { memoryBackend } from '../../src/maps/memory';
import { CtTable, DumpCursor } from '../../src/maps/ctmap/tables';
import { CT_ENTRY } from '../../src/maps/ctmap/layout';
import type { NatTable } from '../../src/maps/nat/tables';
import { purgeOrphanNatEntries } from '../../src/maps/nat/purge';
import { GCEngine } from '../../src/maps/ctmap/gc/engine';
import { UserspaceConditionalDeleter } from '../../src/maps/ctmap/gc/userspace-deleter';
import { clusterCtMapsClient, natMapsClient } from '../../src/api/clients';
import { Client, TestDaemon, call, ctClient, serviceClient, startTestDaemon, tempDir } from '../helpers/grpc';
import { services } from '../../src/api/proto';
import { Tables, openTables, silentLog } from '../helpers/nat-fixtures';

const CLUSTER = 5;
/** Entries per map: four scan batches, far more than the transport buffers. */
const N = 16000;
const V4 = 'FAMILY_IPV4';
const tcp5 = { family: V4, kind: 'MAP_KIND_TCP', cluster_id: CLUSTER };

const keyOf = (i: number) => ({ daddr: `10.${(i >> 8) & 0xff}.${i & 0xff}.1`, saddr: '192.0.2.1', dport: 80, sport: 1024 + (i % 60000), nexthdr: 6, flags: 0 });

interface Outcome {
  status: grpc.StatusObject;
  messages: number;
}

/** Starts `open()`, pauses after the first message, has the cluster leave, resumes; the stream's end. */
async function leaveDuring(open: () => grpc.ClientReadableStream<unknown>, leave: () => Promise<unknown>): Promise<Outcome> {
  const stream = open();
  let messages = 0;
  const ended = new Promise<grpc.StatusObject>((resolve) => {
    stream.on('error', () => undefined); // the status carries it
    stream.on('status', resolve);
  });
  stream.on('data', () => messages++);
  await new Promise((resolve) => stream.once('data', resolve));
  stream.pause();
  await new Promise((r) => setTimeout(r, 200)); // the server fills the transport and waits
  const left = leave();
  // The leave completes while the stream is held, unless it waits for the stream (GC Run).
  await Promise.race([left, new Promise((r) => setTimeout(r, 500))]);
  stream.resume();
  const status = await ended;
  await left;
  return { status, messages };
}

describe('a dump racing a cluster leave (issue 12, defect 10)', () => {
  const sock = tempDir();
  let d: TestDaemon;
  let ct: Client;
  let gc: Client;
  let cc: ReturnType<typeof clusterCtMapsClient>;
  let nat: ReturnType<typeof natMapsClient>;

  before(async () => {
    d = await startTestDaemon(sock.dir, [
      '--backend', 'memory', '--bpf-root', `/memory-test/${process.pid}-leave`, '--enable-ipv6=false',
      '--bpf-ct-global-tcp-max', String(N + 1024), '--bpf-ct-global-any-max', '1024', '--bpf-nat-global-max', String(N + 1024),
    ]);
    ct = ctClient(d.address);
    gc = serviceClient(services().GCRunner.service, 'GCRunner', d.address);
    cc = clusterCtMapsClient(d.address);
    nat = natMapsClient(d.address);
  });

  after(async () => {
    for (const c of [ct, gc, cc, nat]) c?.close();
    await d?.stop();
    sock.cleanup();
  });

  /** Cluster CLUSTER joined, with N CT entries in its tcp4 map and N SNAT entries. */
  async function join(): Promise<void> {
    await call(cc, 'CreateClusterCTMaps', { cluster_id: CLUSTER });
    for (let from = 0; from < N; from += 2000) {
      const ids = Array.from({ length: Math.min(2000, N - from) }, (_, j) => from + j);
      await call(ct, 'Update', { records: ids.map((i) => ({ map: tcp5, key: keyOf(i), entry: { lifetime: 0xfffffff0, packets: '1' } })) });
      const natRecords = ids.map((i) => ({ family: V4, cluster_id: CLUSTER, key: { ...keyOf(i), flags: 0 }, entry: { addr: '192.0.2.10', port: 1024 + (i % 60000), created: '1', needs_ct: false } }));
      await call(nat, 'Update', { records: natRecords });
    }
  }

  const leave = () => call(cc, 'DeleteClusterCTMaps', { cluster_id: CLUSTER });

  // DumpEntriesBatched and DumpEntriesWithTimeDiff send one message per batch: a few such
  // messages fill no transport buffer (grpc-js counts messages, not bytes), so on the
  // memory backend they finish before any leave. Their DumpCursor is the one DumpEntries
  // uses; it is tested alone below.
  const cases: Array<[string, () => grpc.ClientReadableStream<unknown>]> = [
    ['CTMaps.DumpEntries', () => (ct as any).DumpEntries({ maps: [tcp5] })],
    ['NATMaps.DumpEntries', () => nat.DumpEntries({ family: V4, cluster_id: CLUSTER })],
  ];
  for (const [name, open] of cases) {
    it(`${name} ends with NOT_FOUND naming the cluster`, async () => {
      await join();
      const { status, messages } = await leaveDuring(open, leave);
      assert.equal(status.code, grpc.status.NOT_FOUND, `${grpc.status[status.code]}: ${status.details}`);
      assert.match(status.details, new RegExp(`cluster ${CLUSTER}\\b`));
      assert.ok(messages > 0, 'nothing was sent before the leave');
    });
  }

  it('GCRunner.Run with emit_kept: the leave waits for the pass, which ends OK, never INTERNAL', async () => {
    // Passes over a family are serialised: the leave's flush runs after this pass.
    await join();
    const { status } = await leaveDuring(() => (gc as any).Run({ maps: [tcp5], filter: { emit_kept: true } }), leave);
    assert.equal(status.code, grpc.status.OK, `${grpc.status[status.code]}: ${status.details}`);
    assert.equal((await call(cc, 'GetAllClusterCTMaps', {})).clusters.length, 0, 'the cluster left');
  });
});

describe('cursors over a map closed between batches (issue 12, defect 10)', () => {
  const root = `/memory-test/${process.pid}-closed`;
  let tables: Tables;
  /** The global tcp4 CT map and snat4 map, filled, under the ref of cluster CLUSTER. */
  let ctTable: CtTable;
  let natTable: NatTable;

  beforeEach(() => {
    tables = openTables(memoryBackend, { root, ipv6: false, size: 16384 });
    const ctGlobal = tables.ct.active().find((t) => t.ref.kind === 'tcp')!;
    const natGlobal = tables.nat.active()[0]!;
    const ctValue = Buffer.alloc(ctGlobal.map.valueBufferSize);
    ctValue.writeUInt32LE(0xfffffff0, CT_ENTRY.fields.lifetime.offset);
    const natValue = Buffer.alloc(natGlobal.map.valueBufferSize);
    for (let i = 0; i < 10000; i++) {
      const k = Buffer.alloc(ctGlobal.map.spec.keySize);
      k.writeUInt32BE(0x0a000000 + i, 0);
      ctGlobal.map.update(k, ctValue);
      natGlobal.map.update(k, natValue);
    }
    ctTable = { ...ctGlobal, ref: { ...ctGlobal.ref, clusterId: CLUSTER } };
    natTable = { ...natGlobal, ref: { ...natGlobal.ref, clusterId: CLUSTER } };
  });

  afterEach(() => tables.close());

  function isGone(label: string) {
    return (err: unknown) => {
      assert.ok(err instanceof CtmapError, String(err));
      assert.equal(err.code, 'not-found', err.message);
      assert.ok(err.message.includes(label), err.message);
      return true;
    };
  }

  it('DumpCursor (every CTMaps dump) throws NOT_FOUND naming the map and its cluster', async () => {
    const cursor = new DumpCursor([ctTable], undefined, 4096);
    assert.ok(await cursor.next());
    ctTable.map.close();
    await assert.rejects(cursor.next(), isGone(`tcp4 cluster ${CLUSTER} CT map`));
  });

  it('NatDumpCursor (NATMaps.DumpEntries) throws NOT_FOUND naming the map and its cluster', async () => {
    const cursor = tables.nat.dump(natTable, 4096);
    assert.ok(await cursor.next());
    natTable.map.close();
    await assert.rejects(cursor.next(), isGone(`snat4 cluster ${CLUSTER} NAT map`));
  });

  it('a GC pass (Run with emit_kept) throws NOT_FOUND naming the map and its cluster', async () => {
    const engine = new GCEngine(new UserspaceConditionalDeleter(), silentLog);
    let kept = 0;
    const pass = engine.run({
      tables: [ctTable],
      filter: { removeExpired: true, emitKept: () => void kept++ },
      afterBatch: async () => ctTable.map.close(),
    });
    await assert.rejects(pass, isGone(`tcp4 cluster ${CLUSTER} CT map`));
    assert.ok(kept > 0 && kept < 10000, `kept ${kept}`);
  });

  it('the orphan SNAT purge throws NOT_FOUND naming the map and its cluster', async () => {
    const ctTcp = ctTable;
    const ctAny = { ...tables.ct.active().find((t) => t.ref.kind === 'any')!, ref: { ...ctTable.ref, kind: 'any' as const } };
    // The purge reads its NAT map in batches of 4096 and decides between them.
    const purge = purgeOrphanNatEntries(natTable, ctTcp, ctAny);
    natTable.map.close();
    await assert.rejects(purge, isGone(`snat4 cluster ${CLUSTER} NAT map`));
  });
});
