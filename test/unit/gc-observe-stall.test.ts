/**
 * Issue 12, item 8: a stalled Observe subscriber slowed every later pass. With one
 * subscriber that never read, an idle pass took ~105 ms instead of 3-5 ms (about 100 ms
 * per 4096-entry batch: the pass waited a whole stall period for it between batches), for
 * as long as it stayed connected. Over gRPC on the memory backend: idle passes with a
 * never-reading subscriber connected take about as long as without one, and the subscriber,
 * when it finally reads, is told how many events it missed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gcRunnerClient } from '../../src/api/clients';
import { call, collect, ctClient, startTestDaemon, tempDir } from '../helpers/grpc';
import { waitUntil } from '../helpers/wait';

const TCP4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP' };
/** Alive entries: an idle pass over them is 5 scan batches of 4096. */
const ALIVE = 20_000;
/** Deleted while the subscriber is stalled: more than its queue (16384) holds. */
const EXPIRED = 40_000;
const PASSES = 5;

/** A GCRunner client on a connection of its own (a stalled stream holds its connection's window). */
const gcClient = (address: string) => gcRunnerClient(address, undefined, { 'grpc.use_local_subchannel_pool': 1 });

function records(n: number, from: number, lifetime: number): object[] {
  return Array.from({ length: n }, (_, j) => {
    const i = from + j;
    return {
      map: TCP4,
      key: { daddr: `192.0.2.${(i % 250) + 1}`, saddr: `198.51.100.${(Math.floor(i / 250) % 250) + 1}`, dport: 443, sport: 1024 + Math.floor(i / 62500), nexthdr: 6, flags: 0 },
      entry: { lifetime, packets: String(i) },
    };
  });
}

async function write(ct: any, n: number, from: number, lifetime: number): Promise<void> {
  for (let i = 0; i < n; i += 10_000) await call(ct, 'Update', { records: records(Math.min(10_000, n - i), from + i, lifetime) });
}

/** PASSES idle Run passes (nothing expired); their total wall time in ms. */
async function idlePasses(gc: any): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < PASSES; i++) {
    const stats = (await collect(gc, 'Run', { family: 'FAMILY_IPV4', maps: [TCP4], filter: { remove_expired: true } })).at(-1).stats;
    assert.equal(Number(stats.maps[0].deleted), 0);
    assert.equal(Number(stats.maps[0].alive), ALIVE);
  }
  return performance.now() - t0;
}

test('issue 12 item 8: a never-reading Observe subscriber does not slow later passes, and is told what it lost', async (t) => {
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `/memory-gcstall-${process.pid}`, '--bpf-ct-global-tcp-max', '131072', '--bpf-ct-global-any-max', '4096']);
  t.after(() => d.stop());
  const ct = ctClient(d.address);
  const gc = gcClient(d.address);
  t.after(() => (ct.close(), gc.close()));
  await write(ct, ALIVE, 0, 0xfffffffe);

  await idlePasses(gc); // warm
  const without = await idlePasses(gc);

  // The subscriber reads one message and then nothing: grpc-js stops taking from HTTP/2
  // while a message is unread (before the first read it would buffer without bound), the
  // server's writes block on the 64 KiB window, and the subscriber's queue fills and overflows.
  const slowClient = gcClient(d.address);
  t.after(() => slowClient.close());
  const slow = slowClient.Observe({ family: 'FAMILY_IPV4' });
  t.after(() => slow.cancel());
  slow.on('error', () => undefined);
  const got: any[] = [];
  slow.on('data', (m: any) => {
    got.push(m);
    slow.pause();
  });
  await new Promise((r) => setTimeout(r, 200)); // subscription in place

  await write(ct, EXPIRED, ALIVE, 1);
  const deleting = (await collect(gc, 'Run', { family: 'FAMILY_IPV4', maps: [TCP4], filter: { remove_expired: true } })).at(-1).stats;
  assert.equal(Number(deleting.maps[0].deleted), EXPIRED);

  const stalled = await idlePasses(gc);
  const detail = `${PASSES} idle passes over ${ALIVE} entries: ${without.toFixed(0)} ms without a subscriber, ${stalled.toFixed(0)} ms with a stalled one`;
  t.diagnostic(detail);
  // Wide margin: the old code waited 100-200 ms per batch, 5 batches per pass (>= 2.5 s).
  assert.ok(stalled < 2 * without + 500, detail);

  // When it reads at last: every deletion accounted for, as an event or in a lost count.
  slow.removeAllListeners('data');
  slow.on('data', (m: any) => got.push(m));
  slow.resume();
  const received = () => got.filter((m) => m.record).length;
  const lost = () => got.reduce((n, m) => n + Number(m.lost), 0);
  await waitUntil(() => received() + lost() === EXPIRED, `stalled subscriber accounted ${received()} + ${lost()} of ${EXPIRED}`, 15_000, 50);
  assert.ok(lost() > 0, 'told it lost events');
  assert.ok(got.some((m) => Number(m.lost) > 0 && m.record === null), 'in a lost notice');
});
