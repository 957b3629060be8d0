/**
 * bpf/ct_datapath.bpf.c driven with BPF_PROG_TEST_RUN on crafted frames, over CT maps the
 * kernel backend created and pinned in a private bpffs directory and handed to the object
 * with reuse_fd, exactly as the daemon's maps would be. Every scenario asserts the exact
 * entries (decoded with the ctmap codec) and the per-CPU stats afterwards. Semantics: seed
 * 002 (Cilium's ct_lookup4/6, __ct_lookup, ct_create4/6, ct_update_timeout). The daemon's
 * side maps (settings, counters) come from src/datapath/side-maps; per-cluster maps are
 * made as ClusterCTMaps makes them, and the cluster id comes from the settings or from
 * skb->mark (an __sk_buff test-run ctx). Also: the loader's preconditions, and that every
 * CT map access of the loaded programs is inlined or a direct call, and that the objects carry
 * no settings of their own. Kernel tier: root or CAP_BPF, bpftool, llvm-objcopy, and a built
 * bpf/ (make -C bpf).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test, TestContext } from 'node:test';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { assertNoFdLeak, bpfFdCount, kernelTier, privateBpfRoot } from '../helpers/kernel';
import { eth, icmp, ip, quote, tcp, udp } from '../helpers/frames';
import { Family } from '../../src/maps/addr';
import { CtEntry, CtKey, decodeEntry, encodeEntry, encodeKey } from '../../src/maps/ctmap/codec';
import { ctNow } from '../../src/maps/clock';
import { possibleCpus } from '../../src/sys/cpus';
import { CT_DATAPATH_CONFIG, CT_DATAPATH_STATS, CT_DATAPATH_STATS_COUNTERS, CtEntryFlag, IPPROTO, TupleFlag } from '../../src/maps/ctmap/layout';
import { CtKind, CtMapsConfig, clusterInnerCtMapSpec, clusterOuterCtMapSpec, globalCtMapSpec } from '../../src/maps/ctmap/spec';
import { globalsDir } from '../../src/maps/cluster-spec';
import {
  CT_DATAPATH_CLUSTER_MAPS,
  CT_DATAPATH_FAMILY_MAPS,
  CT_DATAPATH_STATS_MAP,
  CT_EVENTS_RING_MAP,
  CT_PRESSURE_MAP,
  datapathSettingsFrom,
  encodeDatapathSettings,
  type DatapathSettings,
} from '../../src/datapath/settings';
import { DatapathSideMaps, datapathSideMapSpecs } from '../../src/datapath/side-maps';
import { parseConfig } from '../../src/config/config';
import { bpfObjectPath } from '../../src/config/paths';
import type { BpfMap } from '../../src/maps/types';
import pino from 'pino';

type KernelModule = typeof import('../../src/maps/kernel');
type BpfModule = typeof import('../../src/sys');
type LoaderModule = typeof import('../../src/datapath/loader');

const SILENT = pino({ level: 'silent' });


/**
 * The lifetimes a daemon without flags asks for (ctmap-facts §5), which the loader writes
 * into the object's .rodata (the object has none of its own).
 */
const SYN_TIMEOUT = 60;
const TCP_LIFETIME = 8000;
const NONTCP_LIFETIME = 60;
const CLOSE_TIMEOUT = 10;

/** The datapath only observes: tc goes on to the next filter. */
const TC_ACT_UNSPEC = -1;

const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const ACK = 0x10;

type Stats = Record<(typeof CT_DATAPATH_STATS_COUNTERS)[number], number>;

// ---- environment -----------------------------------------------------------------------

interface Env {
  /** Runs the egress program on `frame`; `mark` is the skb->mark it sees (default 0). */
  egress(frame: Buffer, mark?: number): void;
  ingress(frame: Buffer, mark?: number): void;
  /** Runs the egress program `n` times on `frame` in one test run; returns the kernel's ns per run. */
  egressRepeat(frame: Buffer, n: number): number;
  /** The entry of `key` in the global map (cluster 0) or in that cluster's inner map. */
  entry(family: Family, kind: CtKind, key: CtKey, clusterId?: number): CtEntry | undefined;
  /** Overwrites an entry from userspace, as the agent or a restore would. */
  write(family: Family, kind: CtKind, key: CtKey, entry: CtEntry): void;
  count(family: Family, kind: CtKind, clusterId?: number): number;
  stats(): Stats;
}

interface DatapathOptions {
  /** The daemon's flags: what its config map holds (DatapathSideMaps writes it). */
  readonly flags?: readonly string[];
  /** Overrides the loader applies on top (LoadOptions.settings), e.g. the cluster id. */
  readonly settings?: Partial<DatapathSettings>;
  /**
   * Per-cluster maps as ClusterCTMaps makes them: the outer maps pinned (sized for
   * settings.clusterIdMax) and, for each id, its inner maps pinned and written into the
   * slots. Undefined: no outer map is pinned at all (no cluster ever joined).
   */
  readonly clusters?: readonly number[];
}


/**
 * Loads the datapath with the loader (src/datapath/) over fresh CT maps and the daemon's
 * side maps (DatapathSideMaps, written from `opts.flags`) pinned where the daemon pins
 * them, with `opts.settings` as the loader's overrides and the per-cluster maps of
 * `opts.clusters`; everything is closed after, also on failure, and then no bpf fd or BPF
 * object may remain open.
 */
