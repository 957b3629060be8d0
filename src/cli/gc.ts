/**
 * `ctmap gc run`: one GCRunner.Run pass removing expired entries (and, with --ip, the
 * entries of those addresses), narrowed to the flows the `ct list` criteria select
 * (GCRunRequest.flow) and to the maps of a family and cluster; prints each map's counts.
 * On a terminal, stderr shows the pass's progress updates on one line.
 */
import type * as grpc from '@grpc/grpc-js';
import { ctMapsClient, gcRunnerClient } from '../api/clients';
import type { MapRefMsg } from '../api/ct-proto';
import type { GCRunProgressMsg, GCRunRequestMsg, GCRunStatsMsg, GCRunUpdateMsg } from '../api/gc-proto';
import type { CliCommand } from './args';
import { CliRpcError, connection, rpcError } from './client';
import { dumpFilterOf, noCriteria, selectedMaps } from './ct';
import type { Io } from './datapath';
import { progressOf } from './progress';

type GcRunCommand = Extract<CliCommand, { kind: 'gc-run' }>;

const FAMILY = { ipv4: 'FAMILY_IPV4', ipv6: 'FAMILY_IPV6' } as const;
/** How often the daemon is asked for a progress update when there is a terminal to show it. */
const PROGRESS_INTERVAL_MS = 200;

const mapText = (m: MapRefMsg): string =>
  `${m.family === 'FAMILY_IPV6' ? 'IPv6' : 'IPv4'} ${m.kind === 'MAP_KIND_TCP' ? 'TCP' : 'any'} ${m.cluster_id ? `cluster ${m.cluster_id}` : 'global'}`;

/** The status line of a progress update. */
export function progressText(p: GCRunProgressMsg): string {
  return `gc run: ${mapText(p.map)} (map ${Math.min(p.maps_done + 1, p.maps_total)}/${p.maps_total}): ${p.scanned} scanned, ${p.deleted} deleted so far`;
}

/**
 * The GCRunRequest of the command: every open map of the family with `--cluster-id all`
 * (the daemon chooses), else the cluster's maps as ActiveMaps lists them.
 */
async function request(cmd: GcRunCommand, progress: boolean): Promise<GCRunRequestMsg> {
  let maps: MapRefMsg[] = [];
  if (cmd.clusterId !== 'all') {
    const ct = ctMapsClient(...connection(cmd.server));
    try {
      maps = await selectedMaps(ct, cmd);
    } finally {
      ct.close();
    }
  }
  return {
    family: cmd.family === undefined ? 'FAMILY_UNSPECIFIED' : FAMILY[cmd.family],
    maps,
    filter: { remove_expired: true, time: String(cmd.time ?? 0), match_ips: [...cmd.ips] },
    flow: noCriteria(cmd.filter) ? null : dumpFilterOf(cmd.filter, false),
    progress_interval_ms: progress ? PROGRESS_INTERVAL_MS : 0,
  };
}

/** Runs the pass; resolves with 0 after printing the stats, rejects with CliRpcError. */
export async function gcRun(cmd: GcRunCommand, io: Io): Promise<number> {
  const progress = progressOf(io, 0);
  const req = await request(cmd, progress.active);
  const client = gcRunnerClient(...connection(cmd.server));
  const stats = await new Promise<GCRunStatsMsg>((resolve, reject) => {
    let last: GCRunStatsMsg | undefined;
    const stream = client.Run(req);
    stream.on('data', (u: GCRunUpdateMsg) => {
      if (u.progress) progress.update(progressText(u.progress));
      if (u.stats) last = u.stats;
    });
    stream.on('error', (err: grpc.ServiceError) => reject(rpcError('GCRunner.Run', cmd.server, err)));
    stream.on('end', () => (last ? resolve(last) : reject(new CliRpcError('GCRunner.Run: the stream ended without the final stats'))));
  }).finally(() => {
    progress.done();
    client.close();
  });
  if (cmd.output === 'json') {
    const maps = stats.maps.map((m) => ({ map: m.map, deleted: Number(m.deleted), alive: Number(m.alive), skipped: Number(m.skipped), refreshed: Number(m.refreshed) }));
    const deleted = maps.reduce((n, m) => n + m.deleted, 0);
    const alive = maps.reduce((n, m) => n + m.alive, 0);
    io.out(`${JSON.stringify({ deleted, alive, natDeleted: Number(stats.nat_deleted), durationMs: Number(stats.duration_ns) / 1e6, maps })}\n`);
    return 0;
  }
  const lines = stats.maps.map((m) => `${mapText(m.map).padEnd(22)} deleted ${m.deleted}, alive ${m.alive}, skipped ${m.skipped}, refreshed ${m.refreshed}`);
  lines.push(`SNAT entries deleted with them: ${stats.nat_deleted}; took ${(Number(stats.duration_ns) / 1e6).toFixed(1)} ms`);
  io.out(`${lines.join('\n')}\n`);
  return 0;
}
