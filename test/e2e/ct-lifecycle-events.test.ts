/**
 * Issue 13, "Must show": NEW, CLOSE and DESTROY events of real traffic reach a gRPC
 * subscriber in order, with sequence numbers. Two namespaces joined by a veth pair,
 * bin/ctmapd with --ct-events=all on a private bpf-root, the datapath on vethA, a cgroup
 * with fate-sharing attached for the second flow. A CTEvents.Watch subscriber (opened
 * before any traffic) must see, for each flow's entry:
 * - an IPv4 TCP flow closed with a FIN (fate not attached): NEW (created) when the
 *   datapath inserts it, CLOSE (fin) at the client's FIN;
 * - an IPv6 UDP flow from a socket in the fate cgroup: NEW (created), then CLOSE
 *   (socket-close) when the socket is closed: fate-sharing's expiry, through the same ring;
 * - then both DESTROY (gc-filter) from a GC pass at a time past every lifetime;
 * each family's sequence numbers increasing by one per event, no loss notice.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import { ctNow } from '../../src/maps/clock';
import { createCgroup } from '../helpers/cgroup';
import { ctmapOk, datapathE2eTier } from '../helpers/datapath-e2e';
import { Client, collect } from '../helpers/grpc';
import { Flow, runFlow, startFlowScenario, startServer } from '../helpers/socket-flows';

interface Event {
  kind: string;
  reason: string;
  family: string;
  sequence: string;
  record?: { map: { family: string; kind: string; cluster_id: number }; key: Flow['key'] } | null;
  lost?: { count: string; at: string } | null;
}

const sameKey = (a: Flow['key'], b: Flow['key']): boolean =>
  a.daddr === b.daddr && a.saddr === b.saddr && a.sport === b.sport && a.dport === b.dport && a.nexthdr === b.nexthdr && a.flags === b.flags;

test('NEW, CLOSE and DESTROY of real traffic reach a CTEvents subscriber in order with sequence numbers', async (t) => {
  if (!datapathE2eTier(t, ['ip', 'tc', 'nsenter', 'sh'])) return;
  const { scope, procs, root, a, b, daemon } = await startFlowScenario(t, ['--ct-events=all']);
  const cg = createCgroup(scope, 'events');
  const plain = createCgroup(scope, 'events-nofate');
  const creds = grpc.credentials.createInsecure();
  const events = new (services().CTEvents)(daemon.address, creds) as unknown as Client;
  const gc = new (services().GCRunner)(daemon.address, creds) as unknown as Client;
  scope.after(() => [events, gc].forEach((c) => c.close()));
  ctmapOk(['fate', 'attach', '--cgroup', cg.path, '--bpf-root', root, '--json']);
  scope.after(() => ctmapOk(['fate', 'detach', '--cgroup', cg.path, '--bpf-root', root]));

  // Both families, every kind: the subscriber sees the stream as it is.
  const got: Event[] = [];
  const watch = (events as any).Watch({}) as grpc.ClientReadableStream<Event>;
  watch.on('data', (e: Event) => got.push(e));
  watch.on('error', () => undefined); // cancelled at the end
  scope.after(() => watch.cancel());
  await new Promise((r) => setTimeout(r, 200)); // the subscription is registered server side

  await startServer(b, procs);
  // The server is in B, outside the cgroup: only A's client sockets share their fate.
  const tcp = await runFlow(a, b, plain.path, 4, 'tcp-fin', 0, procs); // fate is not attached to this cgroup
  const udp = await runFlow(a, b, cg.path, 6, 'udp', 0, procs);

  const eventsOf = (f: Flow): Event[] => got.filter((e) => e.record && sameKey(e.record.key, f.key) && e.record.map.kind === f.map.kind);
  const waitFor = async (what: string, ok: () => boolean): Promise<void> => {
    for (const until = Date.now() + 5000; !ok(); ) {
      assert.ok(Date.now() < until, `${what} within 5 s; got ${JSON.stringify(got.map((e) => [e.kind, e.reason, e.record?.key]))}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const kinds = (f: Flow): string[] => eventsOf(f).map((e) => `${e.kind}/${e.reason}`);
  await waitFor('TCP NEW and CLOSE', () => kinds(tcp).length >= 2);
  await waitFor('UDP NEW and CLOSE', () => kinds(udp).length >= 2);
  assert.deepEqual(kinds(tcp), ['CT_EVENT_KIND_NEW/CT_EVENT_REASON_CREATED', 'CT_EVENT_KIND_CLOSE/CT_EVENT_REASON_FIN']);
  assert.deepEqual(kinds(udp), ['CT_EVENT_KIND_NEW/CT_EVENT_REASON_CREATED', 'CT_EVENT_KIND_CLOSE/CT_EVENT_REASON_SOCKET_CLOSE']);

  // A pass at a time past every lifetime removes both entries: DESTROY, by the filter's time.
  await collect(gc, 'Run', { filter: { remove_expired: true, time: String(Math.floor(ctNow()) + 100_000) } });
  await waitFor('both DESTROYs', () => kinds(tcp).length >= 3 && kinds(udp).length >= 3);
  assert.equal(kinds(tcp)[2], 'CT_EVENT_KIND_DESTROY/CT_EVENT_REASON_GC_FILTER');
  assert.equal(kinds(udp)[2], 'CT_EVENT_KIND_DESTROY/CT_EVENT_REASON_GC_FILTER');

  // Per family: one sequence, one more per event, nothing lost.
  assert.deepEqual(got.filter((e) => e.lost), [], 'no loss notice');
  for (const family of ['FAMILY_IPV4', 'FAMILY_IPV6']) {
    const seqs = got.filter((e) => e.family === family).map((e) => Number(e.sequence));
    assert.ok(seqs.length >= 3, `${family}: ${seqs.length} events`);
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `${family}: sequence ${seqs[i - 1]} then ${seqs[i]}`);
  }
  for (const f of [tcp, udp]) {
    const seqs = eventsOf(f).map((e) => Number(e.sequence));
    assert.ok(seqs[0] < seqs[1] && seqs[1] < seqs[2], `${f.label}: NEW, CLOSE, DESTROY in sequence order (${seqs.join(', ')})`);
  }
});
