/**
 * Issue 5, items 2 and 3: the conntrack datapath on real packets. Two namespaces joined by
 * a veth pair, bin/ctmapd running on a private bpf-root, `ctmap datapath attach --netns A
 * --dev vethA`, then real TCP (FIN-closed and reset), UDP, ICMP echo and an ICMP error
 * for a UDP flow, over IPv4 and IPv6, plus one flow started from B. Everything is
 * asserted through the daemon's gRPC API: the exact set of entries, their keys and
 * directions, flags, counters (TCP segment and link byte counts read independently inside
 * namespace A) and lifetimes (bracketed by the CT clock read around each flow); the §7
 * text; two GC passes that remove first the closed TCP entries and then the rest; and a
 * detach that removes ctmap's filters and keeps a foreign one.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { ctNow } from '../../src/maps/clock';
import { services } from '../../src/api/proto';
import { cleanupScope, ctmapOk, datapathE2eTier, startDaemonProcess } from '../helpers/datapath-e2e';
import { Client, call, collect, tempDir } from '../helpers/grpc';
import { privateBpfRoot } from '../helpers/kernel';
import { createVethPair, inNetns, NetnsSide, waitQuiet } from '../helpers/netns';
import type { Step, StepResult } from '../helpers/netns-traffic';

const TRAFFIC = path.join(__dirname, '../helpers/netns-traffic.js');
const TCP_PORT = 7001;
const UDP_PORT = 7002;
const CLOSED_PORT = 7003;
const TCP_PAYLOAD = 100;
const UDP_PAYLOAD = 64;
const ETH = 14;
/** A Linux SYN's TCP header: 20 bytes plus MSS, SACK_PERM, timestamps and window scale. */
const TCP_HDR_SYN = 40;
/** A TCP header without options (Linux's RST answering a SYN). */
const TCP_HDR = 20;
const UDP_HDR = 8;
const ICMP_HDR = 8;
/** ping's default 56 data bytes + the 8-byte echo header. */
const PING_ICMP = 64;

const CLOSE_TIMEOUT = 10; // --bpf-ct-timeout-regular-tcp-fin default (facts §5)
const NONTCP_LIFETIME = 60; // --bpf-ct-timeout-regular-any default

const TUPLE_OUT = 0;
const TUPLE_IN = 1;
const TUPLE_RELATED = 2;
const SEEN_NON_SYN = 0x10;
const CLOSED = 0x13; // RxClosing | TxClosing | SeenNonSyn
const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_RST = 0x04;
const TCP_PSH = 0x08;
const TCP_ACK = 0x10;

type Fam = 4 | 6;

interface Expected {
  label: string;
  family: Fam;
  kind: 'MAP_KIND_TCP' | 'MAP_KIND_ANY';
  key: { daddr: string; saddr: string; dport: number; sport: number; nexthdr: number; flags: number };
  packets: number;
  bytes: number;
  flags: number;
  txFlagsSeen: number;
  rxFlagsSeen: number;
  /** Expiry bracket: [floor(start) + t, floor(end) + t]. */
  lifetime: [number, number];
  /** Report time brackets; [0, 0] = never reported in that direction. */
  lastTx: [number, number];
  lastRx: [number, number];
}

function window(r: { start: number; end: number }, plus = 0): [number, number] {
  return [Math.floor(r.start) + plus, Math.floor(r.end) + plus];
}

function spawnIn(ns: string, args: readonly string[]): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}

/** An echo server process in `side`'s namespace; resolves once it listens. */
async function startServer(side: NetnsSide, procs: ChildProcess[]): Promise<void> {
  const child = spawnIn(side.ns, [TRAFFIC, JSON.stringify({ mode: 'serve', addresses: [side.ipv4, side.ipv6], tcpPort: TCP_PORT, udpPort: UDP_PORT })]);
  procs.push(child);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('ready\n')) resolve();
    });
    child.stderr!.on('data', (d) => (out += d));
    child.on('exit', (code) => reject(new Error(`server in ${side.ns} exited ${code}: ${out}`)));
  });
}

/** Runs traffic steps in `side`'s namespace; one result per step. */
async function runSteps(side: NetnsSide, steps: Step[]): Promise<StepResult[]> {
  const child = spawnIn(side.ns, [TRAFFIC, JSON.stringify({ mode: 'flows', steps })]);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.equal(code, 0, `traffic in ${side.ns} failed: ${err}`);
  const results = out.trim().split('\n').map((l) => JSON.parse(l) as StepResult);
  assert.equal(results.length, steps.length);
  return results;
}

