/**
 * The open SNAT maps and the operations the NATMaps service, the NAT coupling and the orphan
 * purge use on them: map selection by (family, cluster), all-or-nothing batch update,
 * delete by keys and pull-based dumps.
 *
 * Cluster 0 is the global maps; a joined cluster's inner maps (cilium_per_cluster_snat_*_<id>)
 * are added and removed by src/cluster as clusters join and leave.
 */
import type { Logger } from 'pino';
import { invalidArgument } from '../../errors';
import { writeGrouped } from '../batch-write';
import type { MapOpener } from '../lifecycle';
import { MapRegistry, MapToOpen, RegisteredMap, deleteKeys, emptyMaps, liveCursor, openMaps } from '../registry';
import { Batch, BatchCursor, MapBackend } from '../types';
import type { Family } from '../addr';
import { CtKey, encodeKey, validateKey } from '../ctmap/codec';
import { NatEntry, encodeNatEntry, natEntryCreated, validateNatEntry } from './codec';
import { NatMapRef, NatMapsConfig, globalNatMapRefs, globalNatMapSpec, natRefKey, natRefLabel } from './spec';

/** One open map of the registry: its ref (cluster 0: a global map) and the live map. */
export type NatTable = RegisteredMap<NatMapRef>;

/** One record to write: the map it goes to, its key (a CT tuple) and value. */
export interface NatRecordInput {
  family: Family;
  clusterId: number;
  key: CtKey;
  entry: NatEntry;
}

/** A SNAT entry's migration rank: when it was created (a shrunk map keeps the newest mappings). */
export const natEntryRank = (values: Buffer, off: number): number => natEntryCreated(values, off);

/** How messages name the NAT map of `ref`: "snat4 NAT map", "snat6 cluster 3 NAT map". */
export const natTableLabel = (ref: NatMapRef): string => `${natRefLabel(ref)} NAT map`;

/**
 * A batch cursor over `table` that throws NOT_FOUND naming the map and its cluster once the
 * map is closed under it (a cluster leaving mid-read): see liveCursor.
 */
export function natTableCursor(table: NatTable, batchSize?: number): BatchCursor {
  return liveCursor(table, natTableLabel(table.ref), batchSize);
}

/** The open NAT maps (a MapRegistry by NatMapRef) and the operations on them. */
export class NatTables extends MapRegistry<NatMapRef, NatTable> {
  private constructor(tables: readonly NatTable[], cfg: NatMapsConfig) {
    super({ key: natRefKey, label: natTableLabel, clusterIdMax: cfg.clusterIdMax }, tables);
  }

  /**
   * Opens (or creates, pinned under <bpf-root>/tc/globals, or migrates: see MapLifecycle)
   * the global NAT maps of the enabled families through `opener`. Throws what the opener
   * throws; maps opened before a failure are closed first.
   */
  static async open(opener: MapOpener, cfg: NatMapsConfig): Promise<NatTables> {
    return new NatTables(await openMaps(globalNatMaps(cfg), opener), cfg);
  }

  /**
   * Synchronous open for maps that need no migration (tests, embedded use): openOrCreate
   * semantics, so a pinned map with other attributes is refused, never recreated.
   */
  static openSync(backend: MapBackend, cfg: NatMapsConfig, log: Logger): NatTables {
    return new NatTables(openMaps(globalNatMaps(cfg), { backend, log }), cfg);
  }

  /** The NAT map of `ref`, or of (family, cluster); undefined when there is none (never throws). */
  override find(ref: NatMapRef): NatTable | undefined;
  override find(family: Family, clusterId: number): NatTable | undefined;
  override find(refOrFamily: NatMapRef | Family, clusterId = 0): NatTable | undefined {
    return super.find(typeof refOrFamily === 'string' ? { family: refOrFamily, clusterId } : refOrFamily);
  }

  /**
   * The NAT map of (family, cluster) for a request. Throws INVALID_ARGUMENT naming
   * `clusterField` for a cluster id outside 0..ClusterIDMax, NOT_FOUND for a cluster that
   * has not joined or a disabled family.
   */
  get(family: Family, clusterId: number, clusterField = 'cluster_id'): NatTable {
    return this.select({ family, clusterId }, clusterField);
  }

