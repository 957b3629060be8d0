/**
 * Bench "datapath": what bpf/ct_datapath.bpf.c costs per packet, measured by the kernel
 * itself (BPF_PROG_TEST_RUN's `duration`) over crafted IPv4 TCP frames, beside the empty
 * TC program `ctmap_layout_noop` (bpf/.output/ctmap_layout.bpf.o) run the same way, and
 * beside bpf/ct_floor.bpf.c, the least work Cilium's lookup order implies (two lookups,
 * one insert on a miss) on a map of the same size.
 *
 * The maps are the daemon's: the global CT maps at their default sizes, the per-cluster
 * outer maps and the side maps, created and pinned in a private bpffs directory with the
 * daemon's own code, and the datapath is loaded over them with the daemon's loader.
 *
 * Two methods, each applied to the baseline too (see bench/RESULTS.md):
 * - repeat: one test run executes the program REPEAT times back to back on the same
 *   packet; the kernel reports the average. Used for hits, where every repetition does
 *   the same work.
 * - repeat, creates: the bench build of the datapath (bpf/ct_datapath_bench.bpf.c) has a
 *   program that writes a per-run counter into a SYN's source port before the same egress
 *   path, so one test run of REPEAT_CREATES repetitions creates that many flows back to
 *   back; each run gets a new source address. What the write costs is measured beside it:
 *   the same program on an ACK of the established flow (it writes the port back
 *   unchanged), against ct_egress on the same packet.
 * - single: CREATES test runs of repeat=1, each on a new flow (the source port, and the
 *   source address every 60000 flows, or on every packet, change in place in the packet
 *   buffer), summing the kernel's durations. Used for creates, where a repeat would hit
 *   the entry the first repetition created. Each run's duration includes the kernel's
 *   per-run overhead (one clock read, bh disable/enable), which the baseline taken the
 *   same way also pays.
 */
import * as path from 'node:path';
import { CtDatapath } from '../src/datapath/loader';
import type { DatapathSideMaps } from '../src/datapath/side-maps';
import type { CtEventsMode } from '../src/config/defaults';
import { BpfObject, BpfProgram, MappedRing, SK_BUFF_CTX, TestRunContext } from '../src/sys';
import { TCP_FLAGS, ip, tcp } from '../test/helpers/frames';
import { ctMapsConfigOf, pinDaemonMaps } from './daemon-maps';
import { BenchContext, BenchSection, HarnessError, Measured, Measurement, REPO_ROOT, machineInfo, markdownTable, measureRounds, privateBpffsDir } from './lib';

/** Repetitions per test run for the repeat method. */
const REPEAT = 1_000_000;
/** New flows (test runs of repeat=1) per measured run of the single method. */
const CREATES = 20_000;
/**
 * New flows per test run of the repeat method on the bench build: under 65,536 so the
 * build's port counter never repeats a flow within a run, and small enough that every
 * run together stays far below the TCP map's size (no LRU eviction in any figure).
 */
const REPEAT_CREATES = 25_000;
/** The datapath with the bench's programs added (bpf/ct_datapath_bench.bpf.c). */
const BENCH_OBJECT = path.join(REPO_ROOT, 'bpf/.output/ct_datapath_bench.bpf.o');
/** Its program: ct_egress after setting a SYN's source port to a per-run counter. */
const BENCH_PROGRAM = 'ct_bench_egress';
const NOOP_OBJECT = path.join(REPO_ROOT, 'bpf/.output/ctmap_layout.bpf.o');
const NOOP_PROGRAM = 'ctmap_layout_noop';
const FLOOR_OBJECT = path.join(REPO_ROOT, 'bpf/.output/ct_floor.bpf.o');
/** The floor with the bench build's port write (bpf/ct_floor_bench.bpf.c). */
const FLOOR_BENCH_OBJECT = path.join(REPO_ROOT, 'bpf/.output/ct_floor_bench.bpf.o');
const TC_ACT_OK = 0;
/** ct_datapath's verdict: it only observes, tc goes on to the next filter. */
const TC_ACT_UNSPEC = -1;
/** Offsets in the IPv4 TCP frame: source address and source port. */
const SADDR = 14 + 12;
const SPORT = 14 + 20;

interface Row {
  readonly m: Measured;
  readonly method: 'repeat' | 'single';
  readonly target?: number;
  readonly note: string;
}