const mapOf = (e: Pick<Expected, 'family' | 'kind'>) => ({ family: e.family === 4 ? 'FAMILY_IPV4' : 'FAMILY_IPV6', kind: e.kind, cluster_id: 0 });
const keyId = (family: string, kind: string, k: Expected['key']) => `${family}/${kind}/${k.daddr}/${k.saddr}/${k.sport}/${k.dport}/${k.nexthdr}/${k.flags}`;

function between(value: number, [lo, hi]: [number, number], what: string): void {
  assert.ok(value >= lo && value <= hi, `${what}: ${value} not in [${lo}, ${hi}]`);
}

/** The expectations for the flows of one family, from what the namespace saw. */
function expectFamily(fam: Fam, a: NetnsSide, b: NetnsSide, res: Record<string, StepResult>, fromB: StepResult): Expected[] {
  const A = fam === 4 ? a.ipv4 : a.ipv6;
  const B = fam === 4 ? b.ipv4 : b.ipv6;
  const ip = fam === 4 ? 20 : 40;
  const icmp = fam === 4 ? 1 : 58;
  const udpLen = ETH + ip + UDP_HDR + UDP_PAYLOAD;
  const out: Expected[] = [];
  const linkBytes = (r: StepResult) => r.after.rxBytes - r.before.rxBytes + (r.after.txBytes - r.before.txBytes);
  const linkPackets = (r: StepResult) => r.after.rxPackets - r.before.rxPackets + (r.after.txPackets - r.before.txPackets);

  for (const kind of ['tcp-fin', 'tcp-rst'] as const) {
    const r = res[`${kind}${fam}`];
    const segments = r.after.tcpIn - r.before.tcpIn + (r.after.tcpOut - r.before.tcpOut);
    // The independent counts agree with each other before they judge the datapath.
    assert.equal(linkPackets(r), segments, `${kind} IPv${fam}: link packets = TCP segments (nothing else on the link)`);
    out.push({
      label: `${kind} IPv${fam}`,
      family: fam,
      kind: 'MAP_KIND_TCP',
      // OUT: A started it on A's egress; the key keeps A's address in daddr (facts §2 swap).
      key: { daddr: A, saddr: B, sport: r.localPort, dport: TCP_PORT, nexthdr: 6, flags: TUPLE_OUT },
      packets: segments,
      bytes: linkBytes(r),
      flags: CLOSED,
      // A sent SYN, ACK, data (PSH) and FIN, or RST instead of FIN; B sent SYN-ACK, data and FIN.
      txFlagsSeen: TCP_SYN | TCP_ACK | TCP_PSH | (kind === 'tcp-fin' ? TCP_FIN : TCP_RST),
      rxFlagsSeen: TCP_SYN | TCP_ACK | TCP_PSH | TCP_FIN,
      lifetime: window(r, CLOSE_TIMEOUT),
      lastTx: window(r),
      lastRx: window(r),
    });
  }
  // Refused: SYN out, RST+ACK back. Only one SYN was seen, so the RST closes both sides.
  const refused = res[`tcp-refused${fam}`];
  assert.equal(refused.detail, 'ECONNREFUSED');
  assert.equal(linkPackets(refused), 2, `tcp-refused IPv${fam}: SYN and RST on the link`);
  assert.equal(linkBytes(refused), 2 * (ETH + ip) + TCP_HDR_SYN + TCP_HDR, `tcp-refused IPv${fam}: bytes on the link`);
  out.push({
    label: `tcp-refused IPv${fam}`,
    family: fam,
    kind: 'MAP_KIND_TCP',
    key: { daddr: A, saddr: B, sport: refused.localPort, dport: CLOSED_PORT, nexthdr: 6, flags: TUPLE_OUT },
    packets: 2,
    bytes: linkBytes(refused),
    flags: CLOSED,
    txFlagsSeen: TCP_SYN,
    rxFlagsSeen: TCP_RST | TCP_ACK,
    lifetime: window(refused, CLOSE_TIMEOUT),
    lastTx: window(refused),
    lastRx: window(refused),
  });
  const udp = res[`udp${fam}`];
  assert.equal(linkBytes(udp), 2 * udpLen, `udp IPv${fam}: request and response on the link`);
  out.push({
    label: `udp IPv${fam}`,
    family: fam,
    kind: 'MAP_KIND_ANY',
    key: { daddr: A, saddr: B, sport: udp.localPort, dport: UDP_PORT, nexthdr: 17, flags: TUPLE_OUT },
    packets: 2,
    bytes: 2 * udpLen,
    flags: 0,
    txFlagsSeen: 0,
    rxFlagsSeen: 0,
    lifetime: window(udp, NONTCP_LIFETIME),
    lastTx: window(udp),
    lastRx: window(udp),
  });
  const ping = res[`ping${fam}`];
  const pingLen = ETH + ip + PING_ICMP;
  assert.equal(linkBytes(ping), 2 * pingLen, `ping IPv${fam}: echo and reply on the link`);
  out.push({
    label: `ping IPv${fam}`,
    family: fam,
    kind: 'MAP_KIND_ANY',
    // The echo id is the request's "source port" (sport), 0 the destination's.
    key: { daddr: A, saddr: B, sport: pingId(fam), dport: 0, nexthdr: icmp, flags: TUPLE_OUT },
    packets: 2,
    bytes: 2 * pingLen,
    flags: 0,
    txFlagsSeen: 0,
    rxFlagsSeen: 0,
    lifetime: window(ping, NONTCP_LIFETIME),
    lastTx: window(ping),
    lastRx: window(ping),
  });
  const closed = res[`udp-closed${fam}`];
  assert.equal(closed.detail, 'ECONNREFUSED');
  const errLen = ETH + ip + ICMP_HDR + (ip + UDP_HDR + UDP_PAYLOAD); // the error quotes the whole datagram
  assert.equal(linkBytes(closed), udpLen + errLen, `udp-closed IPv${fam}: datagram and ICMP error on the link`);
  out.push({
    label: `udp-closed IPv${fam}`,
    family: fam,
    kind: 'MAP_KIND_ANY',
    key: { daddr: A, saddr: B, sport: closed.localPort, dport: CLOSED_PORT, nexthdr: 17, flags: TUPLE_OUT },
    packets: 1, // the ICMP error is accounted on the RELATED entry, not here
    bytes: udpLen,
    flags: 0,
    txFlagsSeen: 0,
    rxFlagsSeen: 0,
    lifetime: window(closed, NONTCP_LIFETIME),
    lastTx: window(closed),
    lastRx: [0, 0],
  });
  // The RELATED entry of A -> B: created by the first new flow from A to B (tcp-fin: its
  // SYN), its lifetime raised by each later one (ct_datapath.bpf.c keeps a pair's RELATED
  // entry rather than rewriting it per flow as Cilium does), then hit by the port
  // unreachable it quotes. Linux's SYN carries 20 bytes of options (MSS, SACK_PERM,
  // timestamps, window scale: the netns defaults).
  const first = res[`tcp-fin${fam}`];
  const synLen = ETH + ip + TCP_HDR_SYN;
  out.push({
    label: `related OUT IPv${fam}`,
    family: fam,
    kind: 'MAP_KIND_ANY',
    key: { daddr: A, saddr: B, sport: 0, dport: 0, nexthdr: icmp, flags: TUPLE_OUT | TUPLE_RELATED },
    packets: 2,
    bytes: synLen + errLen,
    flags: SEEN_NON_SYN,
    txFlagsSeen: TCP_SYN, // the creating packet's flags come with the copied entry
    rxFlagsSeen: 0,
    lifetime: window(closed, NONTCP_LIFETIME),
    lastTx: window(first),
    lastRx: window(closed),
  });
  // A flow B started: IN on A's ingress; the key keeps B (the flow's source) in daddr.
  assert.equal(fromB.after.rxBytes - fromB.before.rxBytes + (fromB.after.txBytes - fromB.before.txBytes), 2 * udpLen);
  out.push({
    label: `udp from B IPv${fam}`,
    family: fam,
    kind: 'MAP_KIND_ANY',
    key: { daddr: B, saddr: A, sport: fromB.localPort, dport: UDP_PORT, nexthdr: 17, flags: TUPLE_IN },
    packets: 2,
    bytes: 2 * udpLen,
    flags: 0,
    txFlagsSeen: 0,
    rxFlagsSeen: 0,
    lifetime: window(fromB, NONTCP_LIFETIME),
    lastTx: window(fromB),
    lastRx: window(fromB),
  });
  out.push({
    label: `related IN IPv${fam}`,
    family: fam,
    kind: 'MAP_KIND_ANY',
    key: { daddr: B, saddr: A, sport: 0, dport: 0, nexthdr: icmp, flags: TUPLE_IN | TUPLE_RELATED },
    packets: 1,
    bytes: udpLen,
    flags: SEEN_NON_SYN,
    txFlagsSeen: 0,
    rxFlagsSeen: 0,
    lifetime: window(fromB, NONTCP_LIFETIME),
    lastTx: [0, 0],
    lastRx: window(fromB),
  });
  return out;
}

