/**
 * The events bench's datapath, as a process of its own (bench/events.ts, ring source): it
 * loads the bench build of the datapath over the maps pinned under argv[2] and, for each
 * line "N" on stdin, runs N new flows through it (BPF_PROG_TEST_RUN, a new source address
 * per test run of at most 16,384), then prints "ok N". A process apart, so that the kernel's
 * creates run beside the daemon's event loop as a datapath on other CPUs does, instead of
 * blocking it.
 */
import * as path from 'node:path';
import * as readline from 'node:readline';
import { CtDatapath } from '../src/datapath/loader';
import { REPO_ROOT } from '../src/config/paths';
import { SK_BUFF_CTX, TestRunContext } from '../src/sys';
import { TCP_FLAGS, ip, tcp } from '../test/helpers/frames';

const BENCH_OBJECT = path.join(REPO_ROOT, 'bpf/.output/ct_datapath_bench.bpf.o');
/** Under 65,536: the build's port counter gives each repetition of a run a new flow. */
const PER_TEST_RUN = 16_384;

const dp = CtDatapath.load({ bpfRoot: process.argv[2], objectPath: BENCH_OBJECT });
const prog = dp.object.program('ct_bench_egress');
const run = new TestRunContext(SK_BUFF_CTX.size, 256);
let testRuns = 0;

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const count = Number(line);
  for (let done = 0; done < count; ) {
    const n = Math.min(PER_TEST_RUN, count - done);
    // 100.64.0.0/10, a new source address per test run: nothing else uses it.
    const frame = ip('100.64.0.1', '198.51.100.2', 6, tcp(1024, 80, TCP_FLAGS.SYN));
    frame.writeUInt32BE((0x64400001 + testRuns++) >>> 0, 14 + 12);
    run.setPacket(frame);
    run.repeat = n;
    prog.testRun(run);
    done += n;
  }
  process.stdout.write(`ok ${count}\n`);
}).on('close', () => {
  run.close();
  dp.close();
});
