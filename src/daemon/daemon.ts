/**
 * Wires the daemon together: backend -> bpffs -> CT maps -> gRPC services -> SERVING.
 * `startDaemon` is what bin/ctmapd runs and what tests start in-process.
 */
import { ClusterCtMaps } from '../cluster/cluster-maps';
import { Membership } from '../cluster/membership';
import type { MembershipSource } from '../cluster/membership-types';
import { ConfigDirSource } from '../cluster/sources/config-dir';
import { datapathSettingsFrom } from '../datapath/settings';
import { AttachedDatapathReloader } from '../datapath/reloader';
import { pruneVanishedNamespaces } from '../datapath/records';
import { DatapathSideMaps, eventSideMapOptionsFrom } from '../datapath/side-maps';
import { FillUpPressure } from '../datapath/fill-up';
import { RingBatch, RingReader } from '../datapath/ring-reader';
import { ensureBpffs, ensurePinDir } from '../maps/bpffs';
import { lockBpfRoot } from '../maps/root-lock';
import { selectBackend } from '../maps/backend';
import { DatapathReloader, MapLifecycle, MigrationHooks, MigrationReport } from '../maps/lifecycle';
import { FLUSH_TIME, GCEngine } from '../maps/ctmap/gc/engine';
import { GCRunner } from '../maps/ctmap/gc/runner';
import { GCScheduler } from '../maps/ctmap/gc/scheduler';
import { CtEventBus } from '../maps/ctmap/events/bus';
import { connectGCToBus } from '../maps/ctmap/events/producers';
import { conditionalDeleter } from '../maps/ctmap/gc/deleter';
import { CtTables } from '../maps/ctmap/tables';
import { NatCoupling } from '../maps/nat/coupling';
import { purgeOrphanNatEntries } from '../maps/nat/purge';
import { NatTables, natTableLabel } from '../maps/nat/tables';
import { liveCursor } from '../maps/registry';
import type { Family } from '../maps/addr';
import type { GCRunResult } from '../maps/ctmap/gc/types';
import { MapRef, refLabel } from '../maps/ctmap/spec';
import { globalsDir } from '../maps/cluster-spec';
import type { MapBackend } from '../maps/types';
import { Config, natGlobalMax } from '../config/config';
import { clusterCtMapsService } from '../server/services/clusterctmaps';
import { ctEventsService } from '../server/services/ctevents';
import { ctMapsService } from '../server/services/ctmaps';
import { gcRunnerService } from '../server/services/gcrunner';
import { natMapsService } from '../server/services/natmaps';
import { CtmapdMetrics, MetricsServer, startMetricsServer } from './metrics';
import type { Logger } from './logger';
import { ServerHandle, startServer } from '../server/server';
import { Teardown } from './teardown';

/** What a caller embedding the daemon may plug in (bin/ctmapd passes test hooks only). */
export interface DaemonOptions {
  /**
   * Moves the datapath onto migrated maps between the pin swap and the delta copy (see
   * DatapathReloader). Default: on kernel maps, every datapath `ctmap datapath attach`
   * recorded is reattached (src/datapath/reloader.ts); on the memory backend, nothing.
   */
  readonly reloader?: DatapathReloader;
  /** Test-only: observe, slow down or stop migrations at chosen steps. */
  readonly migrationHooks?: MigrationHooks;
}

export interface Daemon {
  readonly backend: MapBackend;
  /** What this start did to pinned maps whose attributes changed (empty when nothing did). */
  readonly migrations: readonly MigrationReport[];
  readonly tables: CtTables;
  readonly nat: NatTables;
  readonly clusters: ClusterCtMaps;
  /** The datapath's side maps: its counters and the settings from these flags. */
  readonly datapath: DatapathSideMaps;
  /**
   * The reader of the datapath's event ring (kernel backend, --ct-events other than none):
   * its `batches` carry NEW/CLOSE events, in-band loss counts and fill-up signals (the
   * daemon itself turns the signals into early GC passes).
   */
  readonly ring?: RingReader;
  /** Entries created since each family's last GC pass, against the fill-up share. */
  readonly fillUp: FillUpPressure;
  readonly membership: Membership;
  readonly gc: GCRunner;
  /** The CT lifecycle event bus: producers publish here, CTEvents subscribers read it. */
  readonly events: CtEventBus;
  readonly scheduler: GCScheduler;
  readonly metrics: CtmapdMetrics;
  readonly metricsServer?: MetricsServer;
  readonly server: ServerHandle;
  /**
   * Drains the teardown stack: serving ends first (health NOT_SERVING, streams ended,
   * server closed within `graceMs`, default SHUTDOWN_GRACE_MS: how long open calls may
   * finish before they are cancelled), then the clustermesh sources, the GC scheduler (its
   * pass aborted), the metrics server, the maps; pins are kept. Every step runs; rejects
   * with the first that failed. Idempotent.
   */
  stop(graceMs?: number): Promise<void>;
}