const pingId = (fam: Fam): number => (fam === 4 ? 0x4b1d : 0x6b1d);

function flagNames(flags: number): string[] {
  return ['RxClosing', 'TxClosing', 'Nat64', 'LBLoopback', 'SeenNonSyn'].filter((_, bit) => flags & (1 << bit));
}

/** The facts §7 line of an expected entry; the remaining seconds as `N`. */
function section7(e: Expected, rec: any): string {
  const proto = e.key.nexthdr === 6 ? 'TCP' : e.key.nexthdr === 17 ? 'UDP' : e.family === 4 ? 'ICMP' : 'ICMPv6';
  const ep = (addr: string, port: number) => (e.family === 6 ? `[${addr}]:${port}` : `${addr}:${port}`);
  const hex = (n: number, w: number) => `0x${n.toString(16).padStart(w, '0')}`;
  const names = flagNames(e.flags);
  return (
    `${proto} ${e.key.flags & TUPLE_IN ? 'IN' : 'OUT'} ${ep(e.key.daddr, e.key.sport)} -> ${ep(e.key.saddr, e.key.dport)} ` +
    `${e.key.flags & TUPLE_RELATED ? 'related ' : ''}expires=${rec.entry.lifetime} (remaining: N sec(s)) ` +
    `Packets=${e.packets} Bytes=${e.bytes} RxFlagsSeen=${hex(e.rxFlagsSeen, 2)} LastRxReport=${rec.entry.last_rx_report} ` +
    `TxFlagsSeen=${hex(e.txFlagsSeen, 2)} LastTxReport=${rec.entry.last_tx_report} Flags=${hex(e.flags, 4)} ` +
    `[ ${names.map((n) => `${n} `).join('')}] RevNAT=0 SourceSecurityID=0 BackendID=0 NatPort=0`
  );
}