async function withDatapath(t: TestContext, body: (env: Env) => void, opts: DatapathOptions = {}): Promise<void> {
  if (!kernelTier(t)) return;
  const kernel = require('../../src/maps/kernel') as KernelModule;
  const bpf = require('../../src/sys') as BpfModule;
  const { CtDatapath } = require('../../src/datapath/loader') as LoaderModule;
  const { root, cleanup } = privateBpfRoot();
  const fds = bpfFdCount();
  const objs = bpf.openObjectCount();
  const daemonSettings = datapathSettingsFrom(parseConfig(opts.flags ?? [], {}));
  const effective = { ...daemonSettings, ...opts.settings };
  const cfg: CtMapsConfig = {
    bpfRoot: root,
    enableIPv4: true,
    enableIPv6: true,
    ctTcpMax: 1024,
    ctAnyMax: 1024,
    distributedLru: false,
    clusterIdMax: effective.clusterIdMax,
  };
  /** `${family}/${kind}/${clusterId}` -> map; outer maps under `${family}/${kind}/outer`. */
  const maps = new Map<string, BpfMap>();
  let side: import('../../src/datapath/side-maps').DatapathSideMaps | undefined;
  let stats: import('../../src/sys').Fd | undefined;
  let datapath: import('../../src/datapath/loader').CtDatapath | undefined;
  let run: import('../../src/sys').TestRunContext | undefined;
  try {
    for (const family of ['ipv4', 'ipv6'] as const) {
      for (const kind of ['tcp', 'any'] as const) {
        maps.set(`${family}/${kind}/0`, kernel.kernelBackend.create(globalCtMapSpec(cfg, family, kind)));
        if (opts.clusters === undefined) continue;
        const outer = kernel.kernelBackend.create(clusterOuterCtMapSpec(cfg, family, kind));
        maps.set(`${family}/${kind}/outer`, outer);
        for (const id of opts.clusters) {
          const inner = kernel.kernelBackend.create(clusterInnerCtMapSpec(cfg, family, kind, id));
          maps.set(`${family}/${kind}/${id}`, inner);
          outer.update(u32(id), u32(inner.outerSlotValue()));
        }
      }
    }
    side = DatapathSideMaps.open(kernel.kernelBackend, root, daemonSettings, SILENT);
    stats = bpf.objGet(path.join(globalsDir(root), CT_DATAPATH_STATS_MAP))!;
    datapath = CtDatapath.load({ bpfRoot: root, settings: opts.settings });
    assert.deepEqual(datapath.settings, effective, 'the daemon\'s settings with the overrides');
    const expectReused = [CT_DATAPATH_STATS_MAP, CT_EVENTS_RING_MAP, CT_PRESSURE_MAP]
      .concat(effective.enableIpv4 ? CT_DATAPATH_FAMILY_MAPS.ipv4 : [])
      .concat(effective.enableIpv6 ? CT_DATAPATH_FAMILY_MAPS.ipv6 : [])
      .concat(opts.clusters && effective.enableIpv4 ? CT_DATAPATH_CLUSTER_MAPS.ipv4 : [])
      .concat(opts.clusters && effective.enableIpv6 ? CT_DATAPATH_CLUSTER_MAPS.ipv6 : []);
    assert.deepEqual([...datapath.reusedMaps].sort(), expectReused.sort(), 'maps reused from the pins');
    const progs = { egress: datapath.egress, ingress: datapath.ingress };
    run = new bpf.TestRunContext(bpf.SK_BUFF_CTX.size, 1024);
    const r = run;
    const ncpu = possibleCpus();
    const statsFd = stats;
    const exec = (p: import('../../src/sys').BpfProgram, frame: Buffer, mark = 0): void => {
      r.setPacket(frame);
      r.ctx.writeUInt32LE(mark, bpf.SK_BUFF_CTX.markOffset);
      assert.equal(p.testRun(r), TC_ACT_UNSPEC, 'verdict');
    };
    const mapOf = (family: Family, kind: CtKind, clusterId = 0): BpfMap => {
      const m = maps.get(`${family}/${kind}/${clusterId}`);
      assert.ok(m, `test set-up has no ${family} ${kind} map for cluster ${clusterId}`);
      return m;
    };
    body({
      egressRepeat(frame, n) {
        r.repeat = n;
        try {
          exec(progs.egress, frame);
          return r.duration;
        } finally {
          r.repeat = 0;
        }
      },
      egress: (f, mark) => exec(progs.egress, f, mark),
      ingress: (f, mark) => exec(progs.ingress, f, mark),
      entry(family, kind, key, clusterId) {
        const m = mapOf(family, kind, clusterId);
        const k = Buffer.alloc(m.spec.keySize);
        encodeKey(family, key, k);
        const v = m.lookup(k);
        return v && decodeEntry(v);
      },
      write(family, kind, key, entry) {
        const m = mapOf(family, kind);
        const k = Buffer.alloc(m.spec.keySize);
        const v = Buffer.alloc(m.spec.valueSize);
        encodeKey(family, key, k);
        encodeEntry(entry, v);
        m.update(k, v);
      },
      count: (family, kind, clusterId) => mapOf(family, kind, clusterId).count(),
      stats() {
        const buf = Buffer.alloc(ncpu * CT_DATAPATH_STATS.size);
        assert.ok(bpf.lookup(statsFd, Buffer.alloc(4), buf), 'stats slot 0');
        const out = {} as Stats;
        CT_DATAPATH_STATS_COUNTERS.forEach((name, i) => {
          let sum = 0n;
          for (let c = 0; c < ncpu; c++) sum += buf.readBigUInt64LE(c * CT_DATAPATH_STATS.size + i * 8);
          out[name] = Number(sum);
        });
        // Every created flow entry is counted by its map's kind as well (the fill-up
        // pressure counters): checked here for every test, then left out of the comparison
        // (test/kernel/ct-events.test.ts checks them by kind).
        const { creates_tcp4, creates_any4, creates_tcp6, creates_any6, ...rest } = out;
        assert.equal(creates_tcp4 + creates_any4 + creates_tcp6 + creates_any6, out.creates, 'creates by map kind add up to creates');
        return rest as Stats;
      },
    });
  } finally {
    run?.close();
    datapath?.close();
    stats?.close();
    side?.close();
    for (const m of maps.values()) m.close();
    cleanup();
  }
  assertNoFdLeak(fds, t.name);
  assert.equal(bpf.openObjectCount(), objs, `${t.name}: BPF objects or test-run contexts left open`);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
}

/** Runs `step` and asserts that `lifetime` is now + `seconds` on the CT clock around it. */
function around<T>(step: () => T): { value: T; expect(lifetime: number, seconds: number, what: string): void } {
  const before = ctNow();
  const value = step();
  const after = ctNow();
  return {
    value,
    expect(lifetime, seconds, what) {
      assert.ok(
        lifetime >= before + seconds && lifetime <= after + seconds,
        `${what}: lifetime ${lifetime} not in now + ${seconds} = [${before + seconds}, ${after + seconds}]`,
      );
    },
  };
}

/** The per-kind create counters, which env.stats() checks against `creates` and leaves out. */
const BY_KIND = ['creates_tcp4', 'creates_any4', 'creates_tcp6', 'creates_any6'];

function stats(partial: Partial<Stats>): Stats {
  return Object.fromEntries(CT_DATAPATH_STATS_COUNTERS.filter((n) => !BY_KIND.includes(n)).map((n) => [n, partial[n] ?? 0])) as Stats;
}

function flagsOf(...names: (keyof typeof CtEntryFlag)[]): number {
  return names.reduce((acc, n) => acc | CtEntryFlag[n], 0);
}

