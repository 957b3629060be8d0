/**
 * The ctmap.v1.CTMaps service: request parsing and response shaping around CtTables.
 * Errors thrown here are CtmapErrors; unary()/serverStream() map them to gRPC statuses.
 */
import type * as grpc from '@grpc/grpc-js';
import type { DatapathCounters, FateCounters } from '../../datapath/side-maps';
import { invalidArgument } from '../../errors';
import { formatEntryLine } from '../../maps/ctmap/format';
import { ctNow } from '../../maps/clock';
import { CtTable, CtTables, DumpBatch, DumpCursor, countEntries, countMatching } from '../../maps/ctmap/tables';
import { DumpFilter, EntryPredicate, compileFilter } from '../../maps/ctmap/flow-filter';
import type { Family } from '../../maps/addr';
import { CT_ENTRY_SIZE, encodeKey } from '../../maps/ctmap/codec';
import type { NatTables } from '../../maps/nat/tables';
import { MapRef, refLabel } from '../../maps/ctmap/spec';
import { FLUSH_TIME } from '../../maps/ctmap/gc/engine';
import type { GCRunner } from '../../maps/ctmap/gc/runner';
import type { MigrationReport } from '../../maps/lifecycle';
import {
  ActiveMapsRequestMsg,
  ActiveMapsResponseMsg,
  CountResponseMsg,
  CtEntryMsg,
  CtRecordMsg,
  DeleteRequestMsg,
  DeleteResponseMsg,
  DumpEntriesRequestMsg,
  DumpTextChunkMsg,
  FlushResponseMsg,
  LookupRequestMsg,
  UpdateRequestMsg,
  UpdateResponseMsg,
  datapathStatsMsg,
  entryMsg,
  mapInfoMsg,
  mapMigrationMsg,
  mapRefMsg,
  natMapInfoMsg,
  parseDumpFilter,
  parseEntry,
  parseKey,
  parseMapRef,
  parseMapRefs,
} from '../../api/ct-proto';
import { WireWriter, acceptEncodedResponses, mapRefBody, writeCtRecord } from '../../api/ct-wire';
import { services } from '../../api/proto';
import { StreamWriter, serverStream, unary } from '../call-boundary';
import type { ServiceDeps, ServiceRegistration } from '../server';

/** Flush a DumpEntriesBatched message once it grows past this (client default limit is 4 MiB). */
const BATCH_MESSAGE_BYTES = 1 << 20;

/**
 * Sizes each batch's output buffer from the bytes per record seen so far, so a dump does
 * not allocate (and zero-fill, and collect) far more than it sends. WireWriter grows
 * when a guess is short.
 */
class BatchSizer {
  #perRecord = 180;