test('datapath e2e: TCP, UDP, ICMP over IPv4 and IPv6 between namespaces, through ctmap attach, gRPC, GC and detach', { timeout: 60_000 }, async (t) => {
  if (!datapathE2eTier(t)) return;
  // One cleanup, in reverse order of creation whatever failed: clients, traffic
  // processes, namespaces, daemon, socket dir, pins.
  const scope = cleanupScope(t);
  const procs: ChildProcess[] = [];
  const bpf = privateBpfRoot(scope);
  const tmp = tempDir(scope);
  const socket = path.join(tmp.dir, 'ctmapd.sock');
  const daemon = await startDaemonProcess(scope, bpf.root, socket, ['--conntrack-gc-interval', '3600']);
  const pair = await createVethPair(scope);
  scope.after(() => procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL')));
  // The address setup's MLD reports must be over before the datapath sees the link.
  await Promise.all([waitQuiet(pair.a.ns, pair.a.dev), waitQuiet(pair.b.ns, pair.b.dev)]);
  const { a, b } = pair;
  const client = new (services().CTMaps)(daemon.address, grpc.credentials.createInsecure()) as unknown as Client;
  const gc = new (services().GCRunner)(daemon.address, grpc.credentials.createInsecure()) as unknown as Client;
  scope.after(() => {
    client.close();
    gc.close();
  });

  // --- attach (creates the clsact qdisc: the device had none) ---
  const attached = ctmapOk(['datapath', 'attach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', bpf.root, '--json']);
  assert.equal(attached.dev, a.dev);
  assert.equal(attached.createdQdisc, true);
  assert.deepEqual(attached.hooks.map((h: any) => h.direction), ['ingress', 'egress']);
  const filters = (dir: 'ingress' | 'egress') => inNetns(a.ns, 'tc', ['filter', 'show', 'dev', a.dev, dir]);
  for (const h of attached.hooks) {
    assert.match(filters(h.direction), new RegExp(`pref ${h.priority} bpf chain 0 handle 0x${h.handle.toString(16)} ct_${h.direction}:\\[${h.progId}\\] direct-action`));
  }
  assert.deepEqual(await collect(client, 'DumpEntries', {}), [], 'nothing tracked before the traffic (the link is quiet)');

  // --- traffic ---
  await Promise.all([startServer(b, procs), startServer(a, procs)]);
  const steps = (fam: Fam): Step[] => {
    const host = fam === 4 ? b.ipv4 : b.ipv6;
    return [
      { kind: 'tcp-fin', host, port: TCP_PORT, dev: a.dev, payload: TCP_PAYLOAD },
      { kind: 'tcp-rst', host, port: TCP_PORT, dev: a.dev, payload: TCP_PAYLOAD },
      { kind: 'tcp-refused', host, port: CLOSED_PORT, dev: a.dev },
      { kind: 'udp', host, port: UDP_PORT, dev: a.dev, payload: UDP_PAYLOAD },
      { kind: 'ping', host, id: pingId(fam), dev: a.dev },
      // Last from A to B: its first packet writes the A -> B RELATED entry the error then hits.
      { kind: 'udp-closed', host, port: CLOSED_PORT, dev: a.dev, payload: UDP_PAYLOAD },
    ];
  };
  const fromA = await runSteps(a, [...steps(4), ...steps(6)]);
  const fromB = await runSteps(b, [
    { kind: 'udp', host: a.ipv4, port: UDP_PORT, dev: b.dev, payload: UDP_PAYLOAD },
    { kind: 'udp', host: a.ipv6, port: UDP_PORT, dev: b.dev, payload: UDP_PAYLOAD },
  ]);
  const byName: Record<string, StepResult> = {};
  for (const r of fromA) byName[`${r.kind}${r.host.includes(':') ? 6 : 4}`] = r;
  for (const k of ['tcp-fin', 'tcp-rst']) for (const f of [4, 6]) assert.equal(byName[`${k}${f}`].detail, `echoed ${TCP_PAYLOAD}`);
  const expected = [...expectFamily(4, a, b, byName, fromB[0]), ...expectFamily(6, a, b, byName, fromB[1])];

  // --- DumpEntries: exactly these entries, field by field ---
  const dump = await collect(client, 'DumpEntries', {});
  const got = new Map(dump.map((r: any) => [keyId(r.map.family, r.map.kind, r.key), r]));
  const want = new Map(expected.map((e) => [keyId(mapOf(e).family, e.kind, e.key), e]));
  assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), 'the dump holds exactly the expected keys');
  for (const [id, e] of want) {
    const rec = got.get(id)!;
    const en = rec.entry;
    const label = e.label;
    assert.equal(Number(en.packets), e.packets, `${label}: packets`);
    assert.equal(Number(en.bytes), e.bytes, `${label}: bytes`);
    assert.equal(en.flags, e.flags, `${label}: flags`);
    assert.deepEqual(en.flag_names, flagNames(e.flags), `${label}: flag names`);
    assert.equal(en.tx_flags_seen, e.txFlagsSeen, `${label}: tx_flags_seen`);
    assert.equal(en.rx_flags_seen, e.rxFlagsSeen, `${label}: rx_flags_seen`);
    between(en.lifetime, e.lifetime, `${label}: lifetime`);
    between(en.last_tx_report, e.lastTx, `${label}: last_tx_report`);
    between(en.last_rx_report, e.lastRx, `${label}: last_rx_report`);
    for (const f of ['rev_nat', 'nat_port', 'source_security_id']) assert.equal(en[f], 0, `${label}: ${f}`);
    assert.equal(String(en.backend_id), '0', `${label}: backend_id`);
    // Lookup by the key finds the same entry.
    const one = await call(client, 'Lookup', { map: mapOf(e), key: e.key });
    assert.deepEqual({ ...one.entry, expires_in_seconds: 0 }, { ...en, expires_in_seconds: 0 }, `${label}: Lookup = DumpEntries`);
  }

  // --- the facts §7 text (DumpEntriesWithTimeDiff), and ctmap ct list printing the same ---
  const before = ctNow();
  const text = (await collect(client, 'DumpEntriesWithTimeDiff', {})).map((c: any) => c.text).join('');
  const after = ctNow();
  const lines = text.trimEnd().split('\n');
  assert.equal(lines.length, expected.length, text);
  for (const e of expected) {
    const rec = got.get(keyId(mapOf(e).family, e.kind, e.key));
    const want7 = section7(e, rec);
    const line = lines.find((l) => l.replace(/\(remaining: -?\d+ sec\(s\)\)/, '(remaining: N sec(s))') === want7);
    assert.ok(line, `${e.label}: §7 line\n  want ${want7}\n  in   ${text}`);
    const remaining = Number(/\(remaining: (-?\d+) sec/.exec(line)![1]);
    between(remaining, [rec.entry.lifetime - after, rec.entry.lifetime - before], `${e.label}: remaining`);
  }
  const tcpFin4 = lines.find((l) => l.startsWith(`TCP OUT ${a.ipv4}:${byName['tcp-fin4'].localPort} -> ${b.ipv4}:${TCP_PORT} `));
  assert.match(tcpFin4 ?? '', /Packets=\d+ .* Flags=0x0013 \[ RxClosing TxClosing SeenNonSyn \]/);
  const cli = ctmapOk(['ct', 'list', '--socket', socket]) as string;
  const strip = (s: string) => s.replace(/\(remaining: -?\d+ sec\(s\)\) /g, '').split('\n').sort();
  assert.deepEqual(strip(cli), strip(text), 'ctmap ct list prints the same entries');

  // --- GC: first only the closed TCP entries are past their lifetime, then everything ---
  const tcpLifetimes = expected.filter((e) => e.kind === 'MAP_KIND_TCP').map((e) => got.get(keyId(mapOf(e).family, e.kind, e.key)).entry.lifetime);
  const otherLifetimes = expected.filter((e) => e.kind === 'MAP_KIND_ANY').map((e) => got.get(keyId(mapOf(e).family, e.kind, e.key)).entry.lifetime);
  const tcpGone = Math.max(...tcpLifetimes) + 1;
  assert.ok(tcpGone <= Math.min(...otherLifetimes), 'close timeout ends before the non-TCP lifetime');
  const updates = await collect(gc, 'Run', { filter: { remove_expired: true, time: String(tcpGone) } });
  const stats = updates.at(-1).stats;
  const perMap = Object.fromEntries(stats.maps.map((m: any) => [`${m.map.family}/${m.map.kind}`, { alive: Number(m.alive), deleted: Number(m.deleted) }]));
  assert.deepEqual(perMap, {
    'FAMILY_IPV4/MAP_KIND_TCP': { alive: 0, deleted: 3 },
    'FAMILY_IPV4/MAP_KIND_ANY': { alive: 6, deleted: 0 },
    'FAMILY_IPV6/MAP_KIND_TCP': { alive: 0, deleted: 3 },
    'FAMILY_IPV6/MAP_KIND_ANY': { alive: 6, deleted: 0 },
  });
  const left = await collect(client, 'DumpEntries', {});
  assert.deepEqual(left.map((r: any) => keyId(r.map.family, r.map.kind, r.key)).sort(), [...want.keys()].filter((k) => !k.includes('MAP_KIND_TCP')).sort());
  const allGone = Math.max(...otherLifetimes) + 1;
  const gcText = ctmapOk(['gc', 'run', '--time', String(allGone), '--socket', socket]) as string;
  assert.match(gcText, /IPv4 any global\s+deleted 6, alive 0/);
  assert.match(gcText, /IPv6 any global\s+deleted 6, alive 0/);
  assert.deepEqual(await collect(client, 'DumpEntries', {}), [], 'the second pass leaves nothing');

  // --- detach: ctmap's filters go, a foreign filter and therefore the qdisc stay ---
  inNetns(a.ns, 'tc', ['filter', 'add', 'dev', a.dev, 'ingress', 'prio', '65000', 'protocol', 'ip', 'u32', 'match', 'ip', 'dst', '198.51.100.99/32']);
  const detached = ctmapOk(['datapath', 'detach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', bpf.root, '--json']);
  assert.deepEqual(detached.hooks.map((h: any) => [h.direction, h.outcome]).sort(), [
    ['egress', 'removed'],
    ['ingress', 'removed'],
  ]);
  assert.equal(detached.qdisc, 'kept');
  assert.equal(detached.otherFilters, 1);
  assert.doesNotMatch(filters('ingress'), /bpf/);
  assert.match(filters('ingress'), /pref 65000 u32/);
  assert.equal(filters('egress').trim(), '');
  assert.match(inNetns(a.ns, 'tc', ['qdisc', 'show', 'dev', a.dev]), /qdisc clsact/);
  assert.ok(!fs.existsSync(path.join(bpf.root, 'ctmapd')), 'the ownership record is gone');
  // Nothing tracks any more.
  inNetns(a.ns, 'ping', ['-c', '1', '-W', '5', b.ipv4]);
  assert.deepEqual(await collect(client, 'DumpEntries', {}), [], 'no entry after detach');
  const again = ctmapOk(['datapath', 'detach', '--netns', a.ns, '--dev', a.dev, '--bpf-root', bpf.root]) as string;
  assert.match(again, /^nothing to detach/);
  assert.equal(await daemon.stop(), 0, 'the daemon stops cleanly');
});
