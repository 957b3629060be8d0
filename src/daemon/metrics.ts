/**
 * Prometheus metrics under the names Cilium users already alert on (facts §6), ctmapd's
 * own datapath counters (ctmapd_datapath_conntrack_events_total), plus prom-client's
 * default process metrics, served as GET /metrics on --metrics-listen.
 *
 * Label values are Cilium's: family "ipv4" / "ipv6", protocol "TCP" / "non-TCP", run
 * status "completed" / "uncompleted", entry status "alive" / "deleted", NAT direction
 * "ingress" / "egress". Dashboards written for the Cilium agent work unchanged.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { CtmapError, invalidArgument, quote } from '../errors';
import type { DatapathCounters, FateCounters } from '../datapath/side-maps';
import type { Family } from '../maps/addr';
import { CT_DATAPATH_STATS_COUNTERS, CT_FATE_STATS_COUNTERS } from '../maps/ctmap/layout';
import type { GCRunResult } from '../maps/ctmap/gc/types';
import type { MigrationReport } from '../maps/lifecycle';
import type { NatGCStats } from '../maps/nat/purge';
import type { CtKind } from '../maps/ctmap/spec';
import type { Logger } from './logger';

type ProtocolLabel = 'TCP' | 'non-TCP';

/** Cilium's protocol label of a CT map kind. */
function protocolLabel(kind: CtKind): ProtocolLabel {
  return kind === 'tcp' ? 'TCP' : 'non-TCP';
}

// Prometheus's default buckets stop at 10 s; a pass over a large map (up to 16 Mi entries)
// can take longer, and a histogram that puts every slow pass in +Inf cannot show a trend.
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** One registry with ctmapd's metrics: one per daemon. Separate instances do not share state (tests start several). */
export class CtmapdMetrics {
  readonly registry = new Registry();

