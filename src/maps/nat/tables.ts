/**
 * The open SNAT maps and the operations the NATMaps service, the NAT coupling and the orphan
 * purge use on them: map selection by (family, cluster), all-or-nothing batch update,
 * delete by keys and pull-based dumps.
 *
 * Cluster 0 is the global maps; a joined cluster's inner maps (cilium_per_cluster_snat_*_<id>)
 * are added and removed by src/cluster as clusters join and leave.
 */
import type { Logger } from 'pino';
import { CtmapError, invalidArgument, notFound } from '../../errors';
import { writeAllOrNothing } from '../batch-write';
import type { MapOpener } from '../lifecycle';
import { openOrCreate } from '../open';
import { Batch, BatchCursor, BpfMap, MapBackend } from '../types';
import type { Family } from '../addr';
import { CtKey, encodeKey, validateKey } from '../ctmap/codec';
import { DEFAULT_CLUSTER_ID_MAX } from '../../config/defaults';
import { validateClusterId } from '../cluster-spec';
import { NatEntry, encodeNatEntry, natEntryCreated, validateNatEntry } from './codec';
import { NatMapRef, NatMapsConfig, globalNatMapRefs, globalNatMapSpec, natRefKey, natRefLabel } from './spec';

export interface NatTable {
  readonly ref: NatMapRef;
  readonly map: BpfMap;
}

/** One record to write: the map it goes to, its key (a CT tuple) and value. */
export interface NatRecordInput {
  family: Family;
  clusterId: number;
  key: CtKey;
  entry: NatEntry;
}

/** A SNAT entry's migration rank: when it was created (a shrunk map keeps the newest mappings). */
export const natEntryRank = (values: Buffer, off: number): number => natEntryCreated(values, off);

export class NatTables {
  readonly #tables = new Map<string, NatTable>();

  private constructor(
    tables: NatTable[],
    /** ClusterIDMax: cluster ids above it are refused with INVALID_ARGUMENT. */
    readonly clusterIdMax: number,
  ) {
    for (const t of tables) this.#tables.set(natRefKey(t.ref), t);
  }

