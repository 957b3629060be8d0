/**
 * The vocabulary between clustermesh membership sources (a config directory, one etcd per
 * remote cluster) and the membership manager that turns claims into per-cluster CT maps.
 *
 * A source never creates maps itself: it reports what it knows ("cluster `name` has id
 * `id`", "cluster `name` is gone") to a MembershipSink. The sink serialises the changes,
 * creates or removes the cluster's inner maps, and publishes join/leave events.
 */

/** Who holds a claim: claims of different owners on one id keep it joined until all are released. */
export type ClaimOwner = 'rpc' | 'clustermesh';

/** What changed a cluster's membership, as shown in WatchMembership events. */
export type ClaimVia = 'rpc' | 'config-dir' | 'etcd' | 'reconcile';

export interface MembershipSink {
  /**
   * `owner` says cluster `name` has id `id` (first sighting, or an id change: the sink then
   * leaves the old id and joins the new one). Idempotent. Resolves once the maps exist;
   * rejects with a CtmapError when the id is invalid or the maps cannot be created (the
   * claim is then not recorded).
   */
  claim(owner: ClaimOwner, name: string, id: number, via: ClaimVia): Promise<void>;
  /** `owner` no longer knows cluster `name`. Idempotent (unknown names are ignored). */
  release(owner: ClaimOwner, name: string, via: ClaimVia): Promise<void>;
}

/** A source of clustermesh membership (config directory + the etcds it names). */
export interface MembershipSource {
  /** Starts watching; resolves once the watches are set up (not necessarily synced). */
  start(): Promise<void>;
  /**
   * True once the source's initial state has been reported: every cluster it knows of at
   * start has been claimed, or has failed to answer within its connect timeout. Stale
   * per-cluster maps are never removed while a source is not synced.
   */
  readonly synced: boolean;
  /** Resolves when `synced` becomes true. */
  whenSynced(): Promise<void>;
  /** Stops every watch and connection. Releases nothing (a stopping daemon keeps its maps). Idempotent. */
  stop(): Promise<void>;
}