  /**
   * Validates every record (map exists, key valid and of the map's family, entry valid and
   * its addr of the map's family), then writes them with writeAllOrNothing: when a write
   * fails part way every key written is restored before the error is thrown. `field` names
   * the request's list ("records"): errors name `records[i].cluster_id`, `records[i].key…`,
   * `records[i].entry…`. Returns the number of records written.
   */
  update(records: readonly NatRecordInput[], field = 'records'): number {
    return writeGrouped(
      records,
      (r, i) => {
        const table = this.get(r.family, r.clusterId, `${field}[${i}].cluster_id`);
        const kf = validateKey(r.key, `${field}[${i}].key`);
        if (kf !== r.family) throw invalidArgument(`${field}[${i}].key`, `${kf} key for the ${r.family} NAT map`);
        validateNatEntry(r.family, r.entry, `${field}[${i}].entry`);
        return table;
      },
      (table, r, keys, keyOff, values, valueOff) => {
        encodeKey(table.ref.family, r.key, keys, keyOff);
        encodeNatEntry(table.ref.family, r.entry, values, valueOff);
      },
    );
  }

  /**
   * Deletes `keys` (validated CT tuples of `family`) from the NAT map of (family, cluster)
   * with one batch delete; keys already gone are not an error. Returns how many existed.
   * Map selection errors as get().
   */
  delete(family: Family, clusterId: number, keys: readonly CtKey[], clusterField = 'cluster_id'): number {
    return deleteKeys(this.get(family, clusterId, clusterField).map, keys, (k, buf, off) => encodeKey(family, k, buf, off));
  }

  /**
   * The maps NATMaps.Flush empties: of `family` (undefined: every family whose global map
   * is open, i.e. every enabled one), the global maps (clusterId 0), cluster N's, or with
   * allClusters the global and every cluster's. Throws NOT_FOUND for a disabled family or
   * a cluster without maps, INVALID_ARGUMENT naming `clusterField` for an id beyond
   * ClusterIDMax (as get()).
   */
  selectForFlush(sel: { family?: Family; clusterId: number; allClusters: boolean }, clusterField = 'cluster_id'): NatTable[] {
    const families = sel.family ? [sel.family] : [...new Set(this.active().filter((t) => t.ref.clusterId === 0).map((t) => t.ref.family))];
    if (!sel.allClusters) return families.map((f) => this.get(f, sel.clusterId, clusterField));
    for (const f of families) this.get(f, 0, clusterField); // a disabled family is NOT_FOUND here too
    return this.active().filter((t) => families.includes(t.ref.family));
  }

  /** Removes every entry of `tables` with batch deletes (emptyMaps); returns how many there were. */
  flush(tables: readonly NatTable[]): number {
    return emptyMaps(tables);
  }

  /** A pull-based dump of one NAT map (see NatDumpCursor). */
  dump(table: NatTable, batchSize?: number): NatDumpCursor {
    return new NatDumpCursor(table, batchSize);
  }
}

/** The global NAT maps of the enabled families, IPv4 first. */
function globalNatMaps(cfg: NatMapsConfig): MapToOpen<NatMapRef>[] {
  return globalNatMapRefs(cfg).map((ref) => ({ ref, spec: globalNatMapSpec(cfg, ref.family), rank: natEntryRank }));
}

/** One batch of a NAT dump: `count` packed keys and values, valid until the next next(). */
export interface NatDumpBatch extends Batch {
  readonly table: NatTable;
}

/**
 * Pull-based dump of one NAT map, like ctmap's DumpCursor: the consumer asks for the next
 * batch only when it has dealt with the last one, and the kernel backend reads the next
 * batch off the event loop meanwhile (BatchCursor.nextAsync). Entries written or deleted
 * during the dump may or may not be seen, as with any BPF map iteration. A map closed
 * during the dump (its cluster left) ends it with NOT_FOUND naming the map (natTableCursor).
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
    this.#cursor ??= natTableCursor(this.table, this.batchSize);
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
