/**
 * Per-cluster CT and SNAT maps (facts §1; Cilium's PerClusterCTMapper): for every enabled
 * family, the outer ARRAY_OF_MAPS tables `cilium_per_cluster_ct_{tcp,any}{4,6}` and
 * `cilium_per_cluster_snat_v{4,6}_external`, indexed by cluster id, and per joined cluster
 * one pinned inner map per outer map, `<outer>_<id>`, with the spec of the global map of
 * that type. A cluster's inner maps join the CT and NAT tables, so every RPC, GC pass and
 * the NAT coupling work on them exactly as on the global maps.
 *
 * Order matters because the datapath reads through the outer maps:
 * - create: inner maps pinned and registered first, then their slots written (a program
 *   never finds a slot pointing at a map ctmapd does not serve);
 * - delete: slots emptied first (the datapath stops writing), then the entries flushed
 *   through the GC (every dropped entry becomes a GC event and takes its SNAT mapping with
 *   it), then the maps unregistered, closed and unpinned.
 */
import type { Logger } from 'pino';
import { Errno, isErrno } from '../maps/errors';
import type { MapLifecycle } from '../maps/lifecycle';
import { newPinPath, oldPinPath, openOrCreate } from '../maps/open';
import type { Family } from '../maps/addr';
import { CtKind, CtMapsConfig, MapRef, clusterInnerCtMapSpec, clusterOuterCtMapSpec } from '../maps/ctmap/spec';
import { DEFAULT_CLUSTER_ID_MAX } from '../config/defaults';
import { validateClusterId } from '../maps/cluster-spec';
import { CtTables, ctEntryRank } from '../maps/ctmap/tables';
import { NatMapRef, NatMapsConfig, clusterInnerNatMapSpec, clusterOuterNatMapSpec } from '../maps/nat/spec';
import { MapToOpen, RegisteredMap, openMaps } from '../maps/registry';
import { NatTables, natEntryRank } from '../maps/nat/tables';
import type { BpfMap, MapBackend, MapSpec } from '../maps/types';

export type ClusterMapsConfig = CtMapsConfig & NatMapsConfig;

/** Removes every entry of the given CT maps through the GC (events, SNAT pairs); returns how many. */
export type FlushMaps = (refs: MapRef[]) => Promise<number>;

/** One outer map and what it is for. */
interface Outer {
  readonly family: Family;
  /** undefined: the SNAT outer map of the family. */
  readonly kind?: CtKind;
  readonly map: BpfMap;
}

/** A joined cluster's inner maps. */
export interface ClusterMaps {
  readonly clusterId: number;
  readonly ct: { ref: MapRef; map: BpfMap }[];
  readonly nat: { family: Family; map: BpfMap }[];
}

const KINDS: readonly CtKind[] = ['tcp', 'any'];

/** What identifies an inner map: a CT map ref (with its kind) or a SNAT map ref. */
type InnerRef = MapRef | NatMapRef;

export class ClusterCtMaps {
  readonly clusterIdMax: number;
  readonly #outers: Outer[] = [];
  readonly #clusters = new Map<number, ClusterMaps>();
  readonly #families: Family[];
  #closed = false;

  private constructor(
    private readonly backend: MapBackend,
    private readonly cfg: ClusterMapsConfig,
    private readonly ct: CtTables,
    private readonly nat: NatTables,
    private readonly flush: FlushMaps,
    private readonly log: Logger,
  ) {
    this.clusterIdMax = cfg.clusterIdMax ?? DEFAULT_CLUSTER_ID_MAX;
    this.#families = [...(cfg.enableIPv4 ? ['ipv4' as const] : []), ...(cfg.enableIPv6 ? ['ipv6' as const] : [])];
  }

