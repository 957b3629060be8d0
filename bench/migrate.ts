/**
 * Bench "migrate" (issue 6): migrating a pinned 1 Mi-entry TCP4 CT map to 2 Mi entries the
 * way a daemon start does (MapLifecycle.open + complete: `_old` pin, new map, batch copy
 * within the fill plan, pin swap, delta pass, `_old` removed), against, in the same run and
 * on the same data, the C/libbpf baseline `ctscan copy`: create the new map, then
 * lookup_batch + update_batch, nothing else.
 *
 * Every run starts from the same source, prepared the same way for both, untimed: a new
 * 1 Mi map filled by `ctscan fill` (seed 1). ctmapd's migration consumes its map (the pin
 * ends up holding the new one); the C copy's source and destination are unpinned after
 * its run. Preparing both alike matters: creating a map right after large maps were freed
 * is much faster than on a cold page allocator, and the create is part of both timings.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { ctEntryRank } from '../src/maps/ctmap/tables';
import { kernelBackend } from '../src/maps/kernel';
import { MapLifecycle, MigrationStep } from '../src/maps/lifecycle';
import { MapSpec, MapType } from '../src/maps/types';
import {
  BenchContext,
  BenchSection,
  HarnessError,
  Measurement,
  ctscan,
  fmtInt,
  fmtMs,
  fmtRatio,
  machineInfo,
  markdownTable,
  measureRounds,
  privateBpffsDir,
} from './lib';

const FROM = 1 << 20;
const TO = 1 << 21;

export const migrateBench: BenchSection = {
  name: 'migrate',
  title: 'Migration of a 1 Mi-entry TCP4 map to 2 Mi entries vs a C copy (lookup_batch + update_batch)',

  async run(ctx: BenchContext) {
    const dir = privateBpffsDir(ctx);
    const globals = path.join(dir, 'tc', 'globals');
    const baseline = path.join(dir, 'c');
    fs.mkdirSync(globals, { recursive: true });
    fs.mkdirSync(baseline);
    const pin = path.join(globals, 'cilium_ct4_global');
    const cSrc = path.join(baseline, 'src');
    const cDst = path.join(baseline, 'dst');

    const fill = async (p: string): Promise<number> => {
      await ctscan(['create', p, String(FROM)]);
      await ctscan(['fill', p, String(FROM), '1']);
      // An LRU map filled to the brim without CPU placement may evict a few: count what it holds.
      return Number((await ctscan(['scan', p])).entries);
    };
    const spec: MapSpec = { name: 'cilium_ct4_global', type: MapType.LRU_HASH, keySize: 14, valueSize: 56, maxEntries: TO, flags: 0, pinPath: pin };
    const silent = pino({ level: 'silent' });

    const measurements: Measurement[] = [
      {
        label: 'C ctscan copy (create + lookup_batch + update_batch)',
        async run() {
          const cEntries = await fill(cSrc);
          const r = await ctscan(['copy', cSrc, cDst, String(TO)]);
          fs.rmSync(cDst);
          fs.rmSync(cSrc);
          if (Number(r.copied) !== cEntries) throw new HarnessError(`ctscan copy: ${r.copied} copied, the source holds ${cEntries}`);
          const copyMs = Number(r.copy_ns) / 1e6;
          return { ms: Number(r.ns) / 1e6, extra: { copyMs, restMs: copyMs, createMs: (Number(r.ns) - Number(r.copy_ns)) / 1e6, entries: Number(r.copied) } };
        },
      },
      {
        label: 'ctmapd migration (MapLifecycle open + complete)',
        async run() {
          const entries = await fill(pin);
          const at = new Map<MigrationStep, bigint>();
          const lc = new MapLifecycle({ backend: kernelBackend, log: silent, hooks: { step: (s) => void (at.has(s) || at.set(s, process.hrtime.bigint())) } });
          const t0 = process.hrtime.bigint();
          const map = await lc.open(spec, { rank: ctEntryRank });
          await lc.complete();
          const t1 = process.hrtime.bigint();
          try {
            const [report] = lc.reports();
            if (!report || report.outcome !== 'migrated' || report.entriesCopied !== entries || report.entriesDropped !== 0) {
              throw new HarnessError(`migration report: ${JSON.stringify(report)}; the source held ${entries}`);
            }
            if (map.info().maxEntries !== TO || map.count() !== entries) throw new HarnessError(`migrated map: max ${map.info().maxEntries}, ${map.count()} entries`);
          } finally {
            map.close();
            kernelBackend.unpin(pin);
          }
          const span = (a: MigrationStep | 0, b: MigrationStep | 1): number => Number((b === 1 ? t1 : at.get(b)!) - (a === 0 ? t0 : at.get(a)!)) / 1e6;
          const ms = Number(t1 - t0) / 1e6;
          const createMs = span('old-pinned', 'new-created');
          return { ms, extra: { createMs, restMs: ms - createMs, copyMs: span('new-created', 'copied'), deltaMs: span('swapped', 'delta-copied'), entries } };
        },
      },
    ];
    ctx.progress(`migrate: ${fmtInt(FROM)} entries, ${fmtInt(FROM)} -> ${fmtInt(TO)} max_entries`);
    const [c, ours] = await measureRounds(ctx, measurements);
    // The target compares everything but BPF_MAP_CREATE: the same call on both sides, whose
    // duration depends on the kernel allocator's state (it alternates ~60 / ~500 ms from
    // one 2 Mi map to the next even in a plain C loop), not on the code measured.
    const ratio = ours.extra.restMs / c.extra.restMs;
    const table = markdownTable(
      ['measurement', 'median ms', 'without create ms', 'runs', '×C without create', '×C with create', 'create ms', 'copy ms', 'delta ms', 'target', 'result'],
      [
        [c.label, fmtMs(c.medianMs), fmtMs(c.extra.restMs), String(c.samples.length), fmtRatio(1), fmtRatio(1), fmtMs(c.extra.createMs), fmtMs(c.extra.copyMs), '—', '—', '—'],
        [
          ours.label,
          fmtMs(ours.medianMs),
          fmtMs(ours.extra.restMs),
          String(ours.samples.length),
          fmtRatio(ratio),
          fmtRatio(ours.medianMs / c.medianMs),
          fmtMs(ours.extra.createMs),
          fmtMs(ours.extra.copyMs),
          fmtMs(ours.extra.deltaMs),
          '≤ 1.5× C (without create)',
          ratio <= 1.5 ? 'PASS' : 'MISS',
        ],
      ],
    );
    const info = machineInfo();
    const markdown = [
      `Latest run: ${new Date().toISOString()} — \`node dist/bench/run.js migrate\` (also part of \`make bench\`).`,
      '',
      `- Machine: ${info.cpu}, ${info.nproc} CPUs; ${info.kernel}; Node ${info.node}.`,
      `- Source: LRU_HASH cilium_ct4_global, max_entries ${fmtInt(FROM)}, filled by \`ctscan fill\` (seed 1): ${fmtInt(ours.extra.entries)} entries; migrated to max_entries ${fmtInt(TO)}.`,
      `- Runs: ${ctx.warmup} warm-up + ${ctx.runs} measured each, interleaved in rounds; ×C = median / C median. Every run checks the count (and, for ctmapd, the report: all copied, none dropped).`,
      '- Columns are medians over the runs. create: BPF_MAP_CREATE of the 2 Mi map (the kernel preallocates every element); copy: the batch copy (ctmapd also fingerprints every entry for the delta pass); delta: the second pass over the old map (ctmapd only); without create: the whole minus create (C: its copy loop), what the target compares.',
      '',
      table,
    ].join('\n');
    return { text: `${this.title}\n\n${table}\n`, markdown };
  },
};
