/**
 * The ctmap.v1.GCRunner service: Run (one filtered pass, optionally narrowed to a flow
 * filter: kept records and progress updates, then stats),
 * Observe (live GC events per family with per-subscriber bounded buffers), Status and
 * Signal (the scheduler's state and early passes).
 */
import type * as grpc from '@grpc/grpc-js';
import { merge } from 'rxjs';
import { CtmapError } from '../../errors';
import type { Family } from '../../maps/addr';
import { SCAN_BATCH } from '../../maps/ctmap/gc/engine';
import { refLabel } from '../../maps/ctmap/spec';
import type { GCRunner } from '../../maps/ctmap/gc/runner';
import type { GCEvent, GCPassProgress, GCRunResult } from '../../maps/ctmap/gc/types';
import { EntryPredicate, compileFilter } from '../../maps/ctmap/flow-filter';
import { ctNow } from '../../maps/clock';
import { eventsOf } from '../../maps/ctmap/gc/events';
import { familyEnum, parseDumpFilter, parseFamily, parseMapRefs, parseOptionalFamily } from '../../api/ct-proto';
import { acceptEncodedResponses } from '../../api/ct-wire';
import { GCFamilyRequestMsg, GCRunRequestMsg, GCStatusResponseMsg, encodeGCEvent, encodeKeptUpdate, gcRunProgressMsg, gcRunStatsMsg, parseGCFilter } from '../../api/gc-proto';
import { BoundedQueue } from '../bounded-queue';
import { services } from '../../api/proto';
import { StreamWriter, serverStream, unary } from '../call-boundary';
import type { ServiceDeps, ServiceRegistration } from '../server';

/** What the service needs of the scheduler (src/maps/ctmap/gc/scheduler.ts). */
export interface GCSchedulerPort {
  signal(family: Family): void;
  status(): {
    fixedInterval: boolean;
    maxIntervalSeconds: number;
    families: Array<{
      family: Family;
      intervalSeconds: number;
      lastRunUnixMs: number;
      nextRunUnixMs: number;
      runs: number;
      deleted: number;
      alive: number;
      lastRatio: number;
      lastPassReason?: string;
      lastSignalSource?: string;
      signals?: Readonly<Record<'api' | 'insert-failed' | 'pressure', number>>;
    }>;
  };
}

/** What gcRunnerService needs. */
export interface GCRunnerServiceDeps extends ServiceDeps {
  readonly runner: GCRunner;
  /** Without it, Status reports zeros and Signal is FAILED_PRECONDITION. */
  readonly scheduler?: GCSchedulerPort;
  /** Families with open maps. */
  readonly families: readonly Family[];
  /** Events buffered per Observe subscriber before it is told it lost some. */
  readonly observeBuffer?: number;
  /** Called after every Run pass (metrics). */
  readonly onRunResult?: (result: GCRunResult, families: Family[]) => void;
}

const DEFAULT_OBSERVE_BUFFER = 16384;
/** A subscriber that takes nothing for this long no longer holds GC passes back. */
const OBSERVE_STALL_MS = 100;

/**
 * The GCRunner service: its definition, whose Run and Observe serializers accept
 * pre-encoded Buffers (kept records and events are encoded from the map bytes), and its
 * handlers. `deps.shutdown` ends calls (Observe streams too) when the server stops.
 */
