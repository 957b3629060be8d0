/**
 * bin/ctmap: parse, run, print, exit. Exit codes: 0 done (also "nothing to detach"),
 * 1 the operation failed (kernel, daemon, missing object...), 2 bad usage (the message
 * names the flag; an unknown --dev or --netns counts as bad usage too).
 */
import { CtmapError } from '../errors';
import { growPipeBuffer } from '../sys/pipe';
import { CliUsageError, parseCli } from './args';
import { resolveBpfRoot } from './bpf-root';
import { CliRpcError, health } from './client';
import { watchMembership } from './cluster-watch';
import { getEntry, runCt } from './ct';
import { gcRun } from './gc';
import { runInfo } from './info';
import { runNat } from './nat';
import { Io, runDatapath } from './datapath';
import { runFate } from './fate';
import { watchEvents } from './events';

// 1 MiB: /proc/sys/fs/pipe-max-size's default, so that it is granted without privileges too.
const BULK_PIPE_BYTES = 1 << 20;

const stdio: Io = {
  out: (text, written) => process.stdout.write(text, written && (() => written())),
  err: (text) => process.stderr.write(text),
  errIsTTY: process.stderr.isTTY === true,
  bulkOutput: () => void growPipeBuffer(1, BULK_PIPE_BYTES),
  outQueued: () => process.stdout.writableLength,
};

/**
 * Runs `ctmap <argv>` and returns the exit code; never throws and never exits (the caller
 * sets process.exitCode, so pending output is flushed).
 */
export async function run(argv: readonly string[], env: NodeJS.ProcessEnv, io: Io = stdio): Promise<number> {
  try {
    const cmd = parseCli(argv, env);
    switch (cmd.kind) {
      case 'ct-list':
      case 'ct-count':
      case 'ct-delete':
      case 'ct-flush':
        return await runCt(cmd, io);
      case 'nat-list':
      case 'nat-flush':
        return await runNat(cmd, io);
      case 'maps':
      case 'stats':
      case 'gc-status':
      case 'cluster-list':
      case 'cluster-create':
      case 'cluster-delete':
        return await runInfo(cmd, io);
      case 'ct-get':
        return await getEntry(cmd, io);
      case 'cluster-watch':
        return await watchMembership(cmd, io);
      case 'gc-run':
        return await gcRun(cmd, io);
      case 'health':
        return await health(cmd, io);
      case 'fate-attach':
      case 'fate-detach':
      case 'fate-status':
      case 'fate-reattach':
        return runFate({ ...cmd, bpfRoot: await resolveBpfRoot(cmd, io) }, env, io);
      case 'events':
        return await watchEvents(cmd, io);
      default: {
        const bpfRoot = await resolveBpfRoot(cmd, io);
        // A --netns child runs this command line again: it gets the answer, not the question.
        const childArgv = cmd.bpfRootFromDaemon ? [...argv, '--bpf-root', bpfRoot] : argv;
        return runDatapath({ ...cmd, bpfRoot }, childArgv, env, io);
      }
    }
  } catch (err) {
    if (err instanceof CliUsageError) {
      if (err.exitCode === 0) io.out(err.message);
      else io.err(`ctmap: ${err.message.trimEnd()}\n`);
      return err.exitCode;
    }
    if (err instanceof CliRpcError) {
      io.err(`ctmap: ${err.message}\n`);
      return 1;
    }
    const e = CtmapError.from(err);
    const hint = e.code === 'permission-denied' ? ' (needs root, or CAP_BPF + CAP_NET_ADMIN)' : '';
    io.err(`ctmap: ${e.message}${hint}\n`);
    return 1;
  }
}

export async function main(): Promise<void> {
  // A reader that went away (`ctmap ct list | head -1`) ends the command quietly, as
  // conntrack does: nothing more can be written, and that is no failure of the command.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  process.exitCode = await run(process.argv.slice(2), process.env);
}
