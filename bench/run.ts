/**
 * Benchmark runner (`make bench` = `node dist/bench/run.js`): runs the named sections, or
 * all of them, prints each one's table on stdout and rewrites its generated part of
 * bench/RESULTS.md (between its markers; the rest of the file is kept).
 *
 *   node dist/bench/run.js [section ...] [--runs N] [--warmup N] [--no-write]
 *                          [--cpu-prof DIR] [--bpffs DIR] [--list]
 *
 * Exit status: 0 when every section ran, whatever its PASS/MISS verdicts (missing a
 * target is a result to report, not a failure of the harness); 1 on a harness error;
 * 2 on bad arguments; 130/143 when interrupted. Resources (daemon, pinned maps, sockets)
 * are released in every case.
 */
import * as path from 'node:path';
import { ctScan } from './ct-scan';
import { datapathBench } from './datapath';
import { fateBench } from './fate';
import { eventsBench } from './events';
import { gcBench } from './gc';
import { migrateBench } from './migrate';
import { BenchContext, BenchSection, Cleanup, RESULTS_FILE, errText, killCommands, writeResultsSection } from './lib';

/** Every bench, in the order `run.js` with no section names runs them. New benches go here. */
const SECTIONS: readonly BenchSection[] = [ctScan, gcBench, datapathBench, migrateBench, fateBench, eventsBench];

interface Args {
  sections: BenchSection[];
  runs: number;
  warmup: number;
  write: boolean;
  cpuProfDir?: string;
  bpffs: string;
}

class UsageError extends Error {}

function parseArgs(argv: readonly string[]): Args | 'list' {
  const args: Args = { sections: [], runs: 5, warmup: 1, write: true, bpffs: '/sys/fs/bpf' };
  const count = (flag: string, v: string | undefined, lo: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo) throw new UsageError(`${flag}: want an integer >= ${lo}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--list') return 'list';
    else if (a === '--runs') args.runs = count(a, argv[++i], 1);
    else if (a === '--warmup') args.warmup = count(a, argv[++i], 0);
    else if (a === '--no-write') args.write = false;
    else if (a === '--cpu-prof') args.cpuProfDir = path.resolve(argv[++i] ?? '');
    else if (a === '--bpffs') args.bpffs = path.resolve(argv[++i] ?? '');
    else if (a.startsWith('-')) throw new UsageError(`unknown option ${a}`);
    else {
      const s = SECTIONS.find((x) => x.name === a);
      if (!s) throw new UsageError(`unknown section ${a} (have: ${SECTIONS.map((x) => x.name).join(', ')})`);
      if (!args.sections.includes(s)) args.sections.push(s);
    }
  }
  if (args.sections.length === 0) args.sections = [...SECTIONS];
  return args;
}

async function main(): Promise<number> {
  let args: Args | 'list';
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench: ${err.message}\n`);
    return 2;
  }
  if (args === 'list') {
    for (const s of SECTIONS) process.stdout.write(`${s.name}\t${s.title}\n`);
    return 0;
  }
  if (process.getuid?.() !== 0) process.stderr.write('bench: not root: creating kernel maps will likely fail\n');

  const cleanup = new Cleanup();
  const progress = (msg: string) => process.stderr.write(`bench: ${msg}\n`);
  // On a signal: stop the children and drain the cleanup (joining a drain already under
  // way), then exit. A second signal while draining changes nothing.
  let interrupted: number | undefined;
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.on(sig, () => {
      if (interrupted !== undefined) return;
      interrupted = code;
      progress(`${sig}: cleaning up`);
      killCommands();
      void cleanup.drain(progress).finally(() => process.exit(code));
    });
  }

  const ctx: BenchContext = { runs: args.runs, warmup: args.warmup, bpffs: args.bpffs, cleanup, cpuProfDir: args.cpuProfDir, progress };
  let status = 0;
  for (const section of args.sections) {
    try {
      progress(`section ${section.name}: ${section.title}`);
      const result = await section.run(ctx);
      process.stdout.write(`\n${result.text}\n\n`);
      if (args.write) {
        writeResultsSection(RESULTS_FILE, section.name, section.title, result.markdown);
        progress(`wrote the ${section.name} section of ${path.relative(process.cwd(), RESULTS_FILE) || RESULTS_FILE}`);
      }
    } catch (err) {
      // After a signal, the failure is the interruption's doing (daemon stopped under a call).
      if (interrupted !== undefined) progress(`section ${section.name} interrupted`);
      else progress(`section ${section.name} FAILED: ${err instanceof Error && err.stack ? err.stack : errText(err)}`);
      status = 1;
    } finally {
      // Each section's daemon and maps go before the next section starts: benches must
      // not compete for the two cores or for kernel memory.
      await cleanup.drain(progress);
    }
    if (interrupted !== undefined) break;
  }
  return interrupted ?? status;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error && err.stack ? err.stack : errText(err)}\n`);
    process.exit(1);
  },
);