export const datapathBench: BenchSection = {
  name: 'datapath',
  title: 'Conntrack datapath: kernel ns per packet (BPF_PROG_TEST_RUN) vs an empty TC program',

  async run(ctx: BenchContext) {
    const root = privateBpffsDir(ctx);
    const cfg = ctMapsConfigOf(root);
    /** Each events mode gets its own maps, so that no row's creates fill another's map. */
    const daemonMaps = (r: string, mode: CtEventsMode): DatapathSideMaps => pinDaemonMaps(ctx, r, ['--ct-events', mode]);
    // The default, --ct-events=signals, in `root`; none and all beside it.
    const side = daemonMaps(root, 'signals');
    const dp = CtDatapath.load({ bpfRoot: root });
    ctx.cleanup.add('close datapath', () => dp.close());
    const benchDp = CtDatapath.load({ bpfRoot: root, objectPath: BENCH_OBJECT });
    ctx.cleanup.add('close bench datapath', () => benchDp.close());
    const benchEgress = benchDp.object.program(BENCH_PROGRAM);
    const modes = Object.fromEntries(
      (['none', 'signals', 'all'] as const).map((mode) => {
        const r = path.join(root, `events-${mode}`);
        const sm = daemonMaps(r, mode);
        const d = CtDatapath.load({ bpfRoot: r });
        ctx.cleanup.add(`close datapath ${mode}`, () => d.close());
        const b = CtDatapath.load({ bpfRoot: r, objectPath: BENCH_OBJECT });
        ctx.cleanup.add(`close bench datapath ${mode}`, () => b.close());
        const ringFd = sm.eventRing()!;
        const ring = new MappedRing(ringFd.fd, ringFd.size);
        ctx.cleanup.add(`unmap ring ${mode}`, () => ring.close());
        return [mode, { side: sm, dp: d, bench: b.object.program(BENCH_PROGRAM), ring }];
      }),
    ) as Record<CtEventsMode, { side: DatapathSideMaps; dp: CtDatapath; bench: BpfProgram; ring: MappedRing }>;
    const floorBenchObj = BpfObject.open(FLOOR_BENCH_OBJECT);
    ctx.cleanup.add('close floor bench object', () => floorBenchObj.close());
    floorBenchObj.map('ct_floor_ct4').setMaxEntries(cfg.ctTcpMax);
    const floorBench = floorBenchObj.program('ct_floor_bench_egress');
    floorBenchObj.load([floorBench]);
    const noopObj = BpfObject.open(NOOP_OBJECT);
    ctx.cleanup.add('close noop object', () => noopObj.close());
    const noop = noopObj.program(NOOP_PROGRAM);
    noopObj.load([noop]);
    const floorObj = BpfObject.open(FLOOR_OBJECT);
    ctx.cleanup.add('close floor object', () => floorObj.close());
    floorObj.map('ct_floor_ct4').setMaxEntries(cfg.ctTcpMax);
    const floor = floorObj.program('ct_floor');
    floorObj.load([floor]);

    const run = new TestRunContext(SK_BUFF_CTX.size, 256);
    ctx.cleanup.add('free test run', () => run.close());
    const once = (prog: BpfProgram, repeat: number): number => {
      run.repeat = repeat;
      const want = prog === noop || prog === floor || prog === floorBench ? TC_ACT_OK : TC_ACT_UNSPEC;
      if (prog.testRun(run) !== want) throw new HarnessError(`${prog.name}: verdict is not ${want}`);
      return run.duration;
    };

    // The established flow: 192.0.2.1:40000 -> 198.51.100.2:80, SYN out, SYN-ACK and ACK in.
    const out = (sport: number, f: number): Buffer => ip('192.0.2.1', '198.51.100.2', 6, tcp(sport, 80, f));
    const back = (f: number): Buffer => ip('198.51.100.2', '192.0.2.1', 6, tcp(80, 40000, f));
    const { SYN, ACK } = TCP_FLAGS;
    for (const [prog, frame] of [
      [dp.egress, out(40000, SYN)],
      [dp.ingress, back(SYN | ACK)],
      [dp.ingress, back(ACK)],
      [floor, out(40000, SYN)],
    ] as const) {
      run.setPacket(frame);
      once(prog, 1);
    }
    const established = side.counters();
    if (established.creates !== 1n || established.hits_reply !== 2n) throw new HarnessError(`set-up: ${JSON.stringify(established, (_, v) => String(v))}`);
    // The same established flow in the other modes' maps (mode all writes its NEW record).
    for (const m of Object.values(modes)) {
      for (const [prog, frame] of [
        [m.dp.egress, out(40000, SYN)],
        [m.dp.ingress, back(SYN | ACK)],
        [m.dp.ingress, back(ACK)],
      ] as const) {
        run.setPacket(frame);
        once(prog, 1);
      }
      m.ring.drain(() => undefined);
    }

    /** The repeat method: one test run of REPEAT repetitions of `frame`. */
    const repeated = (prog: BpfProgram, frame: Buffer, counter?: 'hits_established' | 'hits_reply', sm: DatapathSideMaps = side): (() => Promise<{ ms: number; extra: Record<string, number> }>) => async () => {
      run.setPacket(frame);
      const before = counter && sm.counters()[counter];
      const t0 = process.hrtime.bigint();
      const ns = once(prog, REPEAT);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (counter && sm.counters()[counter] - before! !== BigInt(REPEAT)) throw new HarnessError(`${prog.name}: not every repetition was a ${counter}`);
      return { ms, extra: { ns } };
    };

    /** Flows of the single method so far: each gets its own (source address, port). */
    let flows = 0;
    /**
     * The single method: CREATES test runs of repeat=1, each on a new flow: a new source
     * port (and source address every 60000 flows), or with `newPair` a new source address
     * every packet (198.18.0.0/15 and up), so that the pair's RELATED entry is new too.
     */
    const single = (prog: BpfProgram, counter?: 'creates', newPair = false): (() => Promise<{ ms: number; extra: Record<string, number> }>) => async () => {
      run.setPacket(out(1024, SYN));
      const before = counter && side.counters()[counter];
      let sum = 0;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < CREATES; i++, flows++) {
        if (newPair) {
          run.data.writeUInt32BE((0xc6120000 + flows) >>> 0, SADDR);
        } else {
          run.data.writeUInt16BE(1024 + (flows % 60000), SPORT);
          run.data.writeUInt32BE((0xc0000200 + 1 + Math.floor(flows / 60000)) >>> 0, SADDR);
        }
        sum += once(prog, 1);
      }
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (counter && side.counters()[counter] - before! !== BigInt(CREATES)) throw new HarnessError(`${prog.name}: not every packet created a flow`);
      return { ms, extra: { ns: sum / CREATES } };
    };

    /** Test runs of the repeat-creates method so far: each gets its own source address. */
    let createRuns = 0;
    /**
     * The repeat method on the bench build: REPEAT_CREATES new flows back to back (with
     * `ring`, mode all: every NEW record must have found room, and the ring is emptied
     * after the run, outside the timing, as the daemon's reader would).
     */
    const repeatedCreates =
      (prog: BpfProgram = benchEgress, sm: DatapathSideMaps = side, ring?: MappedRing) =>
      async (): Promise<{ ms: number; extra: Record<string, number> }> => {
        const frame = out(1024, SYN);
        frame.writeUInt32BE((0x64400001 + createRuns++) >>> 0, SADDR); // 100.64.0.0/10: no other flow uses it
        run.setPacket(frame);
        const before = sm.counters();
        const t0 = process.hrtime.bigint();
        const ns = once(prog, REPEAT_CREATES);
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        const after = sm.counters();
        if (after.creates - before.creates !== BigInt(REPEAT_CREATES)) throw new HarnessError('bench build: not every repetition created a flow');
        if (after.events_lost !== before.events_lost) throw new HarnessError(`${prog.name}: the ring lost records`);
        if (ring && ring.drain(() => undefined) < REPEAT_CREATES) throw new HarnessError('mode all: fewer NEW records than creates');
        return { ms, extra: { ns } };
      };
    /** The floor's bench build: REPEAT_CREATES floor creates back to back. */
    const floorRepeatedCreates = async (): Promise<{ ms: number; extra: Record<string, number> }> => {
      const frame = out(1024, SYN);
      frame.writeUInt32BE((0x64400001 + createRuns++) >>> 0, SADDR);
      run.setPacket(frame);
      const t0 = process.hrtime.bigint();
      const ns = once(floorBench, REPEAT_CREATES);
      return { ms: Number(process.hrtime.bigint() - t0) / 1e6, extra: { ns } };
    };

    const measurements: Measurement[] = [
      { label: 'empty TC program (ctmap_layout_noop)', run: repeated(noop, out(40000, ACK)) },
      { label: 'floor: two lookups, the second hits (ct_floor)', run: repeated(floor, out(40000, ACK)) },
      { label: 'hit: established flow, egress ACK', run: repeated(dp.egress, out(40000, ACK), 'hits_established') },
      { label: 'hit: reply, ingress ACK', run: repeated(dp.ingress, back(ACK), 'hits_reply') },
      { label: 'hit: established flow, through the bench build\'s port write', run: repeated(benchEgress, out(40000, ACK), 'hits_established') },
      { label: 'empty TC program (ctmap_layout_noop)', run: single(noop) },
      { label: 'floor: two lookups miss, one insert (ct_floor)', run: single(floor) },
      { label: 'create: new flow, egress SYN', run: single(dp.egress, 'creates') },
      { label: 'create: new flow of a new address pair', run: single(dp.egress, 'creates', true) },
      { label: 'create: new flow every repetition (bench build)', run: repeatedCreates() },
      { label: 'floor: new flow every repetition (ct_floor_bench_egress)', run: floorRepeatedCreates },
      { label: 'create, bench build, --ct-events=none', run: repeatedCreates(modes.none.bench, modes.none.side) },
      { label: 'create, bench build, --ct-events=signals (own maps)', run: repeatedCreates(modes.signals.bench, modes.signals.side) },
      { label: 'create, bench build, --ct-events=all (NEW records)', run: repeatedCreates(modes.all.bench, modes.all.side, modes.all.ring) },
      { label: 'hit: established flow, egress ACK, --ct-events=none', run: repeated(modes.none.dp.egress, out(40000, ACK), 'hits_established', modes.none.side) },
      { label: 'hit: established flow, egress ACK, --ct-events=signals', run: repeated(modes.signals.dp.egress, out(40000, ACK), 'hits_established', modes.signals.side) },
      { label: 'hit: established flow, egress ACK, --ct-events=all', run: repeated(modes.all.dp.egress, out(40000, ACK), 'hits_established', modes.all.side) },
    ];
    ctx.progress(`datapath: repeat ${REPEAT.toLocaleString('en-US')} per run; ${CREATES.toLocaleString('en-US')} single runs per create run`);
    const [baseRepeat, floorHit, hitFwd, hitReply, hitWrite, baseSingle, floorCreate, create, createPair, createRepeat, floorRepeat, createNone, createSignals, createAll, hitNone, hitSignals, hitAll] =
      await measureRounds(ctx, measurements);
    /** Issue 13's target for a create with events on: the like-for-like floor + 150 ns. */
    const createTarget = Math.round(floorRepeat.extra.ns + 150);
    const fill = side.counters().creates;

    const rows: Row[] = [
      { m: baseRepeat, method: 'repeat', note: 'baseline: the kernel loop around an empty program' },
      { m: floorHit, method: 'repeat', note: 'the kernel\'s hash lookups alone: reverse misses, forward hits; nothing parsed, nothing written' },
      { m: hitFwd, method: 'repeat', target: 100, note: 'reverse lookup misses, forward lookup hits (ESTABLISHED); lifetime, flags seen, report time and packets/bytes updated, counters' },
      { m: hitReply, method: 'repeat', note: 'reverse lookup hits (REPLY): one lookup' },
      {
        m: hitWrite,
        method: 'repeat',
        note: `ct_bench_egress on the ACK: its source port written back unchanged, then the established hit above; the difference to it, ${(hitWrite.extra.ns - hitFwd.extra.ns).toFixed(1)} ns in this run, estimates what the bench build's packet write adds to the last row`,
      },
      { m: baseSingle, method: 'single', note: 'baseline: one test run per packet, kernel durations summed' },
      { m: floorCreate, method: 'single', note: 'the kernel\'s hash and LRU work alone: both lookups miss, one insert' },
      {
        m: create,
        method: 'single',
        target: 400,
        note: 'both lookups miss; flow entry inserted; the pair\'s RELATED entry found and kept; a new flow every packet',
      },
      { m: createPair, method: 'single', note: 'as above, and the RELATED entry inserted too (a new address pair every packet)' },
      {
        m: createRepeat,
        method: 'repeat',
        note: `ct_bench_egress (bpf/ct_datapath_bench.bpf.c) on a SYN: ${REPEAT_CREATES.toLocaleString('en-US')} new flows back to back per test run (the source port set to a counter in the packet, then ct_egress's path), no syscall between packets; --ct-events=signals, on the maps every row above also fills (hundreds of thousands of entries more than the floor's map, so more cache misses per lookup): not the like-for-like comparison, which is the "own maps" rows below`,
      },
      { m: floorRepeat, method: 'repeat', note: 'bpf/ct_floor_bench.bpf.c: the same port write, then ct_floor\'s two missing lookups and one insert, back to back: the like-for-like floor of the bench build\'s creates' },
      { m: createNone, method: 'repeat', note: 'the bench build over its own maps with --ct-events=none: the ring is never touched' },
      { m: createSignals, method: 'repeat', target: createTarget, note: 'the bench build over its own maps with --ct-events=signals (the default): like the none and all rows, its maps hold only its own creates; target: floor + 150 ns' },
      { m: createAll, method: 'repeat', target: createTarget, note: 'the bench build with --ct-events=all: a 112-byte NEW record reserved and submitted per create (no wakeup), the ring emptied between runs; target: floor + 150 ns' },
      { m: hitNone, method: 'repeat', target: 100, note: 'the established hit with --ct-events=none' },
      { m: hitSignals, method: 'repeat', target: 100, note: 'the established hit with --ct-events=signals' },
      { m: hitAll, method: 'repeat', target: 100, note: 'the established hit with --ct-events=all: a hit writes no record' },
    ];
    const base = (r: Row): Measured => (r.method === 'repeat' ? baseRepeat : baseSingle);
    const ns = (m: Measured): string => m.extra.ns.toFixed(1);
    const table = markdownTable(
      ['measurement', 'method', 'ns/packet (median)', 'baseline ns', 'net of baseline', 'target', 'result', 'runs', 'notes'],
      rows.map((r) => [
        r.m.label,
        r.m === createRepeat || r.m === floorRepeat || r.m === createNone || r.m === createSignals || r.m === createAll
          ? `repeat ${REPEAT_CREATES.toLocaleString('en-US')}`
          : r.method === 'repeat'
            ? `repeat ${REPEAT.toLocaleString('en-US')}`
            : `${CREATES.toLocaleString('en-US')} × repeat 1`,
        ns(r.m),
        r.m === base(r) ? '—' : ns(base(r)),
        r.m === base(r) ? '—' : (r.m.extra.ns - base(r).extra.ns).toFixed(1),
        r.target ? `≤ ${r.target} ns` : '—',
        r.target ? (r.m.extra.ns <= r.target ? 'PASS' : 'MISS') : '—',
        String(r.m.samples.length),
        r.note,
      ]),
    );
    const info = machineInfo();
    const markdown = [
      `Latest run: ${new Date().toISOString()} — \`make bench\` (this section alone: \`node dist/bench/run.js datapath\`).`,
      '',
      `- Machine: ${info.cpu}, ${info.nproc} CPUs, ${info.memory}; ${info.kernel}; Node ${info.node}.`,
      `- Maps: the daemon's defaults (cilium_ct4_global ${cfg.ctTcpMax.toLocaleString('en-US')} entries, any ${cfg.ctAnyMax.toLocaleString('en-US')}), created and pinned by ctmapd's own code; datapath loaded by src/datapath/loader; ct_floor's map sized like cilium_ct4_global. The datapath created ${fill.toLocaleString('en-US')} flows in all (no LRU eviction).`,
      `- Packet: Ethernet + IPv4 + TCP, ${out(40000, ACK).length} bytes. ns/packet is the median over the measured runs of the kernel's figure (repeat: its average over ${REPEAT.toLocaleString('en-US')} repetitions; single: the sum of ${CREATES.toLocaleString('en-US')} durations / ${CREATES.toLocaleString('en-US')}). Targets apply to ns/packet as measured, baseline included.`,
      '',
      table,
    ].join('\n');
    return { text: `${this.title}\n\n${table}\n`, markdown };
  },
};
