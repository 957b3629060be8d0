/**
 * Issue 13 item 1, "Must show": socket fate-sharing on real sockets. Two namespaces joined
 * by a veth pair, bin/ctmapd on a private bpf-root, the datapath attached to vethA in A
 * (`ctmap datapath attach`), a cgroup this test creates, and client processes placed into
 * it (cgroup.procs) that talk to echo servers in B which never close a connection
 * themselves. Each of TCP FIN close, TCP RST, kill -9 of a process holding an established
 * TCP socket, and UDP socket close, over IPv4 and IPv6, runs twice: before `ctmap fate
 * attach --cgroup`, when the datapath alone leaves the entry its long lifetime (8000 s
 * TCP: one side closing is not the end of a flow; 60 s UDP), and after it, when the entry
 * has both closing bits and lifetime now + the close timeout (±1 s) within 1 s of the
 * close. A GC pass at now + close timeout + 1 then removes exactly the fate-expired
 * entries. Last, a cluster's socket (datapath and fate attached with --cluster-id 7)
 * expires its entry in that cluster's map. The fate counters in ActiveMaps count every
 * socket recorded and every entry expired.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import { ctNow } from '../../src/maps/clock';
import { createCgroup } from '../helpers/cgroup';
import { Flow, KINDS, runFlow, startFlowScenario, startServer } from '../helpers/socket-flows';
import { ctmapOk, datapathE2eTier } from '../helpers/datapath-e2e';
import { Client, call, collect } from '../helpers/grpc';

const CLOSE_TIMEOUT = 10; // --bpf-ct-timeout-regular-tcp-fin default (facts §5)
const RX_CLOSING = 0x1;
const TX_CLOSING = 0x2;
const BOTH_CLOSING = RX_CLOSING | TX_CLOSING;

async function lookup(client: Client, f: Flow): Promise<{ flags: number; lifetime: number } | undefined> {
  try {
    const r = await call(client, 'Lookup', { map: f.map, key: f.key });
    return { flags: r.entry.flags, lifetime: r.entry.lifetime };
  } catch (err) {
    if ((err as grpc.ServiceError).code === grpc.status.NOT_FOUND) return undefined;
    throw err;
  }
}

/** Waits up to 1 s (from the close) for both closing bits; returns the entry as then read. */
async function expiredWithinOneSecond(client: Client, f: Flow): Promise<{ flags: number; lifetime: number; readAt: number }> {
  for (;;) {
    const readAt = ctNow();
    const e = await lookup(client, f);
    assert.ok(e, `${f.label}: entry present`);
    if ((e.flags & BOTH_CLOSING) === BOTH_CLOSING) return { ...e, readAt };
    assert.ok(readAt - f.closedAt < 1, `${f.label}: closing bits not set 1 s after the close (flags 0x${e.flags.toString(16)}, lifetime ${e.lifetime})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function fateCounters(am: any): Record<string, number> {
  return Object.fromEntries(Object.entries(am.datapath).filter(([k]) => k.startsWith('fate_')).map(([k, v]) => [k, Number(v)]));
}

test('fate-sharing: a socket closing in an attached cgroup expires its CT entries; without fate they live on', async (t) => {
  if (!datapathE2eTier(t, ['ip', 'tc', 'nsenter', 'sh'])) return;
  const { scope, procs, root, a, b, daemon } = await startFlowScenario(t);
  const cg = createCgroup(scope, 'fate');
  const client = new (services().CTMaps)(daemon.address, grpc.credentials.createInsecure()) as unknown as Client;
  const gc = new (services().GCRunner)(daemon.address, grpc.credentials.createInsecure()) as unknown as Client;
  const clusters = new (services().ClusterCTMaps)(daemon.address, grpc.credentials.createInsecure()) as unknown as Client;
  scope.after(() => [client, gc, clusters].forEach((c) => c.close()));
  await startServer(b, procs);
  const zero = fateCounters(await call(client, 'ActiveMaps', {}));
  assert.deepEqual(zero, { fate_keys_recorded: 0, fate_expired: 0, fate_storage_full: 0, fate_key_missing: 0, fate_events_lost: 0 });

  // --- without fate: the same closes leave the entries their long lifetimes ---
  const without: Flow[] = [];
  for (const fam of [4, 6] as const) for (const kind of KINDS) without.push(await runFlow(a, b, cg.path, fam, kind, 0, procs));
  // Give fate-sharing the same second it gets below: nothing may change in it.
  await new Promise((r) => setTimeout(r, 1000));
  for (const f of without) {
    const e = await lookup(client, f);
    assert.ok(e, `${f.label} without fate: entry present`);
    assert.notEqual(e.flags & BOTH_CLOSING, BOTH_CLOSING, `${f.label} without fate: not both sides closing (flags 0x${e.flags.toString(16)})`);
    const long = f.kind === 'udp' ? 60 : 8000;
    assert.ok(e.lifetime >= Math.floor(f.closedAt) + long - 1, `${f.label} without fate: lifetime ${e.lifetime} keeps now + ${long}`);
  }
  assert.deepEqual(fateCounters(await call(client, 'ActiveMaps', {})), zero, 'nothing counted while fate is not attached');

  // --- with fate attached to the cgroup ---
  const attached = ctmapOk(['fate', 'attach', '--cgroup', cg.path, '--bpf-root', root, '--json']);
  assert.deepEqual(attached.hooks.map((h: any) => h.hook), ['sockops', 'egress', 'sock_release']);
  scope.after(() => ctmapOk(['fate', 'detach', '--cgroup', cg.path, '--bpf-root', root]));
  const status = ctmapOk(['fate', 'status', '--bpf-root', root, '--json']);
  assert.deepEqual(status.map((r: any) => [r.cgroup, r.hooks.map((h: any) => h.state)]), [[cg.path, ['attached', 'attached', 'attached']]]);

  const withFate: Flow[] = [];
  for (const fam of [4, 6] as const) {
    for (const kind of KINDS) {
      const f = await runFlow(a, b, cg.path, fam, kind, 0, procs);
      const e = await expiredWithinOneSecond(client, f);
      assert.ok(
        e.lifetime >= Math.floor(f.closedAt) + CLOSE_TIMEOUT - 1 && e.lifetime <= Math.floor(e.readAt) + CLOSE_TIMEOUT + 1,
        `${f.label}: lifetime ${e.lifetime} is the close time ${f.closedAt.toFixed(2)} + ${CLOSE_TIMEOUT} s (±1 s)`,
      );
      withFate.push(f);
    }
  }
  const counted = fateCounters(await call(client, 'ActiveMaps', {}));
  assert.deepEqual(counted, { ...zero, fate_keys_recorded: withFate.length, fate_expired: withFate.length }, 'one socket recorded and one entry expired per flow');
  // The entries of the flows before the attach are untouched.
  for (const f of without) assert.notEqual(((await lookup(client, f))!.flags & BOTH_CLOSING), BOTH_CLOSING, `${f.label}: still not expired`);

  // --- a GC pass at now + close timeout + 1 removes the fate-expired entries only ---
  const time = Math.floor(ctNow()) + CLOSE_TIMEOUT + 1;
  const updates = await collect(gc, 'Run', { filter: { remove_expired: true, time: String(time) } });
  const deleted = updates.at(-1).stats.maps.reduce((n: number, m: any) => n + Number(m.deleted), 0);
  for (const f of withFate) assert.equal(await lookup(client, f), undefined, `${f.label}: removed by the GC pass at ${time}`);
  for (const f of without) assert.ok(await lookup(client, f), `${f.label}: kept by the GC pass`);
  // Besides the flows: the per-pair RELATED entries only, which fate-sharing leaves alone.
  assert.ok(deleted >= withFate.length, `deleted ${deleted}`);

  // --- a cluster's socket expires its entry in that cluster's map ---
  await call(clusters, 'CreateClusterCTMaps', { cluster_id: 7 });
  ctmapOk(['datapath', 'attach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', root, '--cluster-id', '7']);
  ctmapOk(['fate', 'attach', '--cgroup', cg.path, '--bpf-root', root, '--cluster-id', '7']);
  for (const fam of [4, 6] as const) {
    const f = await runFlow(a, b, cg.path, fam, 'tcp-rst', 7, procs);
    const e = await expiredWithinOneSecond(client, f);
    assert.ok(e.lifetime >= Math.floor(f.closedAt) + CLOSE_TIMEOUT - 1 && e.lifetime <= Math.floor(e.readAt) + CLOSE_TIMEOUT + 1, `${f.label}: lifetime ${e.lifetime}`);
    assert.equal(await lookup(client, { ...f, map: { ...f.map, cluster_id: 0 } }), undefined, `${f.label}: nothing in the global map`);
  }

  // --- detach: the links are gone, and a socket closing now expires nothing ---
  const detached = ctmapOk(['fate', 'detach', '--cgroup', cg.path, '--bpf-root', root, '--json']);
  assert.deepEqual(detached.hooks.map((h: any) => h.outcome), ['removed', 'removed', 'removed']);
  const before = fateCounters(await call(client, 'ActiveMaps', {}));
  const after = await runFlow(a, b, cg.path, 4, 'tcp-rst', 7, procs);
  await new Promise((r) => setTimeout(r, 300));
  assert.notEqual(((await lookup(client, after))!.flags & BOTH_CLOSING), BOTH_CLOSING, 'after detach: not expired');
  assert.deepEqual(fateCounters(await call(client, 'ActiveMaps', {})), before, 'after detach: nothing counted');
});
