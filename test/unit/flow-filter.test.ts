/**
 * DumpFilter's flow criteria through the CTMaps service of a daemon (memory backend) with
 * known entries: source and destination CIDRs, ports and direction in the flow's
 * orientation (src = key.daddr, sport = key.sport: what the text dump prints), state at the
 * CT clock's now, every cluster; Count with the same filter agrees with the dump; GC
 * match_ips takes CIDRs; bad criteria are INVALID_ARGUMENT naming the field.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import { ctNow } from '../../src/maps/clock';
import { call, collect, ctClient, rejectsWith, serviceClient, startTestDaemon, tempDir, type Client, type TestDaemon } from '../helpers/grpc';

const TCP4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
const ANY4 = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_ANY', cluster_id: 0 };
const TCP6 = { family: 'FAMILY_IPV6', kind: 'MAP_KIND_TCP', cluster_id: 0 };
const SEEN_NON_SYN = 1 << 4;
const RX_CLOSING = 1 << 0;

/** A flow `src:sport -> dst:dport` as Cilium stores it: daddr = src, saddr = dst. */
function flow(map: object, src: string, sport: number, dst: string, dport: number, o: { proto?: number; tupleFlags?: number; lifetime: number; flags?: number }) {
  return {
    map,
    key: { daddr: src, saddr: dst, sport, dport, nexthdr: o.proto ?? 6, flags: o.tupleFlags ?? 0 },
    entry: { lifetime: o.lifetime, flags: o.flags ?? 0, packets: '1', bytes: '60' },
  };
}