  readonly #gcRuns = new Counter({
    name: 'cilium_datapath_conntrack_gc_runs_total',
    help: 'Number of conntrack garbage collection runs, by family, protocol and status',
    labelNames: ['family', 'protocol', 'status'] as const,
    registers: [this.registry],
  });
  readonly #gcEntries = new Gauge({
    name: 'cilium_datapath_conntrack_gc_entries',
    help: 'Alive and deleted conntrack entries at the end of the last garbage collection run',
    labelNames: ['family', 'protocol', 'status'] as const,
    registers: [this.registry],
  });
  readonly #gcDuration = new Histogram({
    name: 'cilium_datapath_conntrack_gc_duration_seconds',
    help: 'Duration of conntrack garbage collection runs in seconds',
    labelNames: ['family', 'protocol', 'status'] as const,
    buckets: DURATION_BUCKETS,
    registers: [this.registry],
  });
  readonly #natEntries = new Gauge({
    name: 'cilium_datapath_nat_gc_entries',
    help: 'Alive and deleted NAT entries at the end of the last orphan NAT purge',
    labelNames: ['family', 'direction', 'status'] as const,
    registers: [this.registry],
  });

  readonly #gcPasses = new Counter({
    name: 'ctmapd_gc_passes_total',
    help: 'Scheduled conntrack GC passes by family and why they ran: initial (at start), periodic (the interval), signal (an early pass asked for)',
    labelNames: ['family', 'reason'] as const,
    registers: [this.registry],
  });
  readonly #fillUpSignals = new Counter({
    name: 'ctmapd_datapath_fill_up_signals_total',
    help: 'Fill-up signals read from the datapath\'s event ring, by family, reason (insert-failed, pressure) and outcome: what the GC scheduler did with it (started, coalesced, stopped, disabled), or below-share for a pressure signal whose map had not reached --ct-fill-up-share since its last pass',
    labelNames: ['family', 'reason', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly #ringLost = new Counter({
    name: 'ctmapd_datapath_events_lost_total',
    help: 'Records the datapath could not write into the event ring (it was full), as reported in-band by the records that followed',
    registers: [this.registry],
  });

  #datapathSource?: () => DatapathCounters | undefined;
  /**
   * The datapath's counters (struct ct_datapath_stats summed over CPUs), one series per
   * counter, read from the stats map at scrape time: the programs count in the kernel,
   * so there is nothing to record between scrapes.
   */
  readonly #datapathEvents: Counter<'event'> = new Counter({
    name: 'ctmapd_datapath_conntrack_events_total',
    help: 'Events counted by the conntrack datapath (bpf/ct_datapath.bpf.c) since its stats map was created, summed over CPUs, by event (the ctmapd_ct_stats counter name)',
    labelNames: ['event'] as const,
    registers: [this.registry],
    collect: () => {
      const counters = this.#datapathSource?.();
      if (!counters) return;
      // Absolute values from the map: reset, then set each series to its count.
      this.#datapathEvents.reset();
      for (const event of CT_DATAPATH_STATS_COUNTERS) this.#datapathEvents.inc({ event }, Number(counters[event]));
    },
  });
  #fateSource?: () => FateCounters | undefined;
  /** Socket fate-sharing's counters (struct ct_fate_stats), read like the datapath's. */
  readonly #fateEvents: Counter<'event'> = new Counter({
    name: 'ctmapd_datapath_fate_events_total',
    help: 'Events counted by socket fate-sharing (bpf/ct_fate.bpf.c, ctmap fate attach) since its stats map was created, summed over CPUs, by event (the ctmapd_fate_stats counter name: keys_recorded, expired, storage_full, key_missing, events_lost)',
    labelNames: ['event'] as const,
    registers: [this.registry],
    collect: () => {
      const counters = this.#fateSource?.();
      if (!counters) return;
      this.#fateEvents.reset();
      for (const event of CT_FATE_STATS_COUNTERS) this.#fateEvents.inc({ event }, Number(counters[event]));
    },
  });
  readonly #migrations = new Counter({
    name: 'ctmapd_map_migrations_total',
    help: 'Pinned maps migrated, resumed, rolled back or recreated at start because their attributes differed from the configuration, by map and outcome',
    labelNames: ['map', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly #migrationEntries = new Counter({
    name: 'ctmapd_map_migration_entries_total',
    help: 'Entries of migrated maps: copied into the new map, or dropped because the new map is smaller (lowest lifetime first) or, with --allow-map-recreate, recreated',
    labelNames: ['map', 'status'] as const,
    registers: [this.registry],
  });

  /** With defaultMetrics (the default), also collects prom-client's process_* and nodejs_* metrics. */
  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * Records one GC pass of `family`. Per protocol present in result.maps (per-cluster maps
   * added to their kind): runs_total += 1 with status completed (ok) or uncompleted, the
   * entries gauges set to the summed alive / deleted counts (also for a failed pass: what
   * it got through, as Cilium does), and the pass duration observed. A failed pass with no
   * maps in its result counts as an uncompleted run of both protocols.
   */
  recordGCRun(result: GCRunResult, family: Family, ok: boolean): void {
    const status = ok ? 'completed' : 'uncompleted';
    const seconds = Number(result.durationNs) / 1e9;
    const totals = new Map<ProtocolLabel, { alive: number; deleted: number }>();
    for (const m of result.maps) {
      const protocol = protocolLabel(m.ref.kind);
      const t = totals.get(protocol) ?? { alive: 0, deleted: 0 };
      t.alive += m.alive;
      t.deleted += m.deleted;
      totals.set(protocol, t);
    }
    if (totals.size === 0 && !ok) {
      for (const protocol of ['TCP', 'non-TCP'] as const) {
        this.#gcRuns.inc({ family, protocol, status });
        this.#gcDuration.observe({ family, protocol, status }, seconds);
      }
      return;
    }
    for (const [protocol, t] of totals) {
      this.#gcRuns.inc({ family, protocol, status });
      this.#gcEntries.set({ family, protocol, status: 'alive' }, t.alive);
      this.#gcEntries.set({ family, protocol, status: 'deleted' }, t.deleted);
      this.#gcDuration.observe({ family, protocol, status }, seconds);
    }
  }

  /** Counts one scheduled GC pass of `family` started for `reason` (GCPassReason). */
  recordGCPass(family: Family, reason: string): void {
    this.#gcPasses.inc({ family, reason });
  }

  /** Counts a fill-up signal of the datapath and what became of it. */
  recordFillUpSignal(family: Family, reason: string, outcome: string): void {
    this.#fillUpSignals.inc({ family, reason, outcome });
  }

  /** Adds losses the event ring's records reported in-band. */
  recordRingLoss(lost: number): void {
    if (lost > 0) this.#ringLost.inc(lost);
  }

  /**
   * Where ctmapd_datapath_conntrack_events_total reads the datapath's counters at each
   * scrape (the daemon's DatapathSideMaps). A source that returns undefined leaves the
   * series as they were.
   */
  setDatapathSource(source: () => DatapathCounters | undefined): void {
    this.#datapathSource = source;
  }

  /** Where ctmapd_datapath_fate_events_total reads fate-sharing's counters at each scrape. */
  setFateSource(source: () => FateCounters | undefined): void {
    this.#fateSource = source;
  }

  /**
   * Records the migrations of a start: migrations_total += 1 per report (outcome label as
   * in the report, "-" as "_"), and its copied / dropped entries added to the entries
   * counter of that map (created at 0 so a migration that dropped nothing shows 0).
   */
  recordMigrations(reports: readonly MigrationReport[]): void {
    for (const r of reports) {
      this.#migrations.inc({ map: r.name, outcome: r.outcome.replace('-', '_') });
      this.#migrationEntries.inc({ map: r.name, status: 'copied' }, r.entriesCopied);
      this.#migrationEntries.inc({ map: r.name, status: 'dropped' }, r.entriesDropped);
    }
  }

  /**
   * Cilium's cilium_bpf_map_pressure: a map's entries / max_entries, per map name, with the
   * cluster of a per-cluster map (0: global). Set by recordMapPressure after GC passes.
   */
  readonly #mapPressure = new Gauge({
    name: 'cilium_bpf_map_pressure',
    help: 'Fill level of a BPF map: entries / max_entries, for the CT maps (alive entries at the end of each GC pass of their family) and the SNAT maps (counted after it); cluster_id 0 = a global map',
    labelNames: ['map_name', 'cluster_id'] as const,
    registers: [this.registry],
  });
  /** The series last set per family, so that a map gone since (a cluster left) is dropped. */
  readonly #pressureSeries = new Map<Family, Set<string>>();

  /**
   * Sets cilium_bpf_map_pressure for every map of one pass of `family`, and drops the
   * series of that family's maps the pass no longer saw (closed: their cluster left).
   */
  recordMapPressure(family: Family, maps: ReadonlyArray<{ name: string; clusterId: number; entries: number; maxEntries: number }>): void {
    const seen = new Set<string>();
    for (const m of maps) {
      const labels = { map_name: m.name, cluster_id: String(m.clusterId) };
      this.#mapPressure.set(labels, m.maxEntries > 0 ? m.entries / m.maxEntries : 0);
      seen.add(JSON.stringify(labels));
    }
    for (const key of this.#pressureSeries.get(family) ?? []) if (!seen.has(key)) this.#mapPressure.remove(JSON.parse(key));
    this.#pressureSeries.set(family, seen);
  }

  /** Sets the NAT gauges from one orphan NAT purge of `family`. */
  recordNatPurge(family: Family, stats: NatGCStats): void {
    this.#natEntries.set({ family, direction: 'ingress', status: 'alive' }, stats.ingressAlive);
    this.#natEntries.set({ family, direction: 'ingress', status: 'deleted' }, stats.ingressDeleted);
    this.#natEntries.set({ family, direction: 'egress', status: 'alive' }, stats.egressAlive);
    this.#natEntries.set({ family, direction: 'egress', status: 'deleted' }, stats.egressDeleted);
  }
}

