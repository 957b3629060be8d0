/**
 * The open CT maps and the operations the CTMaps service exposes on them: lookup,
 * all-or-nothing batch update, delete, flush, count and filtered batch dumps.
 */
import type { Logger } from 'pino';
import { invalidArgument, notFound } from '../../errors';
import { writeGrouped } from '../batch-write';
import type { MapOpener } from '../lifecycle';
import { MapRegistry, MapToOpen, RegisteredMap, deleteKeys, emptyMaps, liveCursor, openMaps } from '../registry';
import { BatchCursor, MapBackend } from '../types';
import type { Family } from '../addr';
import { CT_ENTRY_SIZE, CtEntry, CtKey, decodeEntry, encodeEntry, encodeKey, entryLifetime } from './codec';
import { IPPROTO } from './layout';
import { DumpFilter, EntryPredicate, compileFilter } from './flow-filter';
import { CtKind, CtMapsConfig, MapRef, globalCtMapRefs, globalCtMapSpec, refKey, refLabel } from './spec';

/** One open map of the registry: its ref (cluster 0: a global map) and the live map. */
export type CtTable = RegisteredMap<MapRef>;

export interface CtRecordInput {
  ref: MapRef;
  key: CtKey;
  entry: Partial<CtEntry>;
}


/** A CT entry's migration rank: its lifetime (a shrunk map keeps the latest-expiring entries). */
export const ctEntryRank = (values: Buffer, off: number): number => entryLifetime(values, off);

/** How messages name the CT map of `ref`: "tcp4 CT map", "any6 cluster 3 CT map". */
export const ctTableLabel = (ref: MapRef): string => `${refLabel(ref)} CT map`;

/**
 * A batch cursor over `table` that throws NOT_FOUND naming the map and its cluster once the
 * map is closed under it (a cluster leaving mid-read): see liveCursor.
 */
export function ctTableCursor(table: CtTable, batchSize?: number): BatchCursor {
  return liveCursor(table, ctTableLabel(table.ref), batchSize);
}

/** The open CT maps (a MapRegistry by MapRef) and the CTMaps service's operations on them. */
export class CtTables extends MapRegistry<MapRef, CtTable> {
  private constructor(tables: readonly CtTable[], cfg: CtMapsConfig) {
    super({ key: refKey, label: ctTableLabel, clusterIdMax: cfg.clusterIdMax }, tables);
  }

  /**
   * Opens (or creates, or migrates: see MapLifecycle) the global CT maps of the enabled
   * families through `opener`. Throws what the opener throws; maps opened before a failure
   * are closed first.
   */
  static async open(opener: MapOpener, cfg: CtMapsConfig): Promise<CtTables> {
    return new CtTables(await openMaps(globalCtMaps(cfg), opener), cfg);
  }

  /**
   * Synchronous open for maps that need no migration (tests, embedded use): openOrCreate
   * semantics, so a pinned map with other attributes is refused, never recreated.
   */
  static openSync(backend: MapBackend, cfg: CtMapsConfig, log: Logger): CtTables {
    return new CtTables(openMaps(globalCtMaps(cfg), { backend, log }), cfg);
  }

  /**
   * The map for `ref`: INVALID_ARGUMENT naming `<field>.cluster_id` for a cluster id outside
   * 0..ClusterIDMax, NOT_FOUND for a cluster that has not joined or a disabled family.
   */
  get(ref: MapRef, field: string): CtTable {
    return this.select(ref, `${field}.cluster_id`, `${field}: `);
  }

  /** The selected maps; an empty selection means every global map. Duplicates collapse. */
  /**
   * The maps a request names, each once; none named = every open global map, or with
   * `allClusters` every open map (globals first, then clusters in join order).
   */
  resolve(refs: MapRef[], field: string, allClusters = false): CtTable[] {
    if (refs.length === 0) return allClusters ? this.active() : this.active().filter((t) => t.ref.clusterId === 0);
    const seen = new Set<CtTable>();
    refs.forEach((r, i) => seen.add(this.get(r, `${field}[${i}]`)));
    return [...seen];
  }

  /** The entry for `key`; NOT_FOUND (naming `keyField`) when absent. */
  lookup(ref: MapRef, key: CtKey, mapField = 'map', keyField = 'key'): { table: CtTable; entry: CtEntry } {
    const table = this.get(ref, mapField);
    const k = Buffer.alloc(table.map.spec.keySize);
    encodeKey(ref.family, key, k);
    const v = table.map.lookup(k);
    if (!v) throw notFound(`${keyField}: no such entry in ${refLabel(ref)}`);
    return { table, entry: decodeEntry(v) };
  }

