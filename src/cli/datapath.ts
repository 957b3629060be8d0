/**
 * `ctmap datapath attach | detach | status | reattach | prune`: runs src/datapath/attach.ts in the target
 * network namespace and prints what happened. `--netns NAME` re-executes this same
 * command under `nsenter --net=/run/netns/NAME`: only the network namespace changes, so
 * the bpffs mounted under /sys/fs/bpf stays visible (`ip netns exec` would remount /sys
 * in a new mount namespace and hide it).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CTMAP_BIN } from '../config/paths';
import type { AttachResult, DetachResult, StatusRecord } from '../datapath/attach';
import { PrunedRecord, pruneVanishedNamespaces } from '../datapath/records';
import { CliUsageError, type CliCommand } from './args';

type DatapathCommand = Extract<CliCommand, { kind: `datapath-${string}` }>;

/** Set on the re-executed child: it must find itself in the namespace, or fail (no loop). */
const REEXEC_ENV = 'CTMAP_NETNS_REEXEC';
/** Set to 1 (tests): fail when a bpf fd or object is still open after the command. */
export const CHECK_LEAKS_ENV = 'CTMAP_CHECK_LEAKS';

export interface Io {
  /**
   * Standard output; a Buffer holds UTF-8 text (`ct list -o json|jsonl` writes its bytes as
   * they are). false: the text is buffered beyond the stream's high-water mark
   * (process.stdout.write's answer). `written`, if given, is called once the text has
   * left this process (or failed to), so that its Buffer may be filled again.
   */
  out(text: string | Buffer, written?: () => void): unknown;
  err(text: string): void;
  /** stderr is a terminal: long operations show progress there (src/cli/progress.ts). */
  readonly errIsTTY?: boolean;
  /**
   * Called before a command writes a whole map (`ct list`, `nat list`): the process's
   * stdout grows its pipe buffer (src/sys/pipe.ts). Absent where output is captured.
   */
  bulkOutput?(): void;
  /**
   * Bytes given to out() that have not left this process yet (stdout's writableLength): a
   * bulk writer keeps this bounded. Absent where out() takes the text at once.
   */
  outQueued?(): number;
}

/**
 * Runs a datapath command; returns the exit code. When `--netns` names a namespace this
 * process is not in, runs `nsenter --net=/run/netns/NAME -- node bin/ctmap <argv>` and
 * returns its exit code. Throws CliUsageError (--netns: no such namespace) and what
 * attach.ts throws (CtmapError invalid-argument on field "dev", failed-precondition, ...).
 */
export function runDatapath(cmd: DatapathCommand, argv: readonly string[], env: NodeJS.ProcessEnv, io: Io): number {
  // Records and pins only, in no namespace in particular: no libbpf, no nsenter.
  if (cmd.kind === 'datapath-prune') return runPrune(cmd, io);
  if (cmd.netns !== undefined) {
    const target = path.join('/run/netns', cmd.netns);
    let targetIno: number;
    try {
      targetIno = fs.statSync(target).ino;
    } catch {
      throw new CliUsageError(`--netns: no network namespace "${cmd.netns}" (${target} does not exist; see ip netns list)`, 2, '--netns');
    }
    if (fs.statSync('/proc/self/ns/net').ino !== targetIno) {
      if (env[REEXEC_ENV] === cmd.netns) throw new Error(`nsenter --net=${target} did not switch the network namespace`);
      const child = spawnSync('nsenter', [`--net=${target}`, '--', process.execPath, CTMAP_BIN, ...argv], {
        stdio: 'inherit',
        env: { ...env, [REEXEC_ENV]: cmd.netns },
      });
      if (child.error) throw new Error(`cannot run nsenter (util-linux) to enter ${target}: ${child.error.message}`);
      return child.status ?? 1;
    }
  }
  // Loaded only here: it binds libbpf, which `ctmap --help` and the gRPC commands do not need.
  const attach = require('../datapath/attach') as typeof import('../datapath/attach');
  const where = cmd.netns === undefined ? '' : `, netns ${cmd.netns}`;
  let text: string;
  try {
    text = datapathCommand(attach, cmd, where);
  } catch (err) {
    reportLeaks(env, io);
    // attach.ts names its field "dev"; here that is the flag, in the namespace it was looked up in.
    if (err instanceof Error && (err as { field?: string }).field === 'dev') {
      throw new CliUsageError(`--dev: ${err.message.replace('this network namespace', cmd.netns === undefined ? 'this network namespace' : `network namespace ${cmd.netns}`)}`, 2, '--dev');
    }
    throw err;
  }
  io.out(text);
  return reportLeaks(env, io) ? 1 : 0;
}

