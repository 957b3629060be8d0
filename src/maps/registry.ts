/**
 * The registry shape the CT and NAT map tables (ctmap/tables.ts, nat/tables.ts) are built
 * on: the open maps of one family of tables, keyed by their ref, with the global maps
 * (cluster 0) opened at start and a joined cluster's inner maps added and removed by
 * src/cluster. It also holds what both tables do the same way: open the global maps with
 * close-on-failure, select a map for a request (cluster id check, NOT_FOUND wording), read
 * one in batches while it may be taken away (liveCursor) and delete packed keys.
 */
import type { Logger } from 'pino';
import { CtmapError, notFound } from '../errors';
import { DEFAULT_CLUSTER_ID_MAX } from '../config/defaults';
import { validateClusterId } from './cluster-spec';
import type { MapOpener } from './lifecycle';
import type { RankFn } from './migrate';
import { openOrCreate } from './open';
import type { Batch, BatchCursor, BpfMap, MapBackend, MapSpec } from './types';

/** What every registered map is: its ref (cluster 0: a global map) and the live map. */
export interface RegisteredMap<Ref> {
  readonly ref: Ref;
  readonly map: BpfMap;
}

export interface MapRegistryOptions<Ref> {
  /** A string that identifies `ref` (two refs with one key are one map). */
  readonly key: (ref: Ref) => string;
  /** How messages name the map of `ref` ("tcp4 cluster 3 CT map", "snat6 NAT map"). */
  readonly label: (ref: Ref) => string;
  /** ClusterIDMax: cluster ids above it are refused with INVALID_ARGUMENT. Default DEFAULT_CLUSTER_ID_MAX. */
  readonly clusterIdMax?: number;
}

/**
 * The open maps of one kind, by ref: what CtTables and NatTables are (they extend it with
 * their operations). Iterates in the order maps were opened and added.
 */
export class MapRegistry<Ref extends { readonly clusterId: number }, Table extends RegisteredMap<Ref>> {
  readonly #tables = new Map<string, Table>();
  readonly #key: (ref: Ref) => string;
  readonly #label: (ref: Ref) => string;
  readonly clusterIdMax: number;

  constructor(opts: MapRegistryOptions<Ref>, tables: readonly Table[] = []) {
    this.#key = opts.key;
    this.#label = opts.label;
    this.clusterIdMax = opts.clusterIdMax ?? DEFAULT_CLUSTER_ID_MAX;
    for (const t of tables) this.#tables.set(this.#key(t.ref), t);
  }