/** The forward key of a flow as seen in its first packet: addresses swapped, ports not (facts §2). */
function fwdKey(src: string, sport: number, dst: string, dport: number, nexthdr: number, flags: number): CtKey {
  return { daddr: src, saddr: dst, sport, dport, nexthdr, flags };
}

// ---- scenarios -------------------------------------------------------------------------

const FAMILIES = [
  { family: 'ipv4' as const, a: '10.0.1.1', b: '10.0.2.2', r: '10.0.0.254', icmp: IPPROTO.ICMP, echo: 8, reply: 0, unreach: 3, ext: [] as number[] },
  // IPv6 packets carry hop-by-hop, routing and destination options headers, which the parser skips.
  { family: 'ipv6' as const, a: 'fd00::1', b: 'fd00::2', r: 'fd00::fe', icmp: IPPROTO.ICMPV6, echo: 128, reply: 129, unreach: 1, ext: [0, 43, 60] },
];

for (const fam of FAMILIES) {
  const { family, a, b, r } = fam;
  const L = (frame: Buffer): bigint => BigInt(frame.length);

  describe(`ct_datapath ${family}`, () => {
    test('TCP SYN creates the flow on the SYN timeout; a non-SYN reply establishes it', async (t) => {
      await withDatapath(t, (env) => {
        const key = fwdKey(a, 40000, b, 80, IPPROTO.TCP, TupleFlag.OUT);
        const syn = ip(a, b, IPPROTO.TCP, tcp(40000, 80, SYN), fam.ext);
        const s1 = around(() => env.egress(syn));
        let e = env.entry(family, 'tcp', key)!;
        assert.ok(e, 'entry created');
        s1.expect(e.lifetime, SYN_TIMEOUT, 'after SYN');
        assert.deepEqual(
          { packets: e.packets, bytes: e.bytes, flags: e.flags, tx: e.txFlagsSeen, rx: e.rxFlagsSeen, lastRx: e.lastRxReport },
          { packets: 1n, bytes: L(syn), flags: 0, tx: SYN, rx: 0, lastRx: 0 },
        );
        s1.expect(e.lastTxReport, 0, 'last tx report');
        // The RELATED entry in the any map: addresses and direction of the flow, no ports.
        const rel = env.entry(family, 'any', { daddr: a, saddr: b, sport: 0, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.OUT | TupleFlag.RELATED })!;
        assert.ok(rel, 'related entry created');
        assert.equal(rel.flags, flagsOf('SeenNonSyn'));
        assert.equal(rel.lifetime, e.lifetime);

        const synack = ip(b, a, IPPROTO.TCP, tcp(80, 40000, SYN | ACK));
        const s2 = around(() => env.ingress(synack));
        e = env.entry(family, 'tcp', key)!;
        s2.expect(e.lifetime, SYN_TIMEOUT, 'after SYN-ACK');
        assert.equal(e.flags, 0, 'SYN-ACK is still a SYN');
        assert.equal(e.rxFlagsSeen, SYN | ACK);
        s2.expect(e.lastRxReport, 0, 'last rx report');

        const ack = ip(b, a, IPPROTO.TCP, tcp(80, 40000, ACK));
        const s3 = around(() => env.ingress(ack));
        e = env.entry(family, 'tcp', key)!;
        s3.expect(e.lifetime, TCP_LIFETIME, 'after ACK');
        assert.deepEqual(
          { packets: e.packets, bytes: e.bytes, flags: e.flags, tx: e.txFlagsSeen, rx: e.rxFlagsSeen },
          { packets: 3n, bytes: L(syn) + L(synack) + L(ack), flags: flagsOf('SeenNonSyn'), tx: SYN, rx: SYN | ACK },
        );
        assert.equal(env.count(family, 'tcp'), 1, 'replies create nothing');
        assert.equal(env.count(family, 'any'), 1, 'only the related entry');
        assert.deepEqual(env.stats(), stats({ packets: 3, lookups: 4, creates: 1, hits_reply: 2 }));
      });
    });

    test('FIN both ways closes on the close timeout; a SYN reopens the closing entry', async (t) => {
      await withDatapath(t, (env) => {
        const key = fwdKey(a, 40001, b, 443, IPPROTO.TCP, TupleFlag.OUT);
        env.egress(ip(a, b, IPPROTO.TCP, tcp(40001, 443, SYN)));
        env.ingress(ip(b, a, IPPROTO.TCP, tcp(443, 40001, ACK)));

        const s1 = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(40001, 443, FIN | ACK), fam.ext)));
        let e = env.entry(family, 'tcp', key)!;
        assert.equal(e.flags, flagsOf('TxClosing', 'SeenNonSyn'));
        s1.expect(e.lifetime, TCP_LIFETIME, 'one side closed: still alive');

        const s2 = around(() => env.ingress(ip(b, a, IPPROTO.TCP, tcp(443, 40001, FIN | ACK))));
        e = env.entry(family, 'tcp', key)!;
        assert.equal(e.flags, flagsOf('RxClosing', 'TxClosing', 'SeenNonSyn'));
        s2.expect(e.lifetime, CLOSE_TIMEOUT, 'both sides closed');
        assert.equal(e.txFlagsSeen, SYN | FIN | ACK);
        assert.equal(e.rxFlagsSeen, FIN | ACK);

        // The last ACK of a closed flow does not extend it.
        env.egress(ip(a, b, IPPROTO.TCP, tcp(40001, 443, ACK)));
        assert.equal(env.entry(family, 'tcp', key)!.lifetime, e.lifetime);

        const s3 = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(40001, 443, SYN))));
        e = env.entry(family, 'tcp', key)!;
        assert.equal(e.flags, 0, 'closing and SeenNonSyn cleared');
        s3.expect(e.lifetime, SYN_TIMEOUT, 'reopened');
        assert.deepEqual({ tx: e.txFlagsSeen, rx: e.rxFlagsSeen, packets: e.packets }, { tx: SYN, rx: 0, packets: 6n });
        assert.equal(env.count(family, 'tcp'), 1);
        assert.deepEqual(
          env.stats(),
          stats({ packets: 6, lookups: 10, creates: 1, hits_reply: 2, hits_established: 3, closes: 2, reopens: 1 }),
        );
      });
    });

    test('RST closes its side; RST from the other side too starts the close timeout', async (t) => {
      await withDatapath(t, (env) => {
        const key = fwdKey(a, 40002, b, 22, IPPROTO.TCP, TupleFlag.OUT);
        env.egress(ip(a, b, IPPROTO.TCP, tcp(40002, 22, SYN)));
        env.ingress(ip(b, a, IPPROTO.TCP, tcp(22, 40002, SYN | ACK)));
        const s1 = around(() => env.ingress(ip(b, a, IPPROTO.TCP, tcp(22, 40002, RST))));
        let e = env.entry(family, 'tcp', key)!;
        assert.equal(e.flags, flagsOf('RxClosing', 'SeenNonSyn'));
        assert.equal(e.rxFlagsSeen, SYN | ACK | RST);
        s1.expect(e.lifetime, TCP_LIFETIME, 'RST seen: refreshed before the side closed');
        const s2 = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(40002, 22, RST | ACK))));
        e = env.entry(family, 'tcp', key)!;
        assert.equal(e.flags, flagsOf('RxClosing', 'TxClosing', 'SeenNonSyn'));
        s2.expect(e.lifetime, CLOSE_TIMEOUT, 'both sides reset');
        assert.equal(env.stats().closes, 2);
      });
    });

    test('an RST answering a SYN (refused connection) closes both sides on the close timeout', async (t) => {
      await withDatapath(t, (env) => {
        const key = fwdKey(a, 40004, b, 23, IPPROTO.TCP, TupleFlag.OUT);
        env.egress(ip(a, b, IPPROTO.TCP, tcp(40004, 23, SYN)));
        const s = around(() => env.ingress(ip(b, a, IPPROTO.TCP, tcp(23, 40004, RST | ACK))));
        const e = env.entry(family, 'tcp', key)!;
        assert.equal(e.flags, flagsOf('RxClosing', 'TxClosing', 'SeenNonSyn'), 'both sides closed: only one SYN was seen');
        assert.deepEqual({ tx: e.txFlagsSeen, rx: e.rxFlagsSeen }, { tx: SYN, rx: RST | ACK });
        s.expect(e.lifetime, CLOSE_TIMEOUT, 'refused');
        assert.equal(env.stats().closes, 1);
      });
    });

    test('UDP request and response share one entry on the non-TCP lifetime', async (t) => {
      await withDatapath(t, (env) => {
        const req = ip(a, b, IPPROTO.UDP, udp(5353, 53), fam.ext);
        const resp = ip(b, a, IPPROTO.UDP, udp(53, 5353, Buffer.alloc(40)));
        env.egress(req);
        const s = around(() => env.ingress(resp));
        const e = env.entry(family, 'any', fwdKey(a, 5353, b, 53, IPPROTO.UDP, TupleFlag.OUT))!;
        assert.ok(e, 'entry in the any map');
        s.expect(e.lifetime, NONTCP_LIFETIME, 'after response');
        assert.deepEqual(
          { packets: e.packets, bytes: e.bytes, flags: e.flags, tx: e.txFlagsSeen, rx: e.rxFlagsSeen },
          { packets: 2n, bytes: L(req) + L(resp), flags: 0, tx: 0, rx: 0 },
        );
        s.expect(e.lastRxReport, 0, 'last rx report');
        assert.ok(e.lastTxReport > 0 && e.lastTxReport <= ctNow(), 'last tx report set at creation');
        assert.equal(env.count(family, 'tcp'), 0);
        assert.equal(env.count(family, 'any'), 2, 'flow + related');
        assert.deepEqual(env.stats(), stats({ packets: 2, lookups: 3, creates: 1, hits_reply: 1 }));
      });
    });

    test('timeouts come from the daemon\'s flags (its config map) through .rodata; a family switched off passes untracked', async (t) => {
      const other = family === 'ipv4' ? 'ipv6' : 'ipv4';
      const flags = ['--bpf-ct-timeout-regular-any=33', '--bpf-ct-timeout-regular-tcp-syn=21', '--bpf-ct-timeout-regular-tcp-fin=7', `--enable-${other}=false`];
      await withDatapath(
        t,
        (env) => {
          const u = around(() => env.egress(ip(a, b, IPPROTO.UDP, udp(5353, 53), fam.ext)));
          u.expect(env.entry(family, 'any', fwdKey(a, 5353, b, 53, IPPROTO.UDP, TupleFlag.OUT))!.lifetime, 33, 'UDP on --bpf-ct-timeout-regular-any');
          const key = fwdKey(a, 40003, b, 22, IPPROTO.TCP, TupleFlag.OUT);
          const syn = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(40003, 22, SYN))));
          syn.expect(env.entry(family, 'tcp', key)!.lifetime, 21, 'SYN on --bpf-ct-timeout-regular-tcp-syn');
          env.ingress(ip(b, a, IPPROTO.TCP, tcp(22, 40003, SYN | ACK)));
          env.ingress(ip(b, a, IPPROTO.TCP, tcp(22, 40003, RST)));
          const rst = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(40003, 22, RST))));
          rst.expect(env.entry(family, 'tcp', key)!.lifetime, 7, 'closed on --bpf-ct-timeout-regular-tcp-fin');
          const before = env.stats().skipped;
          const o = other === 'ipv4' ? { a: '10.0.1.1', b: '10.0.2.2' } : { a: 'fd00::1', b: 'fd00::2' };
          env.egress(ip(o.a, o.b, IPPROTO.UDP, udp(1, 2)));
          assert.equal(env.stats().skipped, before + 1, `${other} packet skipped`);
        },
        { flags },
      );
    });

    test('the report time moves only after the report interval, or when a new TCP flag shows', async (t) => {
      await withDatapath(t, (env) => {
        const key = fwdKey(a, 40003, b, 8080, IPPROTO.TCP, TupleFlag.OUT);
        env.egress(ip(a, b, IPPROTO.TCP, tcp(40003, 8080, SYN)));
        env.ingress(ip(b, a, IPPROTO.TCP, tcp(8080, 40003, ACK)));
        // Backdate the last egress report to within, then beyond, the 5 s interval.
        const inside = ctNow() - 3;
        env.write(family, 'tcp', key, { ...env.entry(family, 'tcp', key)!, lastTxReport: inside });
        env.egress(ip(a, b, IPPROTO.TCP, tcp(40003, 8080, SYN)));
        assert.equal(env.entry(family, 'tcp', key)!.lastTxReport, inside, 'same flags within the interval');
        env.egress(ip(a, b, IPPROTO.TCP, tcp(40003, 8080, ACK)));
        let e = env.entry(family, 'tcp', key)!;
        assert.ok(e.lastTxReport >= inside + 3, 'a new flag (ACK) reports at once');
        assert.equal(e.txFlagsSeen, SYN | ACK);
        env.write(family, 'tcp', key, { ...e, lastTxReport: ctNow() - 10 });
        const s = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(40003, 8080, ACK))));
        e = env.entry(family, 'tcp', key)!;
        s.expect(e.lastTxReport, 0, 'after the interval');
      });
    });

    test('repeat runs the program on the same packet n times in one test run', async (t) => {
      await withDatapath(t, (env) => {
        const req = ip(a, b, IPPROTO.UDP, udp(7001, 53));
        const ns = env.egressRepeat(req, 5);
        assert.ok(Number.isInteger(ns) && ns > 0, `duration ${ns} ns per run`);
        const e = env.entry(family, 'any', fwdKey(a, 7001, b, 53, IPPROTO.UDP, TupleFlag.OUT))!;
        assert.deepEqual({ packets: e.packets, bytes: e.bytes }, { packets: 5n, bytes: 5n * L(req) }, 'one create, then four hits');
        assert.deepEqual(env.stats(), stats({ packets: 5, lookups: 2 + 4 * 2, creates: 1, hits_established: 4 }));
      });
    });

    test('a new flow keeps the pair\'s RELATED entry: its lifetime is raised, never lowered, the rest untouched', async (t) => {
      await withDatapath(
        t,
        (env) => {
          const relKey = { daddr: a, saddr: b, sport: 0, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.OUT | TupleFlag.RELATED };
          const u = around(() => env.egress(ip(a, b, IPPROTO.UDP, udp(5353, 53))));
          let rel = env.entry(family, 'any', relKey)!;
          u.expect(rel.lifetime, 100, 'created with the UDP flow');
          env.write(family, 'any', relKey, { ...rel, packets: 7n });
          // A TCP flow of the same pair: its SYN timeout (30 s) is shorter, so nothing changes.
          env.egress(ip(a, b, IPPROTO.TCP, tcp(40010, 80, SYN)));
          assert.deepEqual(env.entry(family, 'any', relKey), { ...rel, packets: 7n }, 'kept as it was');
          // With less than 30 s left, the next flow raises it to its own lifetime.
          env.write(family, 'any', relKey, { ...rel, packets: 7n, lifetime: ctNow() + 5 });
          const s2 = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(40011, 80, SYN))));
          rel = env.entry(family, 'any', relKey)!;
          s2.expect(rel.lifetime, 30, 'raised to the new flow\'s');
          assert.equal(rel.packets, 7n, 'counters untouched');
          assert.equal(env.count(family, 'any'), 2, 'UDP flow + one RELATED entry');
          assert.deepEqual(env.stats(), stats({ packets: 3, lookups: 6, creates: 3 }));
        },
        { flags: ['--bpf-ct-timeout-regular-any=100', '--bpf-ct-timeout-regular-tcp-syn=30'] },
      );
    });

    test('ingress-initiated flows are keyed IN', async (t) => {
      await withDatapath(t, (env) => {
        env.ingress(ip(b, a, IPPROTO.UDP, udp(6000, 7000)));
        env.egress(ip(a, b, IPPROTO.UDP, udp(7000, 6000)));
        const e = env.entry(family, 'any', fwdKey(b, 6000, a, 7000, IPPROTO.UDP, TupleFlag.IN))!;
        assert.ok(e, 'IN entry');
        assert.equal(e.packets, 2n);
        assert.ok(env.entry(family, 'any', { daddr: b, saddr: a, sport: 0, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.IN | TupleFlag.RELATED }));
      });
    });

    test('ICMP echo and echo reply are one flow keyed by the echo id', async (t) => {
      await withDatapath(t, (env) => {
        env.egress(ip(a, b, fam.icmp, icmp(fam.echo, 0x1234, Buffer.alloc(56))));
        const s = around(() => env.ingress(ip(b, a, fam.icmp, icmp(fam.reply, 0x1234, Buffer.alloc(56)))));
        const e = env.entry(family, 'any', { daddr: a, saddr: b, sport: 0x1234, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.OUT })!;
        assert.ok(e, 'echo entry: id in sport');
        assert.equal(e.packets, 2n);
        s.expect(e.lifetime, NONTCP_LIFETIME, 'after reply');
        // Another id is another flow.
        env.egress(ip(a, b, fam.icmp, icmp(fam.echo, 0x1235)));
        assert.ok(env.entry(family, 'any', { daddr: a, saddr: b, sport: 0x1235, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.OUT }));
        assert.deepEqual(env.stats(), stats({ packets: 3, lookups: 5, creates: 2, hits_reply: 1 }));
      });
    });

    test('an ICMP destination unreachable quoting a UDP flow is RELATED to it', async (t) => {
      await withDatapath(t, (env) => {
        const req = ip(a, b, IPPROTO.UDP, udp(5353, 53));
        env.egress(req);
        // Sent by a router on the path: the outer source is neither end of the flow.
        const err = ip(r, a, fam.icmp, icmp(fam.unreach, 0, quote(req)));
        const s = around(() => env.ingress(err));
        const rel = env.entry(family, 'any', { daddr: a, saddr: b, sport: 0, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.OUT | TupleFlag.RELATED })!;
        assert.deepEqual({ packets: rel.packets, bytes: rel.bytes }, { packets: 2n, bytes: L(req) + L(err) });
        s.expect(rel.lifetime, NONTCP_LIFETIME, 'related refreshed');
        assert.equal(env.entry(family, 'any', fwdKey(a, 5353, b, 53, IPPROTO.UDP, TupleFlag.OUT))!.packets, 1n, 'flow entry untouched');
        // An error about a flow nobody tracks creates nothing.
        env.ingress(ip(r, a, fam.icmp, icmp(fam.unreach, 0, quote(ip(a, r, IPPROTO.UDP, udp(1, 2))))));
        assert.equal(env.count(family, 'any'), 2, 'flow + related, nothing new');
        assert.deepEqual(env.stats(), stats({ packets: 3, lookups: 5, creates: 1, hits_related: 1, related_misses: 1 }));
      });
    });

    test('other protocols, later fragments and truncated headers are counted, not tracked', async (t) => {
      await withDatapath(t, (env) => {
        env.egress(eth(0x0806, Buffer.alloc(28)));
        env.egress(ip(a, b, 132, Buffer.alloc(12)));
        const truncated = ip(a, b, IPPROTO.TCP, tcp(1, 2, SYN));
        env.egress(truncated.subarray(0, truncated.length - 10));
        if (family === 'ipv4') {
          const frag = ip(a, b, IPPROTO.UDP, udp(1, 2));
          frag.writeUInt16BE(0x0010, 14 + 6); // fragment offset 16 (x 8 bytes)
          env.egress(frag);
        } else {
          const frag = ip(a, b, IPPROTO.UDP, udp(1, 2), [44]);
          frag.writeUInt16BE(0x0080, 14 + 40 + 2); // fragment offset 16 (x 8 bytes)
          env.egress(frag);
        }
        assert.equal(env.count(family, 'tcp') + env.count(family, 'any'), 0);
        assert.deepEqual(env.stats(), stats({ packets: 4, skipped: 3, malformed: 1 }));
      });
    });
  });
}