  /**
   * Opens the outer maps of the enabled families through `lifecycle` (created when absent;
   * replaced, as derived maps, when their size or their inner-map template changed), then
   * picks up the clusters whose inner maps are still pinned from an earlier run (or whose
   * migration a crash interrupted): their inner maps are opened through `lifecycle` too
   * (migrated when the global map of their type changed), registered, and their slots
   * rewritten (a replaced outer map starts empty). Such clusters are "pinned but unclaimed"
   * until a source claims them; see Membership's reconcile. Call lifecycle.complete()
   * afterwards (migrations' delta copies).
   */
  static async open(
    backend: MapBackend,
    lifecycle: MapLifecycle,
    cfg: ClusterMapsConfig,
    ct: CtTables,
    nat: NatTables,
    flush: FlushMaps,
    log: Logger,
  ): Promise<ClusterCtMaps> {
    const self = new ClusterCtMaps(backend, cfg, ct, nat, flush, log.child({ component: 'cluster-maps' }));
    const pinned = (pin: string) => backend.pinnedInfo(pin) ?? backend.pinnedInfo(oldPinPath(pin)) ?? backend.pinnedInfo(newPinPath(pin));
    try {
      await self.#openOuters(lifecycle);
      for (let id = 1; id <= self.clusterIdMax; id++) {
        const inner = self.#innerMaps(id);
        if (!inner.some((m) => pinned(m.spec.pinPath!))) continue;
        self.#register(clusterMaps(id, await openMaps(inner, lifecycle)), new Set());
      }
    } catch (err) {
      self.close();
      throw err;
    }
    if (self.#clusters.size > 0) self.log.info({ clusters: [...self.#clusters.keys()] }, 'per-cluster CT maps found pinned from an earlier run');
    return self;
  }

  /** Ids with inner maps, ascending. */
  ids(): number[] {
    return [...this.#clusters.keys()].sort((a, b) => a - b);
  }

  has(id: number): boolean {
    return this.#clusters.has(id);
  }

  get(id: number): ClusterMaps | undefined {
    return this.#clusters.get(id);
  }

  /** The outer maps (CT then SNAT, per family), for listings. */
  outers(): readonly { family: Family; kind?: CtKind; map: BpfMap }[] {
    return this.#outers;
  }

  /**
   * Creates (or reuses, when pinned) the cluster's inner maps and writes them into the
   * outer maps (Cilium's CreateClusterCTMaps). Idempotent: a joined cluster is returned as
   * it is. Throws INVALID_ARGUMENT naming `field` for an id outside 1..ClusterIDMax.
   */
  create(id: number, field = 'cluster_id'): ClusterMaps {
    validateClusterId(id, this.clusterIdMax, field);
    // After CleanupPerClusterCTMaps the outer maps are gone: a new cluster brings them back.
    this.#ensureOuters();
    const have = this.#clusters.get(id);
    if (have && have.ct.length === 2 * this.#families.length && have.nat.length === this.#families.length) return have;
    if (have) {
      // Part of it was cleaned up (one family): reopen the rest with the missing part.
      this.#clusters.delete(id);
      this.#release(have, () => false);
    }
    return this.#createSync(id);
  }

  /**
   * Removes the cluster (Cilium's DeleteClusterCTMaps): empties its outer slots, flushes
   * its CT maps through the GC, then unregisters, closes and unpins its inner maps.
   * Idempotent: returns undefined when the cluster has no maps, else the number of CT
   * entries dropped with it. Throws INVALID_ARGUMENT for an id outside 1..ClusterIDMax.
   */
  async delete(id: number, field = 'cluster_id'): Promise<number | undefined> {
    validateClusterId(id, this.clusterIdMax, field);
    const cluster = this.#clusters.get(id);
    if (!cluster) {
      // Nothing registered, but pins may be left by a crash between unpins: remove them.
      for (const s of this.#innerSpecs(id)) this.backend.unpin(s.pinPath!);
      return undefined;
    }
    this.#clearSlots(id);
    let dropped: number;
    try {
      dropped = await this.flush(cluster.ct.map((c) => c.ref));
    } catch (err) {
      // Entries that could not be published are not dropped silently: the cluster stays.
      this.#writeSlots(cluster);
      throw err;
    }
    this.#forget(cluster);
    this.log.info({ clusterId: id, dropped }, 'per-cluster CT maps removed');
    return dropped;
  }

  /**
   * Removes every inner and outer map of the selected families (Cilium's
   * CleanupPerClusterCTMaps), flushing the inner maps through the GC first. Returns the
   * number of maps removed (inner and outer, pins that existed).
   */
  async cleanup(ipv4: boolean, ipv6: boolean): Promise<number> {
    const families = new Set<Family>([...(ipv4 ? ['ipv4' as const] : []), ...(ipv6 ? ['ipv6' as const] : [])]);
    let removed = 0;
    for (let id = 1; id <= this.clusterIdMax; id++) {
      const specs = this.#innerSpecs(id, [...families]);
      const cluster = this.#clusters.get(id);
      if (cluster) {
        const ct = cluster.ct.filter((c) => families.has(c.ref.family));
        const nat = cluster.nat.filter((n) => families.has(n.family));
        if (ct.length === 0 && nat.length === 0) continue;
        this.#clearSlots(id, families);
        try {
          await this.flush(ct.map((c) => c.ref));
        } catch (err) {
          this.#writeSlots(cluster);
          throw err;
        }
        const rest = { clusterId: id, ct: cluster.ct.filter((c) => !families.has(c.ref.family)), nat: cluster.nat.filter((n) => !families.has(n.family)) };
        this.#forget({ clusterId: id, ct, nat });
        if (rest.ct.length + rest.nat.length > 0) this.#clusters.set(id, rest);
        removed += ct.length + nat.length;
      } else {
        for (const s of specs) if (this.backend.unpin(s.pinPath!)) removed++;
      }
    }
    // The outer maps of those families, also when this run never opened them (family disabled).
    for (const family of families) {
      for (const spec of [...KINDS.map((kind) => clusterOuterCtMapSpec(this.cfg, family, kind)), clusterOuterNatMapSpec(this.cfg, family)]) {
        const i = this.#outers.findIndex((o) => o.map.spec.name === spec.name);
        if (i >= 0) this.#outers.splice(i, 1)[0].map.close();
        if (this.backend.unpin(spec.pinPath!)) removed++;
      }
    }
    this.log.info({ ipv4, ipv6, removed }, 'per-cluster CT maps cleaned up');
    return removed;
  }

  /** Closes every map this holds (pins stay). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const cluster of this.#clusters.values()) this.#release(cluster, () => false);
    this.#clusters.clear();
    for (const o of this.#outers) o.map.close();
    this.#outers.length = 0;
  }

  /**
   * Start-up: the outer maps through the lifecycle. An outer map only holds references to
   * inner maps ctmapd rewrites, so a stale one is replaced, never migrated. Its inner-map
   * template is invisible in the map's info, so it is probed: a map built from the current
   * inner spec is written into slot 0 (cluster id 0 is never a cluster: the slot is unused)
   * and removed again; EINVAL means the template (e.g. its flags) changed.
   */
  async #openOuters(lifecycle: MapLifecycle): Promise<void> {
    for (const family of this.#families) {
      for (const kind of [...KINDS, undefined]) {
        const spec = kind ? clusterOuterCtMapSpec(this.cfg, family, kind) : clusterOuterNatMapSpec(this.cfg, family);
        let map = await lifecycle.open(spec, { rank: () => 0, derived: true });
        try {
          if (!this.#acceptsInner(map, spec.innerSpec!)) {
            map.close();
            map = lifecycle.replace(spec, 'inner map template differs (type, key/value size or flags)');
          }
        } catch (err) {
          map.close();
          throw err;
        }
        this.#outers.push({ family, kind, map });
      }
    }
  }

  #acceptsInner(outer: BpfMap, inner: MapSpec): boolean {
    // Hash maps' map-in-map check ignores max_entries: a small probe says the same.
    const probe = this.backend.create({ ...inner, name: 'ctmapd_probe', maxEntries: Math.min(inner.maxEntries, 1024), pinPath: undefined });
    const slot0 = u32(0);
    try {
      outer.update(slot0, u32(probe.outerSlotValue()));
      outer.delete(slot0);
      return true;
    } catch (err) {
      if (isErrno(err, Errno.EINVAL)) return false;
      throw err;
    } finally {
      probe.close();
    }
  }

  /** Opens (or creates) the outer maps of the enabled families that are not open. */
  #ensureOuters(): void {
    for (const family of this.#families) {
      for (const kind of [...KINDS, undefined]) {
        if (this.#outers.some((o) => o.family === family && o.kind === kind)) continue;
        const spec = kind ? clusterOuterCtMapSpec(this.cfg, family, kind) : clusterOuterNatMapSpec(this.cfg, family);
        this.#outers.push({ family, kind, map: openOrCreate(this.backend, spec, this.log).map });
      }
    }
  }

  /** Inner maps of cluster `id` for `families` (default: the enabled ones): per family, CT then SNAT. */
  #innerMaps(id: number, families: readonly Family[] = this.#families): MapToOpen<InnerRef>[] {
    return families.flatMap((family) => [
      ...KINDS.map((kind) => ({ ref: { family, kind, clusterId: id }, spec: clusterInnerCtMapSpec(this.cfg, family, kind, id), rank: ctEntryRank })),
      { ref: { family, clusterId: id }, spec: clusterInnerNatMapSpec(this.cfg, family, id), rank: natEntryRank },
    ]);
  }

  /** The specs of #innerMaps. */
  #innerSpecs(id: number, families?: readonly Family[]): MapSpec[] {
    return this.#innerMaps(id, families).map((m) => m.spec);
  }