  /** Adds a cluster's NAT map (a cluster joined). Throws when its ref is already taken. */
  add(table: NatTable): void {
    const key = natRefKey(table.ref);
    if (this.#tables.has(key)) throw new CtmapError('already-exists', `${natRefLabel(table.ref)} NAT map is already open`);
    this.#tables.set(key, table);
  }

  /** Takes a cluster's NAT map out (a cluster left); the caller closes it. */
  remove(ref: NatMapRef): NatTable | undefined {
    const key = natRefKey(ref);
    const t = this.#tables.get(key);
    this.#tables.delete(key);
    return t;
  }

  /**
   * Opens (or creates, pinned under <bpf-root>/tc/globals, or migrates: see MapLifecycle)
   * the global NAT maps of the enabled families through `opener`. Throws what the opener
   * throws; maps opened before a failure are closed first.
   */
  static async open(opener: MapOpener, cfg: NatMapsConfig): Promise<NatTables> {
    const tables: NatTable[] = [];
    try {
      for (const ref of globalNatMapRefs(cfg)) {
        const map = await opener.open(globalNatMapSpec(cfg, ref.family), { rank: natEntryRank });
        tables.push({ ref, map });
      }
    } catch (err) {
      for (const t of tables) t.map.close();
      throw err;
    }
    return new NatTables(tables, cfg.clusterIdMax ?? DEFAULT_CLUSTER_ID_MAX);
  }

  /**
   * Synchronous open for maps that need no migration (tests, embedded use): openOrCreate
   * semantics, so a pinned map with other attributes is refused, never recreated.
   */
  static openSync(backend: MapBackend, cfg: NatMapsConfig, log: Logger): NatTables {
    const tables: NatTable[] = [];
    try {
      for (const ref of globalNatMapRefs(cfg)) tables.push({ ref, map: openOrCreate(backend, globalNatMapSpec(cfg, ref.family), log).map });
    } catch (err) {
      for (const t of tables) t.map.close();
      throw err;
    }
    return new NatTables(tables, cfg.clusterIdMax ?? DEFAULT_CLUSTER_ID_MAX);
  }

  /** Every open NAT map, IPv4 first. */
  active(): NatTable[] {
    return [...this.#tables.values()];
  }

  /** The NAT map of (family, cluster), or undefined when there is none (never throws). */
  find(family: Family, clusterId: number): NatTable | undefined {
    return this.#tables.get(natRefKey({ family, clusterId }));
  }

  /**
   * The NAT map of (family, cluster) for a request. Throws INVALID_ARGUMENT naming
   * `clusterField` for a cluster id outside 0..ClusterIDMax, NOT_FOUND for a cluster that
   * has not joined or a disabled family.
   */
  get(family: Family, clusterId: number, clusterField = 'cluster_id'): NatTable {
    if (clusterId !== 0) validateClusterId(clusterId, this.clusterIdMax, clusterField);
    const t = this.find(family, clusterId);
    if (!t) {
      throw notFound(
        clusterId === 0
          ? `no ${natRefLabel({ family, clusterId })} NAT map is open (family disabled?)`
          : `no ${natRefLabel({ family, clusterId })} NAT map: the cluster has not joined (or the family is disabled)`,
      );
    }
    return t;
  }

  /**
   * Validates every record (map exists, key valid and of the map's family, entry valid and
   * its addr of the map's family), then writes them with writeAllOrNothing: when a write
   * fails part way every key written is restored before the error is thrown. `field` names
   * the request's list ("records"): errors name `records[i].cluster_id`, `records[i].key…`,
   * `records[i].entry…`. Returns the number of records written.
   */
  update(records: readonly NatRecordInput[], field = 'records'): number {
    const groups = new Map<NatTable, number[]>();
    records.forEach((r, i) => {
      const table = this.get(r.family, r.clusterId, `${field}[${i}].cluster_id`);
      const kf = validateKey(r.key, `${field}[${i}].key`);
      if (kf !== r.family) throw invalidArgument(`${field}[${i}].key`, `${kf} key for the ${r.family} NAT map`);
      validateNatEntry(r.family, r.entry, `${field}[${i}].entry`);
      const list = groups.get(table) ?? [];
      list.push(i);
      groups.set(table, list);
    });
    const writes = [...groups].map(([table, indices]) => {
      const { keySize: ks, valueSize: vs } = table.map.spec;
      const keys = Buffer.alloc(indices.length * ks);
      const values = Buffer.alloc(indices.length * vs);
      indices.forEach((ri, j) => {
        encodeKey(table.ref.family, records[ri].key, keys, j * ks);
        encodeNatEntry(table.ref.family, records[ri].entry, values, j * vs);
      });
      return { map: table.map, keys, values, count: indices.length };
    });
    return writeAllOrNothing(writes);
  }

  /**
   * Deletes `keys` (validated CT tuples of `family`) from the NAT map of (family, cluster)
   * with one batch delete; keys already gone are not an error. Returns how many existed.
   * Map selection errors as get().
   */
  delete(family: Family, clusterId: number, keys: readonly CtKey[], clusterField = 'cluster_id'): number {
    const table = this.get(family, clusterId, clusterField);
    if (keys.length === 0) return 0;
    const ks = table.map.spec.keySize;
    const buf = Buffer.alloc(keys.length * ks);
    keys.forEach((k, i) => encodeKey(family, k, buf, i * ks));
    return table.map.deleteBatch(buf, keys.length).deleted;
  }

  /** A pull-based dump of one NAT map (see NatDumpCursor). */
  dump(table: NatTable, batchSize?: number): NatDumpCursor {
    return new NatDumpCursor(table, batchSize);
  }

  /** Closes every map (pins stay); idempotent. */
  close(): void {
    for (const t of this.#tables.values()) t.map.close();
    this.#tables.clear();
  }
}

/** One batch of a NAT dump: `count` packed keys and values, valid until the next next(). */
export interface NatDumpBatch extends Batch {
  readonly table: NatTable;
}

/**
 * Pull-based dump of one NAT map, like ctmap's DumpCursor: the consumer asks for the next
 * batch only when it has dealt with the last one, and the kernel backend reads the next
 * batch off the event loop meanwhile (BatchCursor.nextAsync). Entries written or deleted
 * during the dump may or may not be seen, as with any BPF map iteration.
 */
export class NatDumpCursor {
  #cursor: BatchCursor | undefined;
  #done = false;

  constructor(
    readonly table: NatTable,
    private readonly batchSize = 4096,
  ) {}

  /** The next non-empty batch, or null at the end (after which the cursor is closed). */
  async next(): Promise<NatDumpBatch | null> {
    if (this.#done) return null;
    this.#cursor ??= this.table.map.cursor(this.batchSize);
    const b = await this.#cursor.nextAsync();
    if (!b) {
      this.close();
      return null;
    }
    return { table: this.table, count: b.count, keys: b.keys, values: b.values };
  }

  /** Idempotent; next() returns null afterwards. */
  close(): void {
    this.#done = true;
    this.#cursor?.close();
    this.#cursor = undefined;
  }
}