  /**
   * Validates every record (family matches the map, TCP entries in the TCP map and others in
   * the any map), then writes them in batches. All-or-nothing: when a write fails part way,
   * every key written so far is restored to its previous value (or removed) before the error
   * is thrown. Returns the number of records written.
   */
  update(records: CtRecordInput[], field: string, keyFamilies: Family[]): number {
    return writeGrouped(
      records,
      (r, i) => {
        const table = this.get(r.ref, `${field}[${i}].map`);
        if (keyFamilies[i] !== r.ref.family) {
          throw invalidArgument(`${field}[${i}].key`, `${keyFamilies[i]} key in the ${r.ref.family} map ${refLabel(r.ref)}`);
        }
        checkKindMatches(r.ref.kind, r.key.nexthdr, `${field}[${i}].key.nexthdr`);
        return table;
      },
      (table, r, keys, keyOff, values, valueOff) => {
        encodeKey(table.ref.family, r.key, keys, keyOff);
        encodeEntry(r.entry, values, valueOff);
      },
    );
  }

  /** Deletes the keys from one map; returns how many existed. */
  delete(ref: MapRef, keys: CtKey[], mapField = 'map'): number {
    return deleteKeys(this.get(ref, mapField).map, keys, (k, buf, off) => encodeKey(ref.family, k, buf, off));
  }

  /** Removes every entry of the selected maps; returns how many were removed. */
  flush(tables: CtTable[]): number {
    return emptyMaps(tables);
  }
}

/** The global CT maps of the enabled families, in globalCtMapRefs' order. */
function globalCtMaps(cfg: CtMapsConfig): MapToOpen<MapRef>[] {
  return globalCtMapRefs(cfg).map((ref) => ({ ref, spec: globalCtMapSpec(cfg, ref.family, ref.kind), rank: ctEntryRank }));
}

function checkKindMatches(kind: CtKind, nexthdr: number, field: string): void {
  if (kind === 'tcp' && nexthdr !== IPPROTO.TCP) throw invalidArgument(field, `the TCP map holds only nexthdr 6 (TCP), got ${nexthdr}`);
  if (kind === 'any' && nexthdr === IPPROTO.TCP) throw invalidArgument(field, 'TCP entries (nexthdr 6) belong in the TCP map, not the any map');
}


/** One batch of a dump: the entries of `table` at the listed indices of keys/values. */
export interface DumpBatch {
  table: CtTable;
  keys: Buffer;
  values: Buffer;
  /** Indices (entry numbers within keys/values) that passed the filter. */
  matches: Uint32Array;
  count: number;
}

/**
 * Pull-based dump over several maps: a stream asks for the next batch only when its
 * client has drained the last one. Reads run off the event loop, one batch ahead (see
 * BatchCursor.nextAsync), so the kernel walk overlaps encoding and sending. A map closed
 * during the dump (its cluster left) ends it with NOT_FOUND naming the map (ctTableCursor).
 */
export class DumpCursor {
  #tableIndex = 0;
  #cursor: BatchCursor | undefined;
  #pred: EntryPredicate | null = null;
  #matches = new Uint32Array(0);

  constructor(
    private readonly tables: CtTable[],
    private readonly filter: DumpFilter | undefined,
    private readonly batchSize = 4096,
  ) {
    // Validate the filter up front so a bad address fails before any output.
    for (const t of tables) compileFilter(filter, t.ref.family);
  }

  async next(): Promise<DumpBatch | null> {
    while (this.#tableIndex < this.tables.length) {
      const table = this.tables[this.#tableIndex];
      if (!this.#cursor) {
        this.#pred = compileFilter(this.filter, table.ref.family);
        if (!this.#pred) {
          this.#tableIndex++;
          continue;
        }
        this.#cursor = ctTableCursor(table, this.batchSize);
      }
      const b = await this.#cursor.nextAsync();
      if (!b) {
        this.#cursor.close();
        this.#cursor = undefined;
        this.#tableIndex++;
        continue;
      }
      if (this.#matches.length < b.count) this.#matches = new Uint32Array(b.count);
      const ks = table.map.spec.keySize;
      let n = 0;
      const pred = this.#pred!;
      for (let i = 0; i < b.count; i++) if (pred(b.keys, i * ks, b.values, i * CT_ENTRY_SIZE)) this.#matches[n++] = i;
      if (n === 0) continue;
      return { table, keys: b.keys, values: b.values, matches: this.#matches, count: n };
    }
    return null;
  }

  close(): void {
    this.#cursor?.close();
    this.#cursor = undefined;
    this.#tableIndex = this.tables.length;
  }
}

export function countEntries(tables: CtTable[]): Array<{ ref: MapRef; entries: number }> {
  return tables.map((t) => ({ ref: t.ref, entries: t.map.count() }));
}

/**
 * The entries of each of `tables` that `filter` keeps, by a scan (DumpCursor's batches,
 * read off the event loop); a map the filter rules out entirely counts 0 unscanned.
 * Rejects with signal.reason when aborted between batches.
 */
export async function countMatching(tables: CtTable[], filter: DumpFilter, signal?: AbortSignal): Promise<Array<{ ref: MapRef; entries: number }>> {
  const counts = new Map<CtTable, number>(tables.map((t) => [t, 0]));
  const cursor = new DumpCursor(tables, filter);
  try {
    for (let b = await cursor.next(); b; b = await cursor.next()) {
      if (signal?.aborted) throw signal.reason;
      counts.set(b.table, counts.get(b.table)! + b.count);
    }
  } finally {
    cursor.close();
  }
  return tables.map((t) => ({ ref: t.ref, entries: counts.get(t)! }));
}

