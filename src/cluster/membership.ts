/**
 * Cluster membership: turns claims ("cluster `name` has id N", from the ClusterCTMaps RPCs
 * or the clustermesh sources) into per-cluster maps, and publishes every join and leave on
 * one multicast stream (WatchMembership).
 *
 * - An id is joined while at least one claim names it; the first claim creates its maps
 *   and emits JOIN, the last release removes them (flushing their entries through the GC)
 *   and emits LEAVE with the number of CT entries dropped.
 * - A claim that changes a cluster's id joins the new id, then releases the old one.
 * - Changes are applied one at a time, in arrival order, so a join and a leave of one id
 *   can never interleave.
 * - Reconcile (only when clustermesh sources are configured): clusters whose maps were
 *   found pinned at start but that no claim names are removed after a grace period that
 *   starts once every source has synced — never immediately, never while a source syncs.
 */
import { Observable, Subject } from 'rxjs';
import type { Logger } from 'pino';
import { CtmapError } from '../errors';
import { validateClusterId } from '../maps/cluster-spec';
import type { ClusterCtMaps } from './cluster-maps';
import type { ClaimOwner, ClaimVia, MembershipSink, MembershipSource } from './membership-types';

export interface MembershipEvent {
  readonly kind: 'join' | 'leave';
  readonly clusterId: number;
  /** The claiming cluster name ("" when the RPC or reconcile acted on an id alone). */
  readonly clusterName: string;
  readonly via: ClaimVia;
  /** leave: CT entries removed with the cluster's maps (each published as a GC event). */
  readonly dropped: number;
}

interface Claim {
  readonly owner: ClaimOwner;
  readonly name: string;
  id: number;
}