export function gcRunnerService(deps: GCRunnerServiceDeps): ServiceRegistration {
  const { runner, log, shutdown } = deps;
  const implementation: grpc.UntypedServiceImplementation = {
    Run: serverStream(log, 'GCRunner/Run', async (req: GCRunRequestMsg, writer: StreamWriter<Buffer | object>, ctx) => {
      const family = parseOptionalFamily(req.family, 'family');
      const refs = parseMapRefs(req.maps, 'maps');
      const filter = await parseGCFilter(req.filter);
      // An entry outside `flow` is kept: the flow narrows what `filter` may remove, as a
      // filtered Flush selects with the same compiled DumpFilter (ctmaps.ts removeMatching).
      const flow = await parseDumpFilter(req.flow, ctNow(), 'flow');
      if (flow) filter.flow = (f: Family): EntryPredicate | null => compileFilter(flow, f);
      const tables = runner.select({ family, refs }); // validates refs before the pass starts
      if (tables.length === 0) throw new CtmapError('not-found', `family: no open CT maps for ${family ?? 'any family'}`);

      // Kept records (and progress updates) are encoded as they are made and flushed after
      // each batch, so the pass waits for the client (flow control) instead of buffering a
      // whole map.
      let pending: Array<Buffer | object> = [];
      const interval = req.progress_interval_ms ?? 0;
      let lastProgress = Date.now();
      const onProgress = interval > 0
        ? (p: GCPassProgress): void => {
            const now = Date.now();
            if (now - lastProgress < interval) return;
            lastProgress = now;
            pending.push({ progress: gcRunProgressMsg(p) });
          }
        : undefined;
      if (req.filter?.emit_kept) {
        filter.emitKept = (ref, keys, koff, values, voff) => pending.push(encodeKeptUpdate(ref, keys, koff, values, voff));
      }
      const flush = async (): Promise<void> => {
        const out = pending;
        pending = [];
        for (const m of out) await writer.write(m);
      };
      ctx.audit({ maps: tables.map((t) => refLabel(t.ref)), matchIps: req.filter?.match_ips?.length ?? 0, flow: flow !== undefined });
      const result = await runner.run({ family, refs, filter, signal: ctx.signal, afterBatch: flush, onProgress });
      const deleted = result.maps.reduce((n, m) => n + m.deleted, 0);
      ctx.audit({ deleted, natDeleted: result.natDeleted });
      // A manual pass is news for an operator as a scheduled one is: its counts at info.
      log.info(
        { maps: result.maps.map((m) => ({ map: refLabel(m.ref), alive: m.alive, deleted: m.deleted, skipped: m.skipped, refreshed: m.refreshed })), deleted, natDeleted: result.natDeleted, ms: Number(result.durationNs) / 1e6 },
        'gc: manual pass (GCRunner.Run) done',
      );
      await flush();
      deps.onRunResult?.(result, [...new Set(result.maps.map((m) => m.ref.family))]);
      await writer.write({ stats: gcRunStatsMsg(result) });
    }, shutdown),

    Observe: serverStream(log, 'GCRunner/Observe', async (req: GCFamilyRequestMsg, writer: StreamWriter<Buffer | object>, ctx) => {
      const family = parseOptionalFamily(req.family, 'family');
      const families = family ? [family] : deps.families;
      const queue = new BoundedQueue<GCEvent>(deps.observeBuffer ?? DEFAULT_OBSERVE_BUFFER);
      // Events are made only for what fits in the queue; the rest of a batch is counted as
      // lost without being built (500,000 dropped events cost a stalled subscriber's pass ~250 ms).
      const sub = merge(...families.map((f) => runner.engine.batches(f))).subscribe({
        next: (batch) => {
          const fit = Math.min(batch.deleted, queue.room);
          for (const e of eventsOf(batch, fit)) queue.push(e);
          queue.drop(batch.deleted - fit);
        },
        complete: () => queue.close(),
      });
      // The pass waits for this subscriber between batches while it keeps draining; once it
      // has fallen behind (lost events, or stalled for OBSERVE_STALL_MS), not again until it
      // has caught up (issue 12, item 8). It is told what it lost either way.
      const room = Math.min(SCAN_BATCH, queue.capacity);
      const removePacer = runner.engine.addPacer(() => queue.waitForRoom(room, OBSERVE_STALL_MS));
      const onAbort = () => queue.close();
      ctx.signal.addEventListener('abort', onAbort);
      try {
        for (let item = await queue.take(); item && !ctx.signal.aborted; item = await queue.take()) {
          if (item.kind === 'lost') {
            ctx.log.warn({ lost: item.count }, 'Observe subscriber fell behind; events dropped and reported');
            await writer.write({ lost: String(item.count), family: family ? familyEnum(family) : 'FAMILY_UNSPECIFIED' });
          } else {
            await writer.write(encodeGCEvent(item.value));
          }
        }
      } finally {
        removePacer();
        sub.unsubscribe();
        queue.close();
        ctx.signal.removeEventListener('abort', onAbort);
      }
      if (ctx.signal.aborted) throw ctx.signal.reason;
    }, shutdown),

    Status: unary(log, 'GCRunner/Status', async (): Promise<GCStatusResponseMsg> => {
      const s = deps.scheduler?.status();
      return {
        fixed_interval: s?.fixedInterval ?? false,
        max_interval_seconds: s?.maxIntervalSeconds ?? 0,
        families: deps.families.map((f) => {
          const fs = s?.families.find((x) => x.family === f);
          return {
            family: familyEnum(f),
            interval_seconds: fs?.intervalSeconds ?? 0,
            last_run_unix_ms: String(fs?.lastRunUnixMs ?? 0),
            next_run_unix_ms: String(fs?.nextRunUnixMs ?? 0),
            runs: String(fs?.runs ?? 0),
            deleted: String(fs?.deleted ?? 0),
            alive: String(fs?.alive ?? 0),
            last_ratio: fs?.lastRatio ?? 0,
            last_sequence: String(runner.engine.lastSequence(f)),
            last_pass_reason: fs?.lastPassReason ?? '',
            last_signal_source: fs?.lastSignalSource ?? '',
            signals_api: String(fs?.signals?.api ?? 0),
            signals_insert_failed: String(fs?.signals?.['insert-failed'] ?? 0),
            signals_pressure: String(fs?.signals?.pressure ?? 0),
          };
        }),
      };
    }, shutdown),

    Signal: unary(log, 'GCRunner/Signal', async (req: GCFamilyRequestMsg, ctx) => {
      const family = parseFamily(req.family, 'family');
      ctx.audit({ family });
      if (!deps.families.includes(family)) throw new CtmapError('not-found', `family: ${family} maps are not enabled`);
      if (!deps.scheduler) throw new CtmapError('failed-precondition', 'the GC scheduler is not running');
      deps.scheduler.signal(family);
      return {};
    }, shutdown),
  };
  return { definition: acceptEncodedResponses(services().GCRunner.service, ['Run', 'Observe']), implementation };
}