// ---- per-cluster maps -------------------------------------------------------------------

/** skb->mark values spelled out bit by bit (Cilium's encoding, bpf/ctmap.h), not computed. */
const MARK = {
  /** magic 0x2 in bits 8-11, id 7 in bits 0-7 */
  cluster7: 0x0000_0207,
  cluster8: 0x0000_0208,
  cluster9: 0x0000_0209,
  /** ClusterIDMax 511: id 300 = 0x12c, low byte 0x2c in bits 0-7, bit 8 of the id in bit 31 */
  cluster300: 0x8000_022c,
  /** the same without bit 31: id 44 */
  cluster44: 0x0000_022c,
  /** id 7 with bit 31 set: with ClusterIDMax 255 the upper half is identity, so still id 7 */
  cluster7Bit31: 0x8000_0207,
  /** magic nibble 0xa (MARK_MAGIC_PROXY_INGRESS): not a cluster id */
  proxyIngress7: 0x0000_0a07,
  /** magic 0x2 in bits 8-11 with other bits above: 0x1200 & 0x0f00 = 0x0200, still a cluster mark */
  cluster7KeyBits: 0x0000_1207,
} as const;

for (const fam of FAMILIES) {
  const { family, a, b, r } = fam;
  const other = family === 'ipv4' ? 'ipv6' : 'ipv4';
  /** Entries in every CT map of both families: global and the given clusters. */
  const everywhere = (env: Env, clusters: readonly number[]): Record<string, number> =>
    Object.fromEntries(
      (['ipv4', 'ipv6'] as const).flatMap((f) =>
        [0, ...clusters].flatMap((id) => (['tcp', 'any'] as const).map((k) => [`${f}/${k}/${id}`, env.count(f, k, id)])),
      ),
    );
  const only = (counts: Record<string, number>, clusters: readonly number[]): Record<string, number> => {
    const all = Object.fromEntries(
      (['ipv4', 'ipv6'] as const).flatMap((f) => [0, ...clusters].flatMap((id) => (['tcp', 'any'] as const).map((k) => [`${f}/${k}/${id}`, 0]))),
    );
    return { ...all, ...counts };
  };

  describe(`ct_datapath ${family}: per-cluster maps`, () => {
    test('a cluster id from the settings tracks in that cluster\'s inner maps only, RELATED entry included', async (t) => {
      await withDatapath(
        t,
        (env) => {
          const key = fwdKey(a, 41000, b, 80, IPPROTO.TCP, TupleFlag.OUT);
          const s = around(() => env.egress(ip(a, b, IPPROTO.TCP, tcp(41000, 80, SYN))));
          env.ingress(ip(b, a, IPPROTO.TCP, tcp(80, 41000, SYN | ACK)));
          env.ingress(ip(b, a, IPPROTO.TCP, tcp(80, 41000, ACK)));
          const e = env.entry(family, 'tcp', key, 7)!;
          assert.ok(e, 'entry in cluster 7\'s TCP map');
          assert.deepEqual({ packets: e.packets, flags: e.flags }, { packets: 3n, flags: flagsOf('SeenNonSyn') });
          const rel = env.entry(family, 'any', { daddr: a, saddr: b, sport: 0, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.OUT | TupleFlag.RELATED }, 7)!;
          assert.ok(rel, 'related entry in cluster 7\'s any map');
          s.expect(rel.lifetime, SYN_TIMEOUT, 'related entry created with the flow');
          // An ICMP error quoting the flow finds the RELATED entry in the same cluster.
          const req = ip(a, b, IPPROTO.UDP, udp(5353, 53));
          env.egress(req);
          env.ingress(ip(r, a, fam.icmp, icmp(fam.unreach, 0, quote(req))));
          assert.equal(env.entry(family, 'any', fwdKey(a, 5353, b, 53, IPPROTO.UDP, TupleFlag.OUT), 7)!.packets, 1n);
          // The UDP flow rewrote the pair's RELATED entry (packets 1), the error counted on it.
          assert.equal(env.entry(family, 'any', { daddr: a, saddr: b, sport: 0, dport: 0, nexthdr: fam.icmp, flags: TupleFlag.OUT | TupleFlag.RELATED }, 7)!.packets, 2n);
          // The mark names cluster 8, but the configured id wins.
          env.egress(ip(a, b, IPPROTO.UDP, udp(5354, 53)), MARK.cluster8);
          assert.ok(env.entry(family, 'any', fwdKey(a, 5354, b, 53, IPPROTO.UDP, TupleFlag.OUT), 7));
          assert.deepEqual(everywhere(env, [7, 8]), only({ [`${family}/tcp/7`]: 1, [`${family}/any/7`]: 3 }, [7, 8]));
          assert.deepEqual(env.stats(), stats({ packets: 6, lookups: 9, creates: 3, hits_reply: 2, hits_related: 1 }));
        },
        { settings: { clusterId: 7 }, clusters: [7, 8] },
      );
    });

    test('a cluster id in skb->mark (Cilium\'s encoding) picks that cluster; other marks the global maps', async (t) => {
      await withDatapath(
        t,
        (env) => {
          env.egress(ip(a, b, IPPROTO.UDP, udp(6001, 53)), MARK.cluster7);
          env.ingress(ip(b, a, IPPROTO.UDP, udp(53, 6001)), MARK.cluster7);
          const e = env.entry(family, 'any', fwdKey(a, 6001, b, 53, IPPROTO.UDP, TupleFlag.OUT), 7)!;
          assert.equal(e?.packets, 2n, 'request and reply in cluster 7');
          env.egress(ip(a, b, IPPROTO.UDP, udp(6002, 53)), MARK.cluster8);
          assert.ok(env.entry(family, 'any', fwdKey(a, 6002, b, 53, IPPROTO.UDP, TupleFlag.OUT), 8), 'cluster 8');
          env.egress(ip(a, b, IPPROTO.UDP, udp(6003, 53)), MARK.cluster7KeyBits);
          assert.ok(env.entry(family, 'any', fwdKey(a, 6003, b, 53, IPPROTO.UDP, TupleFlag.OUT), 7), 'key bits above the magic nibble are not part of it');
          env.egress(ip(a, b, IPPROTO.UDP, udp(6004, 53)), MARK.cluster7Bit31);
          assert.ok(env.entry(family, 'any', fwdKey(a, 6004, b, 53, IPPROTO.UDP, TupleFlag.OUT), 7), 'bit 31 is identity with ClusterIDMax 255');
          for (const [port, mark] of [
            [6005, 0],
            [6006, MARK.proxyIngress7],
            [6007, 0x0000_0007],
          ] as const) {
            env.egress(ip(a, b, IPPROTO.UDP, udp(port, 53)), mark);
            assert.ok(env.entry(family, 'any', fwdKey(a, port, b, 53, IPPROTO.UDP, TupleFlag.OUT)), `mark 0x${mark.toString(16)}: global map`);
          }
          // Related entries: one per (cluster, address pair): cluster 7, cluster 8, global.
          assert.deepEqual(everywhere(env, [7, 8]), only({ [`${family}/any/7`]: 4, [`${family}/any/8`]: 2, [`${family}/any/0`]: 4 }, [7, 8]));
          assert.deepEqual(env.stats(), stats({ packets: 8, lookups: 15, creates: 7, hits_reply: 1 }));
        },
        { clusters: [7, 8] },
      );
    });

    test('a cluster that has not joined: the packet passes untracked and cluster_map_missing counts it', async (t) => {
      await withDatapath(
        t,
        (env) => {
          env.egress(ip(a, b, IPPROTO.TCP, tcp(42000, 80, SYN)), MARK.cluster9);
          env.ingress(ip(b, a, IPPROTO.UDP, udp(53, 6001)), MARK.cluster9);
          assert.deepEqual(everywhere(env, [7]), only({}, [7]), 'no entry anywhere');
          assert.deepEqual(env.stats(), stats({ packets: 2, cluster_map_missing: 2 }));
          // Packets of a family the daemon does not manage are skipped before any cluster lookup.
          const o = other === 'ipv4' ? { a: '10.0.1.1', b: '10.0.2.2' } : { a: 'fd00::1', b: 'fd00::2' };
          env.egress(ip(o.a, o.b, IPPROTO.UDP, udp(1, 2)), MARK.cluster9);
          assert.deepEqual(env.stats(), stats({ packets: 3, cluster_map_missing: 2, skipped: 1 }));
        },
        { clusters: [7], flags: [`--enable-${other}=false`] },
      );
    });

    test('no per-cluster map pinned at all: the outer maps are one-slot placeholders, every cluster id is missing', async (t) => {
      await withDatapath(
        t,
        (env) => {
          env.egress(ip(a, b, IPPROTO.UDP, udp(6001, 53)));
          env.egress(ip(a, b, IPPROTO.UDP, udp(6002, 53)), MARK.cluster7);
          assert.equal(env.count(family, 'any'), 0, 'the configured cluster 3 wins over no mark: nothing global');
          assert.deepEqual(env.stats(), stats({ packets: 2, cluster_map_missing: 2 }));
        },
        { settings: { clusterId: 3 } },
      );
      await withDatapath(t, (env) => {
        env.egress(ip(a, b, IPPROTO.UDP, udp(6001, 53)), MARK.cluster7);
        env.egress(ip(a, b, IPPROTO.UDP, udp(6002, 53)));
        assert.equal(env.count(family, 'any'), 2, 'unmarked flow + its related entry, global');
        assert.deepEqual(env.stats(), stats({ packets: 2, lookups: 2, creates: 1, cluster_map_missing: 1 }));
      });
    });

    test('--max-connected-clusters=511: cluster 300 from the settings and from the mark\'s bit 31', async (t) => {
      const flags = ['--max-connected-clusters=511'];
      await withDatapath(
        t,
        (env) => {
          env.egress(ip(a, b, IPPROTO.UDP, udp(6001, 53)), MARK.cluster300);
          env.ingress(ip(b, a, IPPROTO.UDP, udp(53, 6001)), MARK.cluster300);
          assert.equal(env.entry(family, 'any', fwdKey(a, 6001, b, 53, IPPROTO.UDP, TupleFlag.OUT), 300)?.packets, 2n);
          // Without bit 31 the id is 44, which has not joined.
          env.egress(ip(a, b, IPPROTO.UDP, udp(6002, 53)), MARK.cluster44);
          assert.deepEqual(everywhere(env, [300]), only({ [`${family}/any/300`]: 2 }, [300]));
          assert.deepEqual(env.stats(), stats({ packets: 3, lookups: 3, creates: 1, hits_reply: 1, cluster_map_missing: 1 }));
        },
        { flags, clusters: [300] },
      );
      await withDatapath(
        t,
        (env) => {
          env.egress(ip(a, b, IPPROTO.TCP, tcp(42000, 80, SYN)));
          assert.ok(env.entry(family, 'tcp', fwdKey(a, 42000, b, 80, IPPROTO.TCP, TupleFlag.OUT), 300));
          assert.deepEqual(everywhere(env, [300]), only({ [`${family}/tcp/300`]: 1, [`${family}/any/300`]: 1 }, [300]));
        },
        { flags, settings: { clusterId: 300 }, clusters: [300] },
      );
    });
  });
}

