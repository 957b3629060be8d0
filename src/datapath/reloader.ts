/**
 * The daemon's DatapathReloader (src/maps/lifecycle.ts): after a migration swapped the
 * pins, every datapath ctmap attached (`ctmap datapath attach`, recorded under
 * <bpf-root>/ctmapd/datapath) is loaded again over the maps now pinned and replaces its
 * own tc filters in place, so no program keeps writing the old maps once the delta copy
 * runs (issue 6: "keep the old map open until datapath programs reference the new one").
 * Cilium instead drops the map and its entries (seed 000).
 *
 * Attachments live in other network namespaces, and a process can only talk tc to its own,
 * so each namespace gets `ctmap datapath reattach` run inside it with
 * `nsenter --net=<namespace>` (only the network namespace changes: bpffs stays visible).
 * A namespace is found by its inode (findNetns in ./records: /run/netns, nsfs mounts, the
 * namespaces of running processes); the daemon prunes the records of vanished ones before
 * it opens its maps, so this rarely meets one.
 *
 * Fate-sharing (`ctmap fate attach`, recorded under <bpf-root>/ctmapd/fate) is attached to
 * cgroups, which belong to no network namespace: its links get the programs loaded over
 * the new maps in this process (reattachFate in ./fate: BPF_LINK_UPDATE, atomic).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { CTMAP_BIN } from '../config/paths';
import { CtmapError } from '../errors';
import type { DatapathReloader, SwappedMap } from '../maps/lifecycle';
import { findNetns, recordedNamespaces } from './records';

const run = promisify(execFile);


/**
 * How long the old programs may still be running on another CPU after their filter was
 * replaced: tc frees a replaced program after an RCU grace period, and a packet in flight
 * finishes within microseconds. Waiting this long before the delta copy reads the old maps
 * leaves a wide margin.
 */
const IN_FLIGHT_MS = 50;

export class AttachedDatapathReloader implements DatapathReloader {
  constructor(
    private readonly bpfRoot: string,
    private readonly log: Logger,
  ) {}

  /**
   * Reattaches every recorded datapath, namespace by namespace. Resolves once all have
   * been replaced. A namespace that no longer exists is skipped (its devices, filters and
   * programs went with it). Rejects when a reattach fails: the migration stays past its
   * commit point and the next start retries (lifecycle.ts).
   */
  async reload(maps: readonly SwappedMap[]): Promise<void> {
    const names = maps.map((m) => m.name);
    const fate = this.reloadFate(names);
    const namespaces = recordedNamespaces(this.bpfRoot);
    if (namespaces.length === 0) {
      if (fate) await new Promise((resolve) => setTimeout(resolve, IN_FLIGHT_MS));
      return;
    }
    for (const inode of namespaces) {
      const nsPath = findNetns(inode);
      if (!nsPath) {
        this.log.warn({ netns: inode }, 'datapath reattach: network namespace is gone; its attachments went with it');
        continue;
      }
      try {
        const { stdout } = await run('nsenter', [`--net=${nsPath}`, '--', process.execPath, CTMAP_BIN, 'datapath', 'reattach', '--bpf-root', this.bpfRoot, '--json'], {
          maxBuffer: 16 << 20,
        });
        const results = JSON.parse(stdout) as Array<{ dev: string; hooks: Array<{ direction: string; progId: number }> }>;
        for (const r of results) {
          this.log.info({ netns: nsPath, dev: r.dev, progIds: r.hooks.map((h) => h.progId), maps: names }, 'datapath reattached over the migrated maps');
        }
      } catch (err) {
        const stderr = (err as { stderr?: string }).stderr?.trim();
        throw new CtmapError('internal', `datapath reattach in ${nsPath} failed: ${stderr || String(err)}`, { cause: err });
      }
    }
    await new Promise((resolve) => setTimeout(resolve, IN_FLIGHT_MS));
  }

  /**
   * Puts fate-sharing programs loaded over the new maps into every recorded link. Returns
   * whether any link was updated. Throws CtmapError internal when that fails (as a failed
   * datapath reattach does: the next start retries).
   */
  private reloadFate(names: readonly string[]): boolean {
    // Loaded only when there is something to reload: it binds libbpf.
    const { hasFateRecords, reattachFate } = require('./fate') as typeof import('./fate');
    if (!hasFateRecords(this.bpfRoot)) return false;
    try {
      const r = reattachFate(this.bpfRoot);
      for (const u of r.updated) {
        this.log.info({ cgroup: u.cgroup, progIds: u.hooks.map((h) => h.progId), maps: names }, 'fate-sharing reattached over the migrated maps');
      }
      if (r.dropped.length > 0) this.log.info({ cgroupIds: r.dropped }, 'dropped the fate records of removed cgroups');
      return r.updated.length > 0;
    } catch (err) {
      throw new CtmapError('internal', `fate-sharing reattach failed: ${(err as Error).message}`, { cause: err });
    }
  }
}