export interface MetricsServer {
  /** The bound "HOST:PORT" (IPv6 in brackets), with the actual port when 0 was asked for. */
  readonly address: string;
  /** Stops listening and drops open connections. Idempotent; never rejects. */
  close(): Promise<void>;
}

/**
 * Serves `registry` (a CtmapdMetrics' registry) on `hostPort` ("HOST:PORT", IPv6 as
 * "[addr]:port"): GET or HEAD /metrics -> 200 in the Prometheus text format with its
 * content type; another method on /metrics -> 405; any other path -> 404. The address is
 * always the operator's explicit --metrics-listen, so a non-loopback host is served, with a
 * warning (the endpoint has no authentication). Throws CtmapError: invalid-argument for a
 * malformed hostPort, failed-precondition when listening fails (address in use, …).
 */
export async function startMetricsServer(hostPort: string, log: Logger, registry: Registry): Promise<MetricsServer> {
  const { host, port } = parseHostPort(hostPort);
  const server = http.createServer((req, res) => void serve(req, res, registry, log));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(new CtmapError('failed-precondition', `metrics listen ${hostPort}: ${err.message}`, { cause: err }));
    server.once('error', onError);
    server.listen({ host, port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  // After a successful listen, an error is a per-connection problem: log it, keep serving.
  server.on('error', (err) => log.error({ err }, 'metrics server error'));

  const bound = server.address() as net.AddressInfo;
  const address = `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`;
  if (!isLoopbackHost(host)) {
    log.warn({ address }, 'metrics endpoint listens on a non-loopback address; anyone who can reach it can read it');
  }
  log.info({ address }, 'metrics endpoint listening');

  let closing: Promise<void> | undefined;
  return {
    address,
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections (Prometheus keeps its scrape connection open) would hold
        // close() until they time out.
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

async function serve(req: http.IncomingMessage, res: http.ServerResponse, registry: Registry, log: Logger): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://metrics').pathname;
  if (path !== '/metrics') return reply(res, 404, 'not found\n');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return reply(res, 405, 'method not allowed\n');
  }
  try {
    const body = await registry.metrics();
    res.writeHead(200, { 'Content-Type': registry.contentType, 'Content-Length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  } catch (err) {
    log.error({ err }, 'metrics: collecting failed');
    if (!res.headersSent) reply(res, 500, 'collecting metrics failed\n');
    else res.destroy();
  }
}

function reply(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function parseHostPort(hostPort: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(hostPort);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw invalidArgument('metrics-listen', `want HOST:PORT (IPv6 as [addr]:port), got ${quote(hostPort)}`);
  return { host: m[1] ?? m[2], port };
}

const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** True for 127.0.0.0/8, ::1 (any spelling), IPv4-mapped 127/8 and "localhost"; false for anything else, names included. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost') return true;
  const mapped = h.startsWith('::ffff:') ? h.slice('::ffff:'.length) : h;
  if (net.isIPv4(mapped)) return LOOPBACK.check(mapped, 'ipv4');
  return net.isIPv6(h) && LOOPBACK.check(h, 'ipv6');
}