  writer(records: number): WireWriter {
    return new WireWriter(Math.min(Math.ceil(records * this.#perRecord * 1.05) + 1024, BATCH_MESSAGE_BYTES + 1024));
  }

  observe(bytes: number, records: number): void {
    if (records > 0) this.#perRecord = bytes / records;
  }
}

/** Where ActiveMaps reads the datapath's counters (the daemon's DatapathSideMaps). */
export interface DatapathCountersSource {
  counters(): DatapathCounters;
  /** Socket fate-sharing's counters (ctmapd_fate_stats); without it they read 0. */
  fateCounters?(): FateCounters;
  /** counters() per possible CPU, element i for CPU i; without it datapath_per_cpu stays empty. */
  countersPerCpu?(): DatapathCounters[];
  /** fateCounters() per possible CPU; without it the per-CPU fate counters read 0. */
  fateCountersPerCpu?(): FateCounters[];
}

/** What ctMapsService needs. */
export interface CtMapsServiceDeps extends ServiceDeps {
  /** The CT maps served. */
  readonly tables: CtTables;
  /**
   * With it, Flush is a GC pass with time 2^32-1 as in Cilium (facts §6): every removed
   * entry is published as a GC event and takes its SNAT mapping with it, and the flush
   * waits for passes already running over those maps; Delete (by keys or filter) removes
   * through the GC engine too, so its deletions are DESTROY reason delete on the event bus
   * the engine is connected to (connectGCToBus), reach Observe and take their SNAT
   * mappings with them. Without it, Flush and Delete delete in batches, silently.
   */
  readonly gc?: GCRunner;
  /**
   * The SNAT maps ActiveMaps lists (nat_maps) beside the CT maps. Without it nat_maps is
   * empty.
   */
  readonly nat?: NatTables;
  /** With it, ActiveMaps reports the datapath's counters, read at each call. */
  readonly datapath?: DatapathCountersSource;
  /** What this start did to pinned maps (ActiveMaps reports them). Default: none. */
  readonly migrations?: readonly MigrationReport[];
  /** The daemon's --bpf-root, reported by ActiveMaps (what `ctmap datapath` and `fate` load over). */
  readonly bpfRoot?: string;
}

/**
 * The CTMaps service over `deps.tables`: its definition, whose dump streams' serializers
 * accept pre-encoded Buffers (see ct-wire.ts; every other message goes through
 * protobufjs), and its handlers. `deps.shutdown` ends calls when the server stops.
 */
export function ctMapsService(deps: CtMapsServiceDeps): ServiceRegistration {
  const { tables, nat, log, shutdown, gc, datapath, migrations = [], bpfRoot = '' } = deps;
  // The latest report per pin: a rolled-back migration is followed by the one that completed.
  const lastByPin = new Map(migrations.map((m) => [m.pinPath, m]));
  /** Streams the selected maps batch by batch; `emit` turns one batch into messages. */
  async function dump(
    req: DumpEntriesRequestMsg,
    signal: AbortSignal,
    emit: (batch: DumpBatch, refBody: Buffer) => Promise<void>,
  ): Promise<void> {
    const filter = await parseDumpFilter(req.filter, ctNow());
    const selected = tables.resolve(parseMapRefs(req.maps, 'maps'), 'maps', req.filter?.all_clusters === true);
    const cursor = new DumpCursor(selected, filter);
    try {
      for (let b = await cursor.next(); b; b = await cursor.next()) {
        if (signal.aborted) throw signal.reason;
        await emit(b, mapRefBody(b.table.ref));
      }
    } finally {
      cursor.close();
    }
  }

  /**
   * Removes the entries of `selected` that `filter` keeps: a GC pass selecting them (so each
   * is a DESTROY event with `reason`, and takes its SNAT mapping with it), or without a GC
   * runner a scan and a batch delete. Returns how many were removed.
   */
  async function removeMatching(selected: CtTable[], filter: DumpFilter, reason: 'flush' | 'delete', signal: AbortSignal): Promise<number> {
    if (gc) {
      const select = (family: Family): EntryPredicate | null => compileFilter(filter, family);
      const result = await gc.run({ refs: selected.map((t) => t.ref), filter: { removeExpired: false, select }, eventReason: reason, signal });
      return result.maps.reduce((n, m) => n + m.deleted, 0);
    }
    let removed = 0;
    const cursor = new DumpCursor(selected, filter);
    try {
      for (let b = await cursor.next(); b; b = await cursor.next()) {
        if (signal.aborted) throw signal.reason;
        const ks = b.table.map.spec.keySize;
        const keys = Buffer.alloc(b.count * ks);
        for (let j = 0; j < b.count; j++) b.keys.copy(keys, j * ks, b.matches[j] * ks, (b.matches[j] + 1) * ks);
        removed += b.table.map.deleteBatch(keys, b.count).deleted;
      }
    } finally {
      cursor.close();
    }
    return removed;
  }

  const implementation: grpc.UntypedServiceImplementation = {
    ActiveMaps: unary(log, 'CTMaps/ActiveMaps', async (req: ActiveMapsRequestMsg): Promise<ActiveMapsResponseMsg> => ({
      maps: tables.active().map((t) => mapInfoMsg(mapRefMsg(t.ref), t.map, req.with_counts ? t.map.count() : undefined, lastByPin.get(t.map.spec.pinPath ?? ''))),
      datapath: datapath ? datapathStatsMsg(datapath.counters(), datapath.fateCounters?.()) : null,
      migrations: migrations.map(mapMigrationMsg),
      datapath_per_cpu: req.per_cpu && datapath ? perCpuStatsMsgs(datapath) : [],
      nat_maps: (nat?.active() ?? []).map((t) => natMapInfoMsg(t.ref, t.map, req.with_counts ? t.map.count() : undefined)),
      bpf_root: bpfRoot,
    }), shutdown),

    DumpEntries: serverStream(log, 'CTMaps/DumpEntries', async (req: DumpEntriesRequestMsg, writer: StreamWriter<Buffer>, ctx) => {
      const size = new BatchSizer();
      await dump(req, ctx.signal, async (b, refBody) => {
        // One buffer per batch, sliced per record: grpc-js may hold a message until the
        // client drains, so slices of a buffer that is never reused stay valid.
        const w = size.writer(b.count);
        const ends = new Uint32Array(b.count);
        const now = ctNow();
        const ks = b.table.map.spec.keySize;
        for (let j = 0; j < b.count; j++) {
          const i = b.matches[j];
          writeCtRecord(w, b.table.ref.family, refBody, b.keys, i * ks, b.values, i * CT_ENTRY_SIZE, now);
          ends[j] = w.pos;
        }
        size.observe(w.pos, b.count);
        let start = 0;
        for (let j = 0; j < b.count; j++) {
          await writer.write(w.buf.subarray(start, ends[j]));
          start = ends[j];
        }
      });
    }, shutdown),

    DumpEntriesBatched: serverStream(log, 'CTMaps/DumpEntriesBatched', async (req: DumpEntriesRequestMsg, writer: StreamWriter<Buffer>, ctx) => {
      const size = new BatchSizer();
      await dump(req, ctx.signal, async (b, refBody) => {
        let w = size.writer(b.count);
        let inMessage = 0;
        const now = ctNow();
        const ks = b.table.map.spec.keySize;
        for (let j = 0; j < b.count; j++) {
          const i = b.matches[j];
          const mark = w.beginLen(1);
          writeCtRecord(w, b.table.ref.family, refBody, b.keys, i * ks, b.values, i * CT_ENTRY_SIZE, now);
          w.endLen(mark);
          inMessage++;
          if (w.pos >= BATCH_MESSAGE_BYTES && j + 1 < b.count) {
            size.observe(w.pos, inMessage);
            await writer.write(w.buf.subarray(0, w.pos));
            w = size.writer(b.count - j - 1);
            inMessage = 0;
          }
        }
        size.observe(w.pos, inMessage);
        await writer.write(w.buf.subarray(0, w.pos));
      });
    }, shutdown),

    DumpEntriesWithTimeDiff: serverStream(log, 'CTMaps/DumpEntriesWithTimeDiff', async (req: DumpEntriesRequestMsg, writer: StreamWriter<DumpTextChunkMsg>, ctx) => {
      await dump(req, ctx.signal, async (b) => {
        const now = ctNow();
        const ks = b.table.map.spec.keySize;
        let text = '';
        for (let j = 0; j < b.count; j++) {
          const i = b.matches[j];
          text += formatEntryLine(b.table.ref.family, b.keys, i * ks, b.values, i * CT_ENTRY_SIZE, now);
        }
        if (text) await writer.write({ text });
      });
    }, shutdown),

    Count: unary(log, 'CTMaps/Count', async (req: DumpEntriesRequestMsg, ctx): Promise<CountResponseMsg> => {
      const selected = tables.resolve(parseMapRefs(req.maps, 'maps'), 'maps', req.filter?.all_clusters === true);
      const filter = await parseDumpFilter(req.filter, ctNow());
      // No criterion: the maps' own counts. With one: a scan that counts what the filter keeps.
      const counts = filter && Object.keys(filter).length > 0 ? await countMatching(selected, filter, ctx.signal) : countEntries(selected);
      return { counts: counts.map((c) => ({ map: mapRefMsg(c.ref), entries: String(c.entries) })) };
    }, shutdown),

    Lookup: unary(log, 'CTMaps/Lookup', async (req: LookupRequestMsg): Promise<CtRecordMsg> => {
      const ref = parseMapRef(req.map, 'map');
      const { key, family } = parseKey(req.key, 'key');
      checkFamily(ref, family, 'key');
      const { entry } = tables.lookup(ref, key);
      return { map: mapRefMsg(ref), key: req.key, entry: entryMsg(entry, ctNow()) };
    }, shutdown),

    Update: unary(log, 'CTMaps/Update', async (req: UpdateRequestMsg, ctx): Promise<UpdateResponseMsg> => {
      const records = req.records ?? [];
      const families = records.map((r, i) => parseKey(r.key, `records[${i}].key`).family);
      const parsed = records.map((r, i) => ({
        ref: parseMapRef(r.map, `records[${i}].map`),
        key: parseKey(r.key, `records[${i}].key`).key,
        entry: parseEntry(r.entry as CtEntryMsg, `records[${i}].entry`),
      }));
      ctx.audit({ maps: [...new Set(parsed.map((p) => refLabel(p.ref)))], records: parsed.length });
      const written = tables.update(parsed, 'records', families);
      ctx.audit({ written });
      return { written };
    }, shutdown),

    Delete: unary(log, 'CTMaps/Delete', async (req: DeleteRequestMsg, ctx): Promise<DeleteResponseMsg> => {
      const ref = parseMapRef(req.map, 'map');
      if (req.filter) {
        if ((req.keys?.length ?? 0) > 0) throw invalidArgument('filter', 'give keys or a filter, not both');
        const filter = (await parseDumpFilter(req.filter, ctNow()))!;
        const table = tables.get(ref, 'map');
        ctx.audit({ maps: [refLabel(ref)], filter: true });
        const deleted = await removeMatching([table], filter, 'delete', ctx.signal);
        ctx.audit({ deleted });
        return { deleted };
      }
      ctx.audit({ maps: [refLabel(ref)], keys: req.keys?.length ?? 0 });
      const keys = (req.keys ?? []).map((k, i) => {
        const { key, family } = parseKey(k, `keys[${i}]`);
        checkFamily(ref, family, `keys[${i}]`);
        return key;
      });
      let deleted: number;
      if (gc) {
        // The engine publishes the deletions on its GC stream with reason delete: the NAT
        // coupling removes their SNAT mappings, Observe sees them, and connectGCToBus makes
        // each one DESTROY reason delete on the bus (once: nothing here publishes).
        const table = tables.get(ref, 'map');
        const ks = table.map.spec.keySize;
        const packed = Buffer.alloc(keys.length * ks);
        keys.forEach((k, i) => encodeKey(ref.family, k, packed, i * ks));
        deleted = (await gc.engine.deleteKeys(table, packed, keys.length, ctx.signal)).deleted;
      } else {
        // No GC runner (a service built for tests or embedding without one): a plain batch
        // delete. Nothing is published and SNAT mappings stay, as there is no coupling to
        // remove them; the daemon always passes its runner.
        deleted = tables.delete(ref, keys);
      }
      ctx.audit({ deleted });
      return { deleted };
    }, shutdown),

    Flush: unary(log, 'CTMaps/Flush', async (req: DumpEntriesRequestMsg, ctx): Promise<FlushResponseMsg> => {
      const filter = await parseDumpFilter(req.filter, ctNow());
      const selected = tables.resolve(parseMapRefs(req.maps, 'maps'), 'maps', req.filter?.all_clusters === true);
      ctx.audit({ maps: selected.map((t) => refLabel(t.ref)), filter: filter !== undefined });
      let flushed: number;
      if (filter) flushed = await removeMatching(selected, filter, 'flush', ctx.signal);
      else if (!gc) flushed = tables.flush(selected);
      else {
        const result = await gc.run({ refs: selected.map((t) => t.ref), filter: { removeExpired: true, time: FLUSH_TIME }, eventReason: 'flush' });
        flushed = result.maps.reduce((n, m) => n + m.deleted, 0);
      }
      ctx.audit({ flushed });
      return { flushed: String(flushed) };
    }, shutdown),
  };
  return { definition: acceptEncodedResponses(services().CTMaps.service, ['DumpEntries', 'DumpEntriesBatched']), implementation };
}

/** One DatapathStats per possible CPU; fate counters by the same index (0 without them). */
function perCpuStatsMsgs(datapath: DatapathCountersSource): ActiveMapsResponseMsg['datapath_per_cpu'] {
  const fate = datapath.fateCountersPerCpu?.() ?? [];
  return (datapath.countersPerCpu?.() ?? []).map((c, i) => datapathStatsMsg(c, fate[i]));
}

function checkFamily(ref: MapRef, family: string, field: string): void {
  if (family !== ref.family) throw invalidArgument(field, `${family} key for the ${ref.family} map`);
}