  /**
   * Adds a map (src/cluster: a cluster joined). From then on it is served, listed by
   * active() and (CT maps) collected by GC passes. Throws already-exists, naming the map,
   * when its ref is already taken.
   */
  add(table: Table): void {
    const key = this.#key(table.ref);
    if (this.#tables.has(key)) throw new CtmapError('already-exists', `${this.#label(table.ref)} is already open`);
    this.#tables.set(key, table);
  }

  /** Takes a map out (a cluster left); the caller closes it. Undefined when absent. */
  remove(ref: Ref): Table | undefined {
    const key = this.#key(ref);
    const t = this.#tables.get(key);
    this.#tables.delete(key);
    return t;
  }

  /** The map of `ref`, or undefined when there is none (never throws). */
  find(ref: Ref): Table | undefined {
    return this.#tables.get(this.#key(ref));
  }

  /**
   * The map of `ref` for a request. Throws INVALID_ARGUMENT naming `clusterField` for a
   * cluster id outside 0..ClusterIDMax, NOT_FOUND (its message after `context`) for a
   * cluster that has not joined or a disabled family.
   */
  protected select(ref: Ref, clusterField: string, context = ''): Table {
    if (ref.clusterId !== 0) validateClusterId(ref.clusterId, this.clusterIdMax, clusterField);
    const t = this.find(ref);
    if (!t) {
      const why = ref.clusterId === 0 ? ' is open (family disabled?)' : ': the cluster has not joined (or the family is disabled)';
      throw notFound(`${context}no ${this.#label(ref)}${why}`);
    }
    return t;
  }

  /** Every open map: in the order opened and added (globals first, then clusters in join order). */
  active(): Table[] {
    return [...this.#tables.values()];
  }

  /** Closes every map (pins stay) and forgets them; idempotent. */
  close(): void {
    for (const t of this.#tables.values()) t.map.close();
    this.#tables.clear();
  }
}

/** One map to open for a registry: its ref, its spec and its entries' migration rank. */
export interface MapToOpen<Ref> {
  readonly ref: Ref;
  readonly spec: MapSpec;
  readonly rank: RankFn;
}

/** Open-or-create without migration (synchronous): see openOrCreate. */
export interface OpenOrCreateVia {
  readonly backend: MapBackend;
  readonly log: Logger;
}

/**
 * Opens `maps` in order: through a MapOpener (the start's MapLifecycle, which creates,
 * reuses or migrates: asynchronous), or with openOrCreate (a pinned map with other
 * attributes is refused, never recreated: synchronous). Throws what the opener throws;
 * the maps opened before a failure are closed first.
 */
export function openMaps<Ref>(maps: readonly MapToOpen<Ref>[], via: MapOpener): Promise<RegisteredMap<Ref>[]>;
export function openMaps<Ref>(maps: readonly MapToOpen<Ref>[], via: OpenOrCreateVia): RegisteredMap<Ref>[];
export function openMaps<Ref>(maps: readonly MapToOpen<Ref>[], via: MapOpener | OpenOrCreateVia): Promise<RegisteredMap<Ref>[]> | RegisteredMap<Ref>[] {
  const opened: RegisteredMap<Ref>[] = [];
  const closeOpened = (err: unknown): never => {
    for (const t of opened) t.map.close();
    throw err;
  };
  if ('open' in via) {
    return (async () => {
      for (const m of maps) opened.push({ ref: m.ref, map: await via.open(m.spec, { rank: m.rank }) });
      return opened;
    })().catch(closeOpened);
  }
  try {
    for (const m of maps) opened.push({ ref: m.ref, map: openOrCreate(via.backend, m.spec, via.log).map });
  } catch (err) {
    closeOpened(err);
  }
  return opened;
}

/**
 * Deletes `keys` from `map` with one batch delete, each packed by `encode` at its offset;
 * keys already gone are not an error. Returns how many existed.
 */
export function deleteKeys<K>(map: BpfMap, keys: readonly K[], encode: (key: K, buf: Buffer, off: number) => void): number {
  if (keys.length === 0) return 0;
  const ks = map.spec.keySize;
  const buf = Buffer.alloc(keys.length * ks);
  keys.forEach((k, i) => encode(k, buf, i * ks));
  return map.deleteBatch(buf, keys.length).deleted;
}

/**
 * Removes every entry of each map of `tables`: one batch read and one batch delete per
 * cursor batch (Cilium's doFlush4/6 delete one syscall per entry). Returns how many were
 * removed. Entries the datapath adds meanwhile may or may not be removed. Throws only on a
 * backend failure (entries removed by then stay removed).
 */
export function emptyMaps(tables: readonly RegisteredMap<unknown>[]): number {
  let removed = 0;
  for (const t of tables) {
    const cursor = t.map.cursor();
    try {
      // Deleting the batch just read is safe for the bucket-ordered cursor: the cursor
      // has moved past those buckets.
      for (let b = cursor.next(); b; b = cursor.next()) removed += t.map.deleteBatch(Buffer.from(b.keys), b.count).deleted;
    } finally {
      cursor.close();
    }
  }
  return removed;
}

/**
 * A cursor over a registered map for a read that awaits between batches (a dump, a GC
 * pass, a purge): once the map is closed under it (its cluster left: src/cluster closes a
 * leaving cluster's maps, whatever is reading them) next()/nextAsync() throw a CtmapError
 * naming the map by `label` ("tcp4 cluster 3 CT map"): not-found for a cluster's map,
 * unavailable for a global one (only the daemon's stop closes those). Never the backend's
 * EBADF, which would reach the client as INTERNAL (issue 12, defect 10). A batch read
 * before the close but handed out after it is not returned either.
 */
export function liveCursor<Ref extends { readonly clusterId: number }>(table: RegisteredMap<Ref>, label: string, batchSize?: number): BatchCursor {
  const { map } = table;
  const cursor = map.cursor(batchSize);
  const gone = (cause?: unknown): CtmapError => {
    const id = table.ref.clusterId;
    return id === 0
      ? new CtmapError('unavailable', `${label}: closed while it was read (the daemon is stopping)`, { cause })
      : new CtmapError('not-found', `${label}: closed while it was read (cluster ${id} left)`, { cause });
  };
  const handOut = (b: Batch | null): Batch | null => {
    if (map.closed) throw gone();
    return b;
  };
  const failed = (err: unknown): never => {
    throw map.closed ? gone(err) : err;
  };
  return {
    next: () => {
      if (map.closed) throw gone();
      let b: Batch | null;
      try {
        b = cursor.next();
      } catch (err) {
        return failed(err);
      }
      return handOut(b);
    },
    nextAsync: () => (map.closed ? Promise.reject(gone()) : cursor.nextAsync().then(handOut, failed)),
    close: () => cursor.close(),
  };
}
