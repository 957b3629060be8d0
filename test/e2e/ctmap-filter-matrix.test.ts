/**
 * Every flow filter of `ctmap ct list | count`, each in every output format, against a
 * daemon process holding known entries of both families, both map kinds, every direction
 * and state, in the global maps and a cluster's. The expected set of each filter is
 * computed here, from the entries as written and the filters' documented meaning (flow
 * orientation: src = key.daddr, dst = key.saddr, ports as stored), not by the daemon's
 * code; the text lines are checked against Cilium's `bpf ct list` format field by field.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { services } from '../../src/api/proto';
import { ctNow } from '../../src/maps/clock';
import { runCtmapAsync as ctmap, startCliDaemon } from '../helpers/ctmap-cli';
import { call, type Client } from '../helpers/grpc';
import { waitUntil } from '../helpers/wait';

const RX_CLOSING = 1 << 0;
const SEEN_NON_SYN = 1 << 4;
const TUPLE_IN = 1;
const TUPLE_SERVICE = 4;
const CLUSTER = 3;

type Family = 'ipv4' | 'ipv6';
type State = 'established' | 'closing' | 'syn-only' | 'expired';
type Dir = 'in' | 'out' | 'service';

/** One entry as written, with the flow it stands for. */
interface Known {
  family: Family;
  tcp: boolean;
  clusterId: number;
  dir: Dir;
  state: State;
  /** The flow as `ct list` reads it: src = key.daddr, dst = key.saddr. */
  src: string;
  dst: string;
  sport: number;
  dport: number;
  record: { map: object; key: Record<string, string | number>; entry: Record<string, string | number> };
}

/** 96 entries: every family × kind × direction × state combination, four times over, with varying addresses and ports; plus cluster 3's. */
function knownEntries(now: number): Known[] {
  const out: Known[] = [];
  const dirs: Dir[] = ['out', 'in', 'service'];
  const states: State[] = ['established', 'closing', 'syn-only', 'expired'];
  let i = 0;
  for (const family of ['ipv4', 'ipv6'] as Family[]) {
    for (const tcp of [true, false]) {
      for (const dir of dirs) {
        for (const state of states) {
          for (let rep = 0; rep < 2; rep++, i++) {
            const clusterId = rep === 1 && state === 'established' ? CLUSTER : 0;
            // Sources spread over both halves of 192.0.2.0/24 (2001:db8:1::/64 split at ::80).
            const host = (i * 37) % 250 + 1;
            const src = family === 'ipv4' ? `192.0.2.${host}` : `2001:db8:1::${host.toString(16)}`;
            const dst = family === 'ipv4' ? `198.51.100.${(i % 3) + 1}` : `2001:db8:2::${(i % 3) + 1}`;
            const sport = 20000 + i;
            const dport = [443, 80, 53][i % 3]!;
            // syn-only is a TCP state: a non-TCP entry without SeenNonSyn is established.
            const flags = state === 'closing' ? SEEN_NON_SYN | RX_CLOSING : state === 'syn-only' ? 0 : SEEN_NON_SYN;
            const effective: State = state === 'syn-only' && !tcp ? 'established' : state;
            out.push({
              family,
              tcp,
              clusterId,
              dir,
              state: effective,
              src,
              dst,
              sport,
              dport,
              record: {
                map: { family: family === 'ipv4' ? 'FAMILY_IPV4' : 'FAMILY_IPV6', kind: tcp ? 'MAP_KIND_TCP' : 'MAP_KIND_ANY', cluster_id: clusterId },
                key: { daddr: src, saddr: dst, sport, dport, nexthdr: tcp ? 6 : 17, flags: dir === 'in' ? TUPLE_IN : dir === 'service' ? TUPLE_SERVICE : 0 },
                entry: { lifetime: state === 'expired' ? Math.max(1, now - 500) : now + 5000, flags, packets: String(i + 1), bytes: String(100 * (i + 1)), rx_flags_seen: i % 256, tx_flags_seen: (i * 3) % 256 },
              },
            });
          }
        }
      }
    }
  }
  return out;
}

/** An address inside a CIDR, for the two prefixes the cases use (written out, not the daemon's matcher). */
const inV4_25 = (a: string, upper: boolean): boolean => a.startsWith('192.0.2.') && Number(a.split('.')[3]) >= 128 === upper;
const inV6_121 = (a: string, upper: boolean): boolean => a.startsWith('2001:db8:1::') && parseInt(a.slice('2001:db8:1::'.length), 16) >= 0x80 === upper;

interface Case {
  name: string;
  args: string[];
  keep: (k: Known) => boolean;
  /** Which clusters' maps the command reads (default: the global ones). */
  all?: boolean;
}