/**
 * `ctmap datapath prune`: removes the records of vanished network namespaces
 * (pruneVanishedNamespaces) and prints them. Exit 1 when this process cannot tell which
 * namespaces are gone (not in the initial pid namespace).
 */
function runPrune(cmd: Extract<DatapathCommand, { kind: 'datapath-prune' }>, io: Io): number {
  const r = pruneVanishedNamespaces(cmd.bpfRoot);
  if ('refused' in r) {
    io.err(`ctmap: datapath prune: nothing removed: ${r.refused}\n`);
    return 1;
  }
  io.out(cmd.json ? `${JSON.stringify(r.pruned)}\n` : formatPrune(r.pruned, cmd.bpfRoot));
  return 0;
}

/** Human-readable prune result. */
export function formatPrune(pruned: readonly PrunedRecord[], bpfRoot = ''): string {
  if (pruned.length === 0) return `nothing to prune: every network namespace with a record under ${bpfRoot}/ctmapd/datapath still exists\n`;
  const lines = pruned.map((p) => `pruned netns inode ${p.netns} ifindex ${p.ifindex} (the namespace is gone): unpinned ${p.pins.length === 0 ? 'nothing' : p.pins.join(', ')}`);
  return `${lines.join('\n')}\n`;
}

/**
 * With CTMAP_CHECK_LEAKS=1 (the e2e tests run the real command line so): says on stderr
 * when a bpf fd or object opened by the command is still open. Returns whether it did.
 */
export function reportLeaks(env: NodeJS.ProcessEnv, io: Io): boolean {
  if (env[CHECK_LEAKS_ENV] !== '1') return false;
  const bpf = require('../sys') as typeof import('../sys');
  const fds = bpf.openFdCount();
  const objects = bpf.openObjectCount();
  if (fds === 0 && objects === 0) return false;
  io.err(`ctmap: leak: ${fds} bpf fd(s) and ${objects} bpf object(s) still open after the command\n`);
  return true;
}