/** How long stop() (SIGTERM) lets open calls finish; a container's termination grace period must exceed it. */
export const SHUTDOWN_GRACE_MS = 5000;

/**
 * Starts the daemon: backend, bpffs, the bpf-root's lock (a second daemon on the same
 * root is refused, failed-precondition naming the holder's pid), maps (migrating pinned maps whose attributes changed,
 * finishing or undoing migrations a crash interrupted), services, SERVING. Rejects with
 * what went wrong (a CtmapError for configuration and map problems); everything started
 * by then is stopped and closed again (the teardown stack, as at stop()) and pins are left
 * recoverable.
 */
export async function startDaemon(config: Config, log: Logger, opts: DaemonOptions = {}): Promise<Daemon> {
  const teardown = new Teardown(log);
  try {
    return await bringUp(config, log, opts, teardown);
  } catch (err) {
    // A step that failed was logged; the caller needs what made the start fail.
    await teardown.drain().catch(() => undefined);
    throw err;
  }
}

/**
 * startDaemon's work: everything it starts is pushed on `teardown` in start order, so
 * drain() (a failed start, stop()) undoes it last started first. Pins stay: a migration
 * past its commit point resumes at the next start.
 */
async function bringUp(config: Config, log: Logger, opts: DaemonOptions, teardown: Teardown): Promise<Daemon> {
  const backend = selectBackend(config.backend, log);
  if (backend.name === 'kernel') {
    ensureBpffs(config.bpfRoot, log);
    ensurePinDir(globalsDir(config.bpfRoot));
  }
  // One owner per bpf-root (issue 12 item 4): taken before any map is opened, dropped last.
  const rootLock = lockBpfRoot(config.bpfRoot, backend.name);
  teardown.push('bpf-root lock', () => rootLock.release());
  // Records of vanished network namespaces hold programs, and through them maps (issue 12
  // item 6): gone before a migration would leave its old maps held by them.
  if (backend.name === 'kernel') pruneDatapathRecords(config.bpfRoot, log.child({ component: 'datapath' }));
  const mapsConfig = {
    bpfRoot: config.bpfRoot,
    enableIPv4: config.enableIpv4,
    enableIPv6: config.enableIpv6,
    ctTcpMax: config.bpfCtGlobalTcpMax,
    ctAnyMax: config.bpfCtGlobalAnyMax,
    distributedLru: config.bpfDistributedLru,
    clusterIdMax: config.maxConnectedClusters,
  };
  // Kernel maps: datapaths ctmap attached are moved onto migrated maps before the delta copy.
  const reloader = opts.reloader ?? (backend.name === 'kernel' ? new AttachedDatapathReloader(config.bpfRoot, log.child({ component: 'datapath' })) : undefined);
  const lifecycle = new MapLifecycle({ backend, log, allowRecreate: config.allowMapRecreate, reloader, hooks: opts.migrationHooks });
  // The old maps of migrations not completed (none once complete() has run).
  teardown.push('map lifecycle', () => lifecycle.abandon());
  const tables = await CtTables.open(lifecycle, mapsConfig);
  teardown.push('ct maps', () => tables.close());
  const nat = await NatTables.open(lifecycle, { ...mapsConfig, natMax: natGlobalMax(config) });
  teardown.push('nat maps', () => nat.close());
  const deleter = await conditionalDeleter(backend, log);
  teardown.push('gc deleter', () => deleter.close());
  const engine = new GCEngine(deleter, log);
  teardown.push('gc engine', () => engine.close());
  const families = [...new Set(tables.active().map((t) => t.ref.family))];
  // Every deleted CT entry takes its SNAT mapping with it (facts §6, NatMapNext4/6).
  const coupling = new NatCoupling(nat, families.map((f) => engine.batches(f)), log);
  teardown.push('nat coupling', () => coupling.close()); // closed before the NAT maps
  const gc = new GCRunner(tables, engine, coupling);
  // The CT lifecycle event stream (issue 13): GC passes (Flush and cluster leaves are GC
  // passes with their own reason) and Delete publish DESTROY; the datapath's ring reader
  // publishes NEW / CLOSE and its loss count (bus.publish / bus.reportSourceLoss).
  const events = new CtEventBus();
  teardown.push('ct event bus', () => events.close());
  const disconnectGCEvents = connectGCToBus(engine, families, events);
  teardown.push('gc events', () => disconnectGCEvents());
  // A leaving cluster's entries go through the GC: events for Observe, SNAT pairs removed.
  const flushThroughGC = async (refs: MapRef[]): Promise<number> => {
    if (refs.length === 0) return 0;
    const result = await gc.run({ refs, filter: { removeExpired: true, time: FLUSH_TIME }, eventReason: 'cluster-leave' });
    return result.maps.reduce((n, m) => n + m.deleted, 0);
  };
  const clusters = await ClusterCtMaps.open(backend, lifecycle, { ...mapsConfig, natMax: natGlobalMax(config) }, tables, nat, flushThroughGC, log);
  teardown.push('cluster maps', () => clusters.close()); // unregisters the per-cluster maps from the tables
  // The datapath's counters and settings: a datapath loaded later counts into these
  // maps and runs with these flags (src/datapath/side-maps.ts). Opened before the
  // migrations complete: their reloader loads the datapath, which needs them.
  const datapath = DatapathSideMaps.open(
    backend,
    config.bpfRoot,
    datapathSettingsFrom(config),
    log.child({ component: 'datapath' }),
    eventSideMapOptionsFrom(config),
  );
  teardown.push('datapath side maps', () => datapath.close());
  // Reloader, delta copies, `_old` pins removed: every map is final before anything is served.
  await lifecycle.complete();

  const metrics = new CtmapdMetrics();
  // Read at each scrape; nothing once the maps are closed at shutdown.
  metrics.setDatapathSource(() => (datapath.closed ? undefined : datapath.counters()));
  metrics.setFateSource(() => (datapath.closed ? undefined : datapath.fateCounters()));
  const migrations = lifecycle.reports();
  metrics.recordMigrations(migrations);
  const fillUp = new FillUpPressure(() => datapath.counters(), datapath.thresholds, families);
  const membership = new Membership(clusters, log.child({ component: 'membership' }));
  teardown.push('membership', () => membership.close());
  // Periodic passes remove expired entries (facts §6); every pass, scheduled or asked
  // for over gRPC, feeds the Cilium metrics.
  /**
   * cilium_bpf_map_pressure after a pass of `family`: its CT maps from the pass's alive
   * counts (a pass over only some maps updates those), its SNAT maps counted off the event
   * loop. Never rejects: a map closed meanwhile (its cluster left) is skipped.
   */
  const recordPressure = async (family: Family, result: GCRunResult): Promise<void> => {
    try {
      const maps: Array<{ name: string; clusterId: number; entries: number; maxEntries: number }> = [];
      for (const t of tables.active().filter((x) => x.ref.family === family)) {
        const m = result.maps.find((r) => r.ref.kind === t.ref.kind && r.ref.clusterId === t.ref.clusterId);
        if (m) maps.push({ name: t.map.spec.name, clusterId: t.ref.clusterId, entries: m.alive, maxEntries: t.map.spec.maxEntries });
      }
      for (const t of nat.active().filter((x) => x.ref.family === family)) {
        const cursor = liveCursor(t, natTableLabel(t.ref));
        let entries = 0;
        try {
          for (let b = await cursor.nextAsync(); b; b = await cursor.nextAsync()) entries += b.count;
        } finally {
          cursor.close();
        }
        maps.push({ name: t.map.spec.name, clusterId: t.ref.clusterId, entries, maxEntries: t.map.spec.maxEntries });
      }
      metrics.recordMapPressure(family, maps);
    } catch (err) {
      log.debug({ err, family }, 'map pressure: a map went away while it was counted');
    }
  };
  const scheduler = new GCScheduler({
    families,
    log: log.child({ component: 'gc-scheduler' }),
    fixedIntervalSeconds: config.conntrackGcInterval,
    maxIntervalSeconds: config.conntrackGcMaxInterval,
    runPass: async (family, reason, signal) => {
      // Creates count towards the next fill-up from the start of this pass (fill-up.ts).
      if (!datapath.closed) fillUp.passStarted(family);
      metrics.recordGCPass(family, reason);
      try {
        const result = await gc.run({ family, filter: { removeExpired: true }, signal });
        metrics.recordGCRun(result, family, true);
        await recordPressure(family, result);
        log.debug({ family, reason, deleted: result.maps.reduce((n, m) => n + m.deleted, 0), ratio: result.ratio }, 'gc pass');
        return result;
      } catch (err) {
        metrics.recordGCRun({ maps: [], natDeleted: 0, durationNs: 0n, ratio: 0 }, family, false);
        throw err;
      }
    },
    // After a signal ("NAT map filling up"), drop SNAT entries whose CT entry is gone.
    afterSignal: async (family, signal) => {
      for (const natTable of nat.active().filter((t) => t.ref.family === family)) {
        const ct = (kind: 'tcp' | 'any') => tables.get({ family, kind, clusterId: natTable.ref.clusterId }, 'map');
        const stats = await purgeOrphanNatEntries(natTable, ct('tcp'), ct('any'), signal);
        metrics.recordNatPurge(family, stats);
        log.info({ family, ...stats }, 'purged orphan NAT entries');
      }
    },
  });

  // The server's grace period: none for a failed start, stop()'s at stop.
  let graceMs = 0;
  const shutdown = new AbortController();
  // What every service is given besides its own domain objects.
  const base = { log, shutdown: shutdown.signal };
  const server = await startServer({
    config,
    log,
    shutdown,
    services: [
      ctMapsService({ ...base, tables, nat, gc, datapath, migrations, bpfRoot: config.bpfRoot }),
      ctEventsService({ ...base, bus: events, subscriberBuffer: config.ctEventsBuffer }),
      natMapsService({ ...base, nat, ct: tables }),
      clusterCtMapsService({ ...base, membership }),
      gcRunnerService({
        ...base,
        runner: gc,
        scheduler,
        families,
        onRunResult: (result, fams) => {
          for (const f of fams) {
            const own = { ...result, maps: result.maps.filter((m) => m.ref.family === f) };
            scheduler.recordExternalPass(f, own);
            metrics.recordGCRun(own, f, true);
            void recordPressure(f, own);
          }
        },
      }),
    ],
  });
  teardown.push('grpc server', () => server.shutdown(graceMs));
  let metricsServer: MetricsServer | undefined;
  if (config.metricsListen) {
    const started = await startMetricsServer(config.metricsListen, log, metrics.registry);
    teardown.push('metrics server', () => started.close());
    metricsServer = started;
  }
  scheduler.start();
  teardown.push('gc scheduler', () => scheduler.stop({ abort: true }));
  // The datapath's ring (issue 13): fill-up signals ask the scheduler for early passes.
  // Stopped (its fds closed) before the scheduler and the side maps it reads.
  let ring: RingReader | undefined;
  const ringFd = datapath.eventRing();
  if (ringFd && config.ctEvents !== 'none') {
    const reader = RingReader.open({ ...ringFd, log: log.child({ component: 'event-ring' }) });
    teardown.push('event ring reader', () => reader.stop());
    reader.batches.subscribe((batch) => {
      // NEW and CLOSE (fate expiry included) join the one lifecycle stream, in ring order,
      // and the ring's in-band loss count reaches subscribers as a source loss.
      if (batch.lost > 0) events.reportSourceLoss(batch.lost);
      if (batch.events.length > 0) events.publish(batch.events);
      onRingBatch(batch, { scheduler, fillUp, metrics, datapath, log });
    });
    reader.start();
    ring = reader;
  }
  // Clustermesh: each remote cluster's etcd says which id it has; claims join, releases leave.
  const sources: MembershipSource[] = [];
  if (config.clustermeshConfig) {
    const source = new ConfigDirSource({
      dir: config.clustermeshConfig,
      sink: membership,
      log: log.child({ component: 'clustermesh' }),
      graceMs: config.clustermeshEtcdGrace * 1000,
    });
    // stop() releases nothing (the maps stay pinned) and is safe on a half-started source.
    teardown.push('clustermesh source', () => source.stop());
    await source.start();
    sources.push(source);
  }
  membership.reconcileAfterSync(sources, config.clustermeshReconcileGrace * 1000);
  server.markServing();
  // Serving ends first: health NOT_SERVING and every call and stream ended before anything
  // they use stops. The same idempotent shutdown as the "grpc server" step, which then
  // finds it done; that one covers a start failing before this point.
  teardown.push('serving', () => server.shutdown(graceMs));
  log.info(
    { addresses: server.addresses, backend: backend.name, maps: tables.active().map((t) => ({ map: refLabel(t.ref), pin: t.map.spec.pinPath, maxEntries: t.map.spec.maxEntries })) },
    'ctmapd serving',
  );

  let stopping: Promise<void> | undefined;
  return {
    backend,
    migrations,
    tables,
    nat,
    clusters,
    datapath,
    ring,
    fillUp,
    membership,
    gc,
    events,
    scheduler,
    metrics,
    metricsServer,
    server,
    stop(grace = SHUTDOWN_GRACE_MS) {
      stopping ??= (async () => {
        graceMs = grace;
        await teardown.drain();
        log.info('ctmapd stopped; maps stay pinned');
      })();
      return stopping;
    },
  };
}