const CASES: Case[] = [
  { name: 'no filter', args: [], keep: () => true },
  { name: '-s CIDR', args: ['-s', '192.0.2.128/25'], keep: (k) => inV4_25(k.src, true) },
  { name: '-s IPv6 CIDR', args: ['-s', '2001:db8:1::/121'], keep: (k) => inV6_121(k.src, false) },
  { name: '-s ADDR,ADDR', args: ['-s', '192.0.2.75,192.0.2.112'], keep: (k) => k.src === '192.0.2.75' || k.src === '192.0.2.112' },
  { name: '-d ADDR', args: ['-d', '198.51.100.2'], keep: (k) => k.dst === '198.51.100.2' },
  { name: '-d IPv6 ADDR', args: ['--dst', '2001:db8:2::3'], keep: (k) => k.dst === '2001:db8:2::3' },
  { name: '--sport', args: ['--sport', '20005'], keep: (k) => k.sport === 20005 },
  { name: '--dport', args: ['--dport', '53'], keep: (k) => k.dport === 53 },
  { name: '-p udp', args: ['-p', 'udp'], keep: (k) => !k.tcp },
  { name: '-p 6', args: ['--proto', '6'], keep: (k) => k.tcp },
  { name: '--dir in', args: ['--dir', 'in'], keep: (k) => k.dir === 'in' },
  { name: '--dir out', args: ['--dir', 'out'], keep: (k) => k.dir === 'out' },
  { name: '--dir service', args: ['--dir', 'service'], keep: (k) => k.dir === 'service' },
  { name: '--state established', args: ['--state', 'established'], keep: (k) => k.state === 'established' },
  { name: '--state closing', args: ['--state', 'closing'], keep: (k) => k.state === 'closing' },
  { name: '--state syn-only', args: ['--state', 'syn-only'], keep: (k) => k.state === 'syn-only' },
  { name: '--state expired', args: ['--state', 'expired'], keep: (k) => k.state === 'expired' },
  { name: '-f ipv6', args: ['-f', 'ipv6'], keep: (k) => k.family === 'ipv6' },
  { name: '--cluster-id 3', args: ['--cluster-id', String(CLUSTER)], keep: (k) => k.clusterId === CLUSTER, all: true },
  { name: '--cluster-id all', args: ['--cluster-id', 'all'], keep: () => true, all: true },
  {
    name: 'combined: -f ipv4 -p tcp --dir out --state established -d 198.51.100.0/24 --cluster-id all',
    args: ['-f', 'ipv4', '-p', 'tcp', '--dir', 'out', '--state', 'established', '-d', '198.51.100.0/24', '--cluster-id', 'all'],
    keep: (k) => k.family === 'ipv4' && k.tcp && k.dir === 'out' && k.state === 'established' && k.dst.startsWith('198.51.100.'),
    all: true,
  },
];

/** A flow's identity as every output shows it: family, protocol, direction, src:sport -> dst:dport, cluster. */
const flowId = (family: string, proto: string, dir: string, src: string, sport: number, dst: string, dport: number): string => `${family} ${proto} ${dir} ${src}:${sport} -> ${dst}:${dport}`;
const knownId = (k: Known): string => flowId(k.family, k.tcp ? 'TCP' : 'UDP', k.dir, k.src, k.sport, k.dst, k.dport);

interface RecordJson {
  map: { family: string; cluster_id: number };
  key: { daddr: string; saddr: string; sport: number; dport: number; nexthdr: number; flags: number };
  entry: { packets: string; bytes: string; lifetime: number };
}
const recordId = (r: RecordJson): string =>
  flowId(r.map.family === 'FAMILY_IPV6' ? 'ipv6' : 'ipv4', r.key.nexthdr === 6 ? 'TCP' : 'UDP', r.key.flags & TUPLE_SERVICE ? 'service' : r.key.flags & TUPLE_IN ? 'in' : 'out', r.key.daddr, r.key.sport, r.key.saddr, r.key.dport);

/**
 * Cilium's line (`<PROTO> <IN|OUT> <src>:<sport> -> <dst>:<dport> [service ]expires=N
 * (remaining: N sec(s)) Packets=N Bytes=N RxFlagsSeen=0xhh ...`), parsed strictly; the
 * entry it names must be one of `byId` with the same counters and flags.
 */
const LINE =
  /^(TCP|UDP) (IN|OUT) (\[[0-9a-f:]+\]|[\d.]+):(\d+) -> (\[[0-9a-f:]+\]|[\d.]+):(\d+) (service )?expires=(\d+) \(remaining: (-?\d+) sec\(s\)\) Packets=(\d+) Bytes=(\d+) RxFlagsSeen=0x([0-9a-f]{2}) LastRxReport=0 TxFlagsSeen=0x([0-9a-f]{2}) LastTxReport=0 Flags=0x([0-9a-f]{4}) \[ ((?:\w+ )*)\] RevNAT=0 SourceSecurityID=0 BackendID=0 NatPort=0$/;