describe('flow filters', () => {
  let d: TestDaemon;
  let ct: Client;
  let gc: Client;
  let clusters: Client;
  const sock = tempDir();
  const root = tempDir();
  const now = ctNow();
  const alive = now + 1000;
  before(async () => {
    d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', root.dir, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096', '--metrics-listen', '127.0.0.1:0']);
    ct = ctClient(d.address);
    gc = serviceClient(services().GCRunner.service, 'GCRunner', d.address);
    clusters = serviceClient(services().ClusterCTMaps.service, 'ClusterCTMaps', d.address);
    await call(clusters, 'CreateClusterCTMaps', { cluster_id: 7 });
    const records = [
      flow(TCP4, '192.0.2.10', 40000, '198.51.100.1', 443, { lifetime: alive, flags: SEEN_NON_SYN }), // 1 established
      flow(TCP4, '192.0.2.11', 40001, '198.51.100.1', 80, { lifetime: alive }), // 2 syn-only
      flow(TCP4, '198.51.100.5', 50000, '192.0.2.10', 22, { tupleFlags: 1, lifetime: alive, flags: SEEN_NON_SYN | RX_CLOSING }), // 3 IN, closing
      flow(ANY4, '192.0.2.200', 5353, '198.51.100.9', 53, { proto: 17, lifetime: Math.max(0, now - 10) }), // 4 expired
      flow(TCP4, '192.0.2.10', 40003, '198.51.100.100', 443, { tupleFlags: 4, lifetime: alive, flags: SEEN_NON_SYN }), // 5 service
      flow(TCP6, '2001:db8::1', 1234, '2001:db8:1::2', 443, { lifetime: alive, flags: SEEN_NON_SYN }), // 6 v6
      flow({ ...TCP4, cluster_id: 7 }, '192.0.2.10', 40002, '198.51.100.1', 443, { lifetime: alive, flags: SEEN_NON_SYN }), // cluster 7
    ];
    assert.equal((await call(ct, 'Update', { records })).written, records.length);
  });
  after(async () => {
    for (const c of [ct, gc, clusters]) c?.close();
    await d?.stop();
    sock.cleanup();
    root.cleanup();
  });

  /** Source ports of the dumped flows (unique per seeded flow), sorted. */
  async function dumped(filter: object): Promise<number[]> {
    const recs = await collect(ct, 'DumpEntries', { maps: [], filter });
    return recs.map((r) => r.key.sport).sort((a, b) => a - b);
  }

  async function counted(filter: object): Promise<number> {
    const res = await call(ct, 'Count', { maps: [], filter });
    return res.counts.reduce((n: number, c: { entries: string }) => n + Number(c.entries), 0);
  }

  const cases: Array<[string, object, number[]]> = [
    ['src CIDR', { src: ['192.0.2.0/24'] }, [5353, 40000, 40001, 40003]],
    ['src narrower CIDR', { src: ['192.0.2.0/25'] }, [40000, 40001, 40003]],
    ['src address and CIDR of both families', { src: ['198.51.100.5', '2001:db8::/32'] }, [1234, 50000]],
    ['dst address', { dst: ['198.51.100.1'] }, [40000, 40001]],
    ['dst CIDR, the other side of flow 3', { dst: ['192.0.2.0/24'] }, [50000]],
    ['dport', { dport: 443 }, [1234, 40000, 40003]],
    ['sport', { sport: 40000 }, [40000]],
    ['direction in', { direction: 'FLOW_DIRECTION_IN' }, [50000]],
    ['direction service', { direction: 'FLOW_DIRECTION_SERVICE' }, [40003]],
    ['direction out', { direction: 'FLOW_DIRECTION_OUT' }, [1234, 5353, 40000, 40001]],
    ['state established', { state: 'FLOW_STATE_ESTABLISHED' }, [1234, 40000, 40003]],
    ['state syn-only', { state: 'FLOW_STATE_SYN_ONLY' }, [40001]],
    ['state closing', { state: 'FLOW_STATE_CLOSING' }, [50000]],
    ['state expired', { state: 'FLOW_STATE_EXPIRED' }, [5353]],
    ['AND of criteria', { src: ['192.0.2.0/24'], dport: 443, state: 'FLOW_STATE_ESTABLISHED' }, [40000, 40003]],
    ['every cluster', { all_clusters: true, dst: ['198.51.100.1'], dport: 443 }, [40000, 40002]],
    ['the global maps only without all_clusters', { sport: 40002 }, []],
  ];
  for (const [name, filter, want] of cases) {
    it(`${name}: DumpEntries and Count agree`, async () => {
      assert.deepEqual(await dumped(filter), want);
      assert.equal(await counted(filter), want.length);
    });
  }

  it('bad criteria are INVALID_ARGUMENT naming the field, before any output', async () => {
    await rejectsWith(collect(ct, 'DumpEntries', { maps: [], filter: { src: ['192.0.2.0/24', '192.0.2.1/24'] } }), grpc.status.INVALID_ARGUMENT, 'filter.src[1]');
    await rejectsWith(collect(ct, 'DumpEntries', { maps: [], filter: { dst: ['nope'] } }), grpc.status.INVALID_ARGUMENT, 'filter.dst[0]');
    await rejectsWith(call(ct, 'Count', { maps: [], filter: { sport: 70000 } }), grpc.status.INVALID_ARGUMENT, 'filter.sport');
  });

  it('GC match_ips takes CIDRs: either side of a flow in the prefix; the manual pass is the family\'s last run in Status', async () => {
    const ipv4 = (s: any) => s.families.find((f: any) => f.family === 'FAMILY_IPV4');
    const before = ipv4(await call(gc, 'Status', {}));
    const startedMs = Date.now();
    const [{ stats }] = (await collect(gc, 'Run', { maps: [TCP4, ANY4], filter: { match_ips: ['198.51.100.0/28'] } })).slice(-1);
    const deleted = stats.maps.reduce((n: number, m: { deleted: string }) => n + Number(m.deleted), 0);
    assert.equal(deleted, 4, 'flows 1-4 have 198.51.100.1, .5 or .9 on one side; .100 is outside the /28');
    assert.deepEqual(await dumped({}), [1234, 40003]);
    const after = ipv4(await call(gc, 'Status', {}));
    assert.equal(after.last_pass_reason, 'manual');
    assert.ok(Number(after.last_run_unix_ms) >= startedMs - 1000, `last run ${after.last_run_unix_ms} is the manual pass (started ${startedMs})`);
    assert.equal(Number(after.runs), Number(before.runs) + 1);
    assert.equal(Number(after.deleted), Number(before.deleted) + 4);
  });

  it('cilium_bpf_map_pressure: each map\'s alive entries / max_entries after a pass, per-cluster maps with their cluster', async () => {
    // IPv4 and every map: the global TCP map keeps flow 5, the any map nothing, cluster 7's TCP map its flow.
    await collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { remove_expired: true } });
    await new Promise((r) => setTimeout(r, 200)); // the SNAT count runs after the pass
    const body = await (await fetch(`http://${d.daemon.metricsServer!.address}/metrics`)).text();
    const pressure = Object.fromEntries(
      [...body.matchAll(/^cilium_bpf_map_pressure\{map_name="(\w+)",cluster_id="(\d+)"\} ([\d.e-]+)$/gm)].map((m) => [`${m[1]}/${m[2]}`, Number(m[3])]),
    );
    assert.equal(pressure['cilium_ct4_global/0'], 1 / 4096, JSON.stringify(pressure));
    assert.equal(pressure['cilium_ct_any4_global/0'], 0);
    const cluster = Object.entries(pressure).filter(([k]) => k.endsWith('/7'));
    assert.ok(cluster.some(([, v]) => v === 1 / 4096), `cluster 7's TCP map holds its flow: ${JSON.stringify(pressure)}`);
    assert.ok(Object.keys(pressure).some((k) => k.startsWith('cilium_snat_v4_external')), `the SNAT map too: ${JSON.stringify(pressure)}`);
  });
});