/**
 * One drained batch of the event ring: losses into the metrics, and each fill-up signal
 * to the scheduler. An insert failure always asks for a pass; a pressure signal only when
 * the family's creates since its last pass reached the share (FillUpPressure), read once
 * per batch and family however many signals the batch holds. The scheduler coalesces.
 */
function onRingBatch(
  batch: RingBatch,
  d: { scheduler: GCScheduler; fillUp: FillUpPressure; metrics: CtmapdMetrics; datapath: DatapathSideMaps; log: Logger },
): void {
  d.metrics.recordRingLoss(batch.lost);
  if (batch.fillUps.length === 0 || d.datapath.closed) return;
  const counters = d.datapath.counters();
  for (const s of batch.fillUps) {
    if (s.reason === 'pressure' && !d.fillUp.reached(s.family, s.kind, counters)) {
      d.metrics.recordFillUpSignal(s.family, s.reason, 'below-share');
      continue;
    }
    const outcome = d.scheduler.signal(s.family, s.reason);
    d.metrics.recordFillUpSignal(s.family, s.reason, outcome);
    if (outcome === 'started') {
      d.log.info({ family: s.family, kind: s.kind, clusterId: s.clusterId, reason: s.reason, created: d.fillUp.createdSincePass(s.family, counters) }, 'ct map filling up: early gc pass');
    }
  }
}

/**
 * Removes, and logs, the datapath records of network namespaces that are gone
 * (pruneVanishedNamespaces). A failure is logged and does not stop the start: the records
 * only hold memory, and `ctmap datapath prune` can be run later.
 */
function pruneDatapathRecords(bpfRoot: string, log: Logger): void {
  try {
    const r = pruneVanishedNamespaces(bpfRoot);
    if ('refused' in r) log.warn({ reason: r.refused }, 'datapath records of vanished network namespaces are not pruned');
    for (const p of r.pruned) {
      log.info({ netns: p.netns, ifindex: p.ifindex, unpinned: p.pins }, 'pruned the datapath record of a network namespace that is gone: its programs, and the maps only they held, are freed');
    }
  } catch (err) {
    log.error({ err }, 'pruning the datapath records of vanished network namespaces failed; ctmap datapath prune can retry');
  }
}