  /** A cluster joining while the daemon runs: its inner maps opened or created synchronously. */
  #createSync(id: number): ClusterMaps {
    const opened: RegisteredMap<InnerRef>[] = [];
    const created = new Set<BpfMap>();
    try {
      for (const { ref, spec } of this.#innerMaps(id)) {
        const r = openOrCreate(this.backend, spec, this.log);
        if (r.outcome !== 'reused') created.add(r.map);
        opened.push({ ref, map: r.map });
      }
    } catch (err) {
      this.#close(opened.map((o) => o.map), (m) => created.has(m));
      throw err;
    }
    return this.#register(clusterMaps(id, opened), created);
  }

  /**
   * Adds a cluster's opened inner maps to the CT and NAT tables and writes its slots. On
   * failure leaves nothing half-joined: slots emptied, maps unregistered and closed, and
   * the maps in `created` unpinned (pinned maps that were reused keep their entries).
   */
  #register(cluster: ClusterMaps, created: Set<BpfMap>): ClusterMaps {
    const added: ClusterMaps = { clusterId: cluster.clusterId, ct: [], nat: [] };
    try {
      for (const c of cluster.ct) {
        this.ct.add(c);
        added.ct.push(c);
      }
      for (const n of cluster.nat) {
        this.nat.add({ ref: { family: n.family, clusterId: cluster.clusterId }, map: n.map });
        added.nat.push(n);
      }
      this.#writeSlots(cluster);
    } catch (err) {
      this.#clearSlots(cluster.clusterId);
      this.#release(added, (m) => created.has(m));
      this.#close(mapsOf(cluster), (m) => created.has(m));
      throw err;
    }
    this.#clusters.set(cluster.clusterId, cluster);
    return cluster;
  }

  #writeSlots(cluster: ClusterMaps): void {
    const key = u32(cluster.clusterId);
    for (const o of this.#outers) {
      const inner = o.kind
        ? cluster.ct.find((c) => c.ref.family === o.family && c.ref.kind === o.kind)?.map
        : cluster.nat.find((n) => n.family === o.family)?.map;
      if (inner) o.map.update(key, u32(inner.outerSlotValue()));
    }
  }

  #clearSlots(id: number, families?: Set<Family>): void {
    const key = u32(id);
    for (const o of this.#outers) if (!families || families.has(o.family)) o.map.delete(key);
  }

  /** Forgets the given inner maps: unregistered, closed and unpinned. */
  #forget(cluster: ClusterMaps): void {
    this.#clusters.delete(cluster.clusterId);
    this.#release(cluster, () => true);
  }

  /** Takes the cluster's maps out of the CT and NAT tables and closes them; unpins those `unpin` selects. */
  #release(cluster: ClusterMaps, unpin: (map: BpfMap) => boolean): void {
    for (const c of cluster.ct) this.ct.remove(c.ref);
    for (const n of cluster.nat) this.nat.remove({ family: n.family, clusterId: cluster.clusterId });
    this.#close(mapsOf(cluster), unpin);
  }

  /** Closes `maps` (idempotent) and unpins those `unpin` selects. */
  #close(maps: readonly BpfMap[], unpin: (map: BpfMap) => boolean): void {
    for (const map of maps) {
      map.close();
      if (unpin(map) && map.spec.pinPath) this.backend.unpin(map.spec.pinPath);
    }
  }
}

/** Every inner map of a cluster, CT then SNAT. */
function mapsOf(cluster: ClusterMaps): BpfMap[] {
  return [...cluster.ct.map((c) => c.map), ...cluster.nat.map((n) => n.map)];
}

/** A cluster's inner maps, opened in #innerMaps' order, split into its CT and SNAT maps. */
function clusterMaps(clusterId: number, opened: readonly RegisteredMap<InnerRef>[]): ClusterMaps {
  const cluster: ClusterMaps = { clusterId, ct: [], nat: [] };
  for (const { ref, map } of opened) {
    if ('kind' in ref) cluster.ct.push({ ref, map });
    else cluster.nat.push({ family: ref.family, map });
  }
  return cluster;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
}