test('every CT map access of the loaded programs is inlined or a direct call (bench/RESULTS.md, "datapath")', async (t) => {
  // A call site that sees more than one map makes the verifier fall back to the generic
  // bpf_map_*_elem helpers (an indirect call each); one site per map is the design.
  if (!kernelTier(t)) return;
  const { CtDatapath } = require('../../src/datapath/loader') as LoaderModule;
  const kernel = require('../../src/maps/kernel') as KernelModule;
  const { root, cleanup } = privateBpfRoot();
  const maps: BpfMap[] = [];
  let side: DatapathSideMaps | undefined;
  let dp: import('../../src/datapath/loader').CtDatapath | undefined;
  try {
    const cfg = { bpfRoot: root, enableIPv4: true, enableIPv6: true, ctTcpMax: 1024, ctAnyMax: 1024, distributedLru: false };
    for (const family of ['ipv4', 'ipv6'] as const) {
      for (const kind of ['tcp', 'any'] as const) maps.push(kernel.kernelBackend.create(globalCtMapSpec(cfg, family, kind)), kernel.kernelBackend.create(clusterOuterCtMapSpec(cfg, family, kind)));
    }
    side = DatapathSideMaps.open(kernel.kernelBackend, root, datapathSettingsFrom(parseConfig([], {})), SILENT);
    dp = CtDatapath.load({ bpfRoot: root });
    for (const prog of [dp.egress, dp.ingress]) {
      const xlated = execFileSync('bpftool', ['prog', 'dump', 'xlated', 'id', String(prog.id)], { maxBuffer: 1 << 26 }).toString();
      const calls = [...xlated.matchAll(/call ([\w]+)#/g)].map((m) => m[1]);
      assert.deepEqual(
        calls.filter((c) => /^bpf_map_(lookup|update|delete)_elem$/.test(c)),
        [],
        `${prog.name}: generic map helper calls`,
      );
      assert.ok(calls.includes('__htab_map_lookup_elem'), `${prog.name}: inlined hash lookups (calls: ${[...new Set(calls)].join(', ')})`);
      assert.ok(calls.includes('htab_lru_map_update_elem'), `${prog.name}: direct LRU update calls`);
    }
  } finally {
    dp?.close();
    side?.close();
    for (const m of maps) m.close();
    cleanup();
  }
});

test('the objects carry no settings of their own: .rodata is one zeroed struct ct_datapath_config, which the loader writes whole', () => {
  // Cilium's defaults are written once (src/config/defaults.ts): a non-zero byte here would be a
  // second copy in bpf/, a larger .rodata a value the loader does not write (and libbpf refuses).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-rodata-'));
  try {
    for (const name of ['ct_datapath.bpf.o', 'ct_datapath_bench.bpf.o']) {
      const out = path.join(dir, name);
      execFileSync('llvm-objcopy', ['-O', 'binary', '--only-section=.rodata', bpfObjectPath(name), out]);
      assert.deepEqual(fs.readFileSync(out), Buffer.alloc(CT_DATAPATH_CONFIG.size), `${name}: .rodata`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

describe('ct_datapath loader preconditions', () => {
  /** A private bpf-root with what `setup` pins; the loader's error (it must fail), then cleanup and leak checks. */
  async function loadError(t: TestContext, setup: (root: string, keep: (c: { close(): void }) => void) => void, settings?: Partial<DatapathSettings>): Promise<any> {
    if (!kernelTier(t)) return undefined;
    const bpf = require('../../src/sys') as BpfModule;
    const { CtDatapath } = require('../../src/datapath/loader') as LoaderModule;
    const { root, cleanup } = privateBpfRoot();
    const fds = bpfFdCount();
    const objs = bpf.openObjectCount();
    const held: { close(): void }[] = [];
    let error: any;
    try {
      setup(root, (c) => held.push(c));
      try {
        CtDatapath.load({ bpfRoot: root, settings }).close();
      } catch (err) {
        error = err;
      }
      assert.ok(error, 'the load must fail');
      return { error, root };
    } finally {
      for (const c of held) c.close();
      cleanup();
      assertNoFdLeak(fds, t.name);
      assert.equal(bpf.openObjectCount(), objs, `${t.name}: BPF objects left open`);
    }
  }
  const kernel = (): KernelModule['kernelBackend'] => (require('../../src/maps/kernel') as KernelModule).kernelBackend;
  const globals = (root: string, keep: (c: { close(): void }) => void): void => {
    const cfg = { bpfRoot: root, enableIPv4: true, enableIPv6: true, ctTcpMax: 1024, ctAnyMax: 1024, distributedLru: false };
    for (const family of ['ipv4', 'ipv6'] as const) for (const kind of ['tcp', 'any'] as const) keep(kernel().create(globalCtMapSpec(cfg, family, kind)));
  };

  test('no daemon side maps: failed-precondition naming the config map, then the stats map', async (t) => {
    const r1 = await loadError(t, globals);
    if (!r1) return;
    assert.equal(r1.error.code, 'failed-precondition');
    assert.match(r1.error.message, new RegExp(`${r1.root}/tc/globals/ctmapd_datapath_config is not pinned: start ctmapd with --bpf-root=`));
    // Created but never written (a daemon that died in between): all zeros, no settings.
    const r2 = await loadError(t, (root, keep) => {
      globals(root, keep);
      keep(kernel().create(datapathSideMapSpecs(root).config));
    });
    assert.equal(r2.error.code, 'failed-precondition');
    assert.match(r2.error.message, new RegExp(`${r2.root}/tc/globals/ctmapd_datapath_config holds no valid settings \\(clusterIdMax: 0`));
    const r3 = await loadError(t, (root, keep) => {
      globals(root, keep);
      const config = kernel().create(datapathSideMapSpecs(root).config);
      keep(config);
      config.update(Buffer.alloc(4), encodeDatapathSettings(datapathSettingsFrom(parseConfig([], {}))));
    });
    assert.equal(r3.error.code, 'failed-precondition');
    assert.match(r3.error.message, new RegExp(`${r3.root}/tc/globals/ctmapd_ct_stats is not pinned`));
  });

  test('a stats map of another layout: failed-precondition saying what differs', async (t) => {
    const r = await loadError(t, (root, keep) => {
      globals(root, keep);
      const specs = datapathSideMapSpecs(root);
      const config = kernel().create(specs.config);
      keep(config);
      config.update(Buffer.alloc(4), encodeDatapathSettings(datapathSettingsFrom(parseConfig([], {}))));
      keep(kernel().create({ ...specs.stats, valueSize: 96 }));
    });
    if (!r) return;
    assert.equal(r.error.code, 'failed-precondition');
    assert.match(r.error.message, new RegExp(`ctmapd_ct_stats differs from what this build expects \\(value_size 96 -> ${CT_DATAPATH_STATS.size}\\)`));
  });

  test('a CT map not pinned: failed-precondition naming it', async (t) => {
    const r = await loadError(t, (root, keep) => keep(DatapathSideMaps.open(kernel(), root, datapathSettingsFrom(parseConfig([], {})), SILENT)));
    if (!r) return;
    assert.equal(r.error.code, 'failed-precondition');
    assert.match(r.error.message, /cilium_ct4_global, cilium_ct_any4_global not pinned under/);
  });

  test('a cluster id beyond the daemon\'s ClusterIDMax: invalid-argument naming cluster-id', async (t) => {
    const r = await loadError(
      t,
      (root, keep) => {
        globals(root, keep);
        keep(DatapathSideMaps.open(kernel(), root, datapathSettingsFrom(parseConfig([], {})), SILENT));
      },
      { clusterId: 300 },
    );
    if (!r) return;
    assert.equal(r.error.code, 'invalid-argument');
    assert.match(r.error.message, /^cluster-id: 300 is out of range: 1\.\.255/);
  });
});