export class Membership implements MembershipSink {
  readonly #events = new Subject<MembershipEvent>();
  /** Claims by claimKey(). */
  readonly #claims = new Map<string, Claim>();
  #queue: Promise<unknown> = Promise.resolve();
  #reconcileTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(
    readonly maps: ClusterCtMaps,
    private readonly log: Logger,
  ) {}

  /** Join and leave events, live (hot, multicast). */
  events(): Observable<MembershipEvent> {
    return this.#events.asObservable();
  }

  /** Joined cluster ids with the names that claim them. */
  claimsById(): Map<number, string[]> {
    const out = new Map<number, string[]>();
    for (const c of this.#claims.values()) out.set(c.id, [...(out.get(c.id) ?? []), c.name]);
    return out;
  }

  claim(owner: ClaimOwner, name: string, id: number, via: ClaimVia): Promise<void> {
    return this.#serial(async () => {
      validateClusterId(id, this.maps.clusterIdMax, 'cluster_id');
      const key = claimKey(owner, name, id);
      const existing = this.#claims.get(key);
      if (existing?.id === id) {
        this.maps.create(id); // idempotent; recreates maps removed behind our back
        return;
      }
      const wasJoined = this.#claimed(id);
      this.maps.create(id);
      const oldId = existing?.id;
      this.#claims.set(key, { owner, name, id });
      if (!wasJoined) this.#emit({ kind: 'join', clusterId: id, clusterName: name, via, dropped: 0 });
      this.log.info({ owner, name, clusterId: id, previousId: oldId, via }, oldId ? 'cluster moved to a new id' : 'cluster claimed');
      if (oldId !== undefined && !this.#claimed(oldId)) await this.#leave(oldId, name, via);
    });
  }

  release(owner: ClaimOwner, name: string, via: ClaimVia): Promise<void> {
    return this.#serial(async () => {
      // RPC claims are never released by name: DeleteClusterCTMaps uses forceLeave.
      const key = `${owner}/${name}`;
      const existing = this.#claims.get(key);
      if (!existing) return;
      this.#claims.delete(key);
      this.log.info({ owner, name, clusterId: existing.id, via }, 'cluster released');
      if (!this.#claimed(existing.id)) await this.#leave(existing.id, name, via);
    });
  }

  /**
   * Removes cluster `id` whatever claims it (DeleteClusterCTMaps): drops its claims and
   * its maps. Returns the CT entries dropped, or undefined when it had no maps.
   */
  forceLeave(id: number, via: ClaimVia): Promise<number | undefined> {
    return this.#serial(async () => {
      validateClusterId(id, this.maps.clusterIdMax, 'cluster_id');
      const name = this.#dropClaims(id);
      if (!this.maps.has(id)) {
        await this.maps.delete(id); // removes stray pins; idempotent
        return undefined;
      }
      return this.#leave(id, name, via);
    });
  }

  /** CleanupPerClusterCTMaps: removes every inner and outer map of the families; claims on clusters that are gone entirely are dropped. */
  cleanup(ipv4: boolean, ipv6: boolean): Promise<number> {
    return this.#serial(async () => {
      const before = new Set(this.maps.ids());
      const removed = await this.maps.cleanup(ipv4, ipv6);
      for (const id of before) {
        if (this.maps.has(id)) continue;
        this.#emit({ kind: 'leave', clusterId: id, clusterName: this.#dropClaims(id), via: 'rpc', dropped: 0 });
      }
      return removed;
    });
  }

  /**
   * Starts the reconcile of clusters found pinned at start: waits for every source to
   * sync, then `graceMs`, then removes the ones nobody claims. No-op without sources.
   */
  reconcileAfterSync(sources: readonly MembershipSource[], graceMs: number): void {
    if (sources.length === 0) return;
    const stale = () => this.maps.ids().filter((id) => !this.#claimed(id));
    if (stale().length === 0) return;
    this.log.info({ clusters: stale(), graceMs }, 'reconcile: clusters pinned from an earlier run wait for a claim; unclaimed ones are removed after the sources sync and the grace period');
    void Promise.all(sources.map((s) => s.whenSynced())).then(() => {
      if (this.#closed) return;
      this.#reconcileTimer = setTimeout(() => {
        void this.#serial(async () => {
          for (const id of stale()) {
            const dropped = await this.#leave(id, '', 'reconcile');
            this.log.warn({ clusterId: id, dropped }, 'reconcile: removed the maps of a cluster no source claims');
          }
        }).catch((err: unknown) => this.log.error({ err }, 'reconcile failed'));
      }, graceMs);
      this.#reconcileTimer.unref();
    });
  }

  /** Ends the event stream and the reconcile timer; maps stay (a restart keeps them). */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#reconcileTimer);
    this.#events.complete();
  }

  /** Removes every claim on `id`; returns the first claiming name ("" when none). */
  #dropClaims(id: number): string {
    let name: string | undefined;
    for (const [key, c] of this.#claims) {
      if (c.id !== id) continue;
      name ??= c.name;
      this.#claims.delete(key);
    }
    return name ?? '';
  }

  #claimed(id: number): boolean {
    for (const c of this.#claims.values()) if (c.id === id) return true;
    return false;
  }

  async #leave(id: number, name: string, via: ClaimVia): Promise<number> {
    const dropped = (await this.maps.delete(id)) ?? 0;
    this.#emit({ kind: 'leave', clusterId: id, clusterName: name, via, dropped });
    return dropped;
  }

  #emit(e: MembershipEvent): void {
    if (!this.#closed) this.#events.next(e);
  }

  /** Runs `fn` after every change queued before it; its failure fails only its caller. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new CtmapError('unavailable', 'membership: shutting down'));
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

/**
 * Claims are keyed by owner and cluster name; the RPCs know no names, so an RPC claim is
 * keyed by its id (CreateClusterCTMaps twice for one id is one claim).
 */
function claimKey(owner: ClaimOwner, name: string, id: number): string {
  return owner === 'rpc' ? `rpc/#${id}` : `${owner}/${name}`;
}