function datapathCommand(attach: typeof import('../datapath/attach'), cmd: Exclude<DatapathCommand, { kind: 'datapath-prune' }>, where: string): string {
  switch (cmd.kind) {
    case 'datapath-attach': {
      const r = attach.attachDatapath({ bpfRoot: cmd.bpfRoot, dev: cmd.dev, settings: { clusterId: cmd.clusterId } });
      return cmd.json ? `${JSON.stringify(r)}\n` : formatAttach(r, where);
    }
    case 'datapath-detach': {
      const r = attach.detachDatapath({ bpfRoot: cmd.bpfRoot, dev: cmd.dev });
      return cmd.json ? `${JSON.stringify(r)}\n` : formatDetach(r, where, cmd.bpfRoot);
    }
    case 'datapath-reattach': {
      const r = attach.reattachDatapaths(cmd.bpfRoot);
      if (cmd.json) return `${JSON.stringify(r)}\n`;
      return r.length === 0 ? `nothing to reattach${where}\n` : r.map((a) => formatAttach(a, where)).join('');
    }
    case 'datapath-status': {
      const r = attach.datapathStatus(cmd.bpfRoot);
      return cmd.json ? `${JSON.stringify(r)}\n` : formatStatus(r, cmd.bpfRoot);
    }
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** Human-readable attach result. */
export function formatAttach(r: AttachResult, where = ''): string {
  const target = r.settings.clusterId === 0 ? 'global CT maps' : `CT maps of cluster ${r.settings.clusterId}`;
  const lines = [`attached ct_ingress/ct_egress to ${r.dev} (ifindex ${r.ifindex}${where}), tracking into the ${target}`];
  for (const h of r.hooks) {
    lines.push(`  ${h.direction.padEnd(7)} handle ${hex(h.handle)} pref ${h.priority} prog id ${h.progId}${h.replaced ? " (replaced ctmap's previous filter)" : ''}`);
  }
  if (r.droppedStaleRecord) lines.push('  an earlier record whose filters were all gone was dropped');
  lines.push(...pruned(r.prunedDevices));
  lines.push(
    r.createdQdisc
      ? '  clsact qdisc: created by this attach (detach removes it if nothing else is attached)'
      : r.ownsQdisc
        ? '  clsact qdisc: created by an earlier ctmap attach'
        : '  clsact qdisc: was already there (detach leaves it)',
  );
  return `${lines.join('\n')}\n`;
}

/** Human-readable detach result. */
export function formatDetach(r: DetachResult, where = '', bpfRoot = ''): string {
  if (!r.attached) {
    const text = `nothing to detach: ctmap has no datapath attached to ${r.dev} (ifindex ${r.ifindex}${where}; no record under ${bpfRoot}/ctmapd/datapath)`;
    return `${[text, ...pruned(r.prunedDevices)].join('\n')}\n`;
  }
  const lines = [`detached from ${r.dev} (ifindex ${r.ifindex}${where})`];
  const outcome = { removed: 'removed', gone: 'already gone', foreign: 'another program is there now: left in place' } as const;
  for (const h of r.hooks) lines.push(`  ${h.direction.padEnd(7)} handle ${hex(h.handle)} pref ${h.priority} prog id ${h.progId}: ${outcome[h.outcome]}`);
  const qdisc = {
    removed: 'removed (ctmap created it and nothing else was attached)',
    kept: `kept: ${r.otherFilters} other filter(s) still attached`,
    'not-ours': 'left in place (it was there before ctmap attached)',
    gone: 'already gone',
  } as const;
  lines.push(`  clsact qdisc: ${qdisc[r.qdisc]}`, ...pruned(r.prunedDevices));
  return `${lines.join('\n')}\n`;
}

function pruned(ifindexes: readonly number[]): string[] {
  return ifindexes.length === 0 ? [] : [`  removed the records of vanished devices (ifindex ${ifindexes.join(', ')}) in this namespace`];
}

/** Human-readable status. */
export function formatStatus(records: readonly StatusRecord[], bpfRoot = ''): string {
  if (records.length === 0) return `no datapath attached by ctmap (no records under ${bpfRoot}/ctmapd/datapath)\n`;
  const lines: string[] = [];
  for (const r of records) {
    const ns = r.here
      ? 'this netns'
      : r.netnsName
        ? `netns ${r.netnsName}`
        : r.netnsGone
          ? `netns inode ${r.netns}, NAMESPACE GONE (ctmap datapath prune removes the record)`
          : `netns inode ${r.netns} (unnamed)`;
    const gone = r.here && r.dev === undefined ? ', DEVICE GONE (the next attach or detach here removes the record)' : '';
    lines.push(`${r.dev ?? `ifindex ${r.ifindex}`} (${r.here ? `ifindex ${r.ifindex}, ` : ''}${ns})${r.ownsQdisc ? ', clsact qdisc created by ctmap' : ''}${gone}`);
    for (const h of r.hooks) {
      const state = h.state === undefined ? '' : h.state === 'ours' ? ': attached' : h.state === 'gone' ? ': GONE' : ': REPLACED by another program';
      lines.push(`  ${h.direction.padEnd(7)} handle ${hex(h.handle)} pref ${h.priority} prog id ${h.progId}${state}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
