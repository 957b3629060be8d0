/**
 * `ctmap fate attach | detach | status | reattach`: runs src/datapath/fate.ts and prints
 * what happened. cgroups are not per network namespace, so unlike `ctmap datapath` there
 * is no --netns: the command acts where it runs.
 */
import type { FateAttachResult, FateDetachResult, FateStatusRecord } from '../datapath/fate';
import { CliUsageError, type CliCommand } from './args';
import { Io, reportLeaks } from './datapath';

type FateCommand = Extract<CliCommand, { kind: `fate-${string}` }>;

/**
 * Runs a fate command; returns the exit code. Throws CliUsageError for a --cgroup that is
 * not a cgroup2 directory, and what fate.ts throws (failed-precondition, BpfSyscallError).
 */
export function runFate(cmd: FateCommand, env: NodeJS.ProcessEnv, io: Io): number {
  // Loaded only here: it binds libbpf, which `ctmap --help` and the gRPC commands do not need.
  const fate = require('../datapath/fate') as typeof import('../datapath/fate');
  let text: string;
  try {
    text = fateCommand(fate, cmd);
  } catch (err) {
    reportLeaks(env, io);
    if (err instanceof Error && (err as { field?: string }).field === 'cgroup') throw new CliUsageError(`--cgroup: ${err.message}`, 2, '--cgroup');
    throw err;
  }
  io.out(text);
  return reportLeaks(env, io) ? 1 : 0;
}

function fateCommand(fate: typeof import('../datapath/fate'), cmd: FateCommand): string {
  switch (cmd.kind) {
    case 'fate-attach': {
      const r = fate.attachFate({ bpfRoot: cmd.bpfRoot, cgroup: cmd.cgroup, clusterId: cmd.clusterId });
      return cmd.json ? `${JSON.stringify(r)}\n` : formatFateAttach(r);
    }
    case 'fate-detach': {
      const r = fate.detachFate({ bpfRoot: cmd.bpfRoot, cgroup: cmd.cgroup });
      return cmd.json ? `${JSON.stringify(r)}\n` : formatFateDetach(r, cmd.bpfRoot);
    }
    case 'fate-status': {
      const r = fate.fateStatus(cmd.bpfRoot);
      return cmd.json ? `${JSON.stringify(r)}\n` : formatFateStatus(r, cmd.bpfRoot);
    }
    case 'fate-reattach': {
      const r = fate.reattachFate(cmd.bpfRoot);
      if (cmd.json) return `${JSON.stringify(r)}\n`;
      const lines = r.updated.map((a) => formatFateAttach(a).trimEnd());
      if (r.dropped.length > 0) lines.push(`dropped the records of removed cgroups (id ${r.dropped.join(', ')})`);
      return lines.length === 0 ? 'nothing to reattach\n' : `${lines.join('\n')}\n`;
    }
  }
}

/** Human-readable attach result; says when the event ring is only a placeholder. */
export function formatFateAttach(r: FateAttachResult): string {
  const maps = r.clusterId === 0 ? 'the global CT maps' : `the global CT maps and those of cluster ${r.clusterId}`;
  const lines = [`fate-sharing attached to ${r.cgroup} (cgroup id ${r.cgroupId}): sockets there expire their entries in ${maps} at close`];
  for (const h of r.hooks) lines.push(`  ${h.hook.padEnd(12)} link id ${h.linkId} prog id ${h.progId}${h.replaced ? " (replaced ctmap's previous program in place)" : ''}`);
  if (r.eventsRing === 'placeholder') {
    lines.push('  events ring: ctmapd_ct_events is not pinned by the daemon yet: CLOSE events go to a private one-page placeholder ring that nobody reads');
  }
  return `${lines.join('\n')}\n`;
}

export function formatFateDetach(r: FateDetachResult, bpfRoot = ''): string {
  if (!r.attached) return `nothing to detach: ctmap has no fate-sharing attached to ${r.cgroup} (no record under ${bpfRoot}/ctmapd/fate)\n`;
  const lines = [`fate-sharing detached from ${r.cgroup} (cgroup id ${r.cgroupId})`];
  for (const h of r.hooks) lines.push(`  ${h.hook.padEnd(12)} link id ${h.linkId}: ${h.outcome === 'removed' ? 'detached' : 'already gone'}`);
  return `${lines.join('\n')}\n`;
}

export function formatFateStatus(records: readonly FateStatusRecord[], bpfRoot = ''): string {
  if (records.length === 0) return `no fate-sharing attached by ctmap (no records under ${bpfRoot}/ctmapd/fate)\n`;
  const lines: string[] = [];
  for (const r of records) {
    const where = r.cgroup ?? (r.hooks.some((h) => h.state === 'attached') ? 'path not visible here' : 'CGROUP GONE (the next attach or reattach drops the record)');
    lines.push(`cgroup id ${r.cgroupId} (${where})${r.clusterId ? `, cluster ${r.clusterId}` : ''}`);
    for (const h of r.hooks) lines.push(`  ${h.hook.padEnd(12)} link id ${h.linkId} prog id ${h.progId}: ${h.state === 'attached' ? 'attached' : 'GONE'}`);
  }
  return `${lines.join('\n')}\n`;
}