function parseLine(line: string, byId: Map<string, Known>): Known {
  const m = LINE.exec(line);
  assert.ok(m, `not Cilium's ct list format: ${JSON.stringify(line)}`);
  const [, proto, inOut, src, sport, dst, dport, service, expires, remaining, packets, bytes, rx, tx, flags, names] = m;
  const v6 = src!.startsWith('[');
  const unbracket = (a: string): string => (v6 ? a.slice(1, -1) : a);
  const dir = service ? 'service' : inOut === 'IN' ? 'in' : 'out';
  const id = flowId(v6 ? 'ipv6' : 'ipv4', proto!, dir, unbracket(src!), Number(sport), unbracket(dst!), Number(dport));
  const k = byId.get(id);
  assert.ok(k, `a line of an entry not written: ${line}`);
  const e = k.record.entry;
  assert.equal(Number(expires), e.lifetime, line);
  assert.ok(Math.abs(Number(remaining) - (Number(e.lifetime) - ctNow())) <= 2, `remaining: ${line}`);
  assert.deepEqual([packets, bytes], [e.packets, e.bytes], line);
  assert.deepEqual([parseInt(rx!, 16), parseInt(tx!, 16), parseInt(flags!, 16)], [e.rx_flags_seen, e.tx_flags_seen, e.flags], line);
  const expectNames = [...(Number(e.flags) & RX_CLOSING ? ['RxClosing'] : []), ...(Number(e.flags) & SEEN_NON_SYN ? ['SeenNonSyn'] : [])];
  assert.deepEqual(names!.trim().split(' ').filter(Boolean), expectNames, line);
  return k;
}

test('ctmap ct list | count: every flow filter in every output format gives exactly the expected set', async (t) => {
  // A fixed hour between passes: the expired entries must live until the commands have
  // seen them (the initial pass runs at start, before they are written).
  const { daemon, socket, ct, clusters } = await startCliDaemon(t, 'matrix', ['--conntrack-gc-interval', '1h']);
  const gc = new (services().GCRunner)(daemon.address, grpc.credentials.createInsecure()) as unknown as Client;
  t.after(() => gc.close());
  await waitUntil(async () => (await call(gc, 'Status', {})).families.every((f: { runs: string }) => Number(f.runs) >= 1), 'the initial GC passes ran');
  await call(clusters, 'CreateClusterCTMaps', { cluster_id: CLUSTER });
  const known = knownEntries(Math.floor(ctNow()));
  assert.equal((await call(ct, 'Update', { records: known.map((k) => k.record) })).written, known.length);
  const byId = new Map(known.map((k) => [knownId(k), k]));
  assert.equal(byId.size, known.length, 'every flow written is distinct');
  const server = ['--server', `unix:${socket}`];

  for (const c of CASES) {
    const expected = known.filter((k) => (c.all || k.clusterId === 0) && c.keep(k));
    const want = expected.map(knownId).sort();
    assert.ok(c.name === '--sport' || want.length >= 2, `${c.name}: the case selects something (${want.length})`);
    const run = async (args: string[]): Promise<string> => {
      const r = await ctmap([...args, ...server, ...c.args]);
      assert.equal(r.status, 0, `${args.join(' ')} ${c.args.join(' ')}: ${r.err}`);
      assert.equal(r.err, '', `${c.name}: nothing on stderr when it is no terminal`);
      return r.out;
    };
    const [jsonOut, jsonlOut, textOut, countJsonOut, countTextOut] = await Promise.all([
      run(['ct', 'list', '-o', 'json']),
      run(['ct', 'list', '-o', 'jsonl']),
      run(['ct', 'list']),
      run(['ct', 'count', '-o', 'json']),
      run(['ct', 'count']),
    ]);

    const json = JSON.parse(jsonOut) as RecordJson[];
    assert.deepEqual(json.map(recordId).sort(), want, `${c.name}: ct list -o json`);
    if (c.all) assert.deepEqual(json.map((r) => r.map.cluster_id).sort(), expected.map((k) => k.clusterId).sort(), `${c.name}: the cluster ids`);

    const jsonl = jsonlOut.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l) as RecordJson);
    assert.deepEqual(jsonl.map(recordId).sort(), want, `${c.name}: ct list -o jsonl`);

    const text = textOut.split('\n').filter((l) => l.length > 0);
    assert.deepEqual(text.map((l) => knownId(parseLine(l, byId))).sort(), want, `${c.name}: ct list (text)`);

    const counted = JSON.parse(countJsonOut) as { total: number; maps: Array<{ map: { cluster_id: number }; entries: number }> };
    assert.equal(counted.total, want.length, `${c.name}: ct count -o json`);
    assert.equal(counted.maps.reduce((n, m) => n + m.entries, 0), want.length, `${c.name}: the per-map counts add up`);
    assert.match(countTextOut, new RegExp(`^${want.length} flow entries in total$`, 'm'), `${c.name}: ct count (text)`);
  }
});
