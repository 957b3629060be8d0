/**
 * `ctmap cluster watch`: streams ClusterCTMaps.WatchMembership, the joins and leaves of
 * clusters (from the RPCs and the clustermesh sources), one line each, and says so when
 * the daemon reports that this watcher missed some.
 */
import { clusterCtMapsClient } from '../api/clients';
import type { MembershipEventMsg } from '../api/cluster-proto';
import type { CliCommand } from './args';
import { connection, followStream } from './client';
import type { Io } from './datapath';

type WatchCommand = Extract<CliCommand, { kind: 'cluster-watch' }>;

/** One event as a JSON line: kind join|leave, or only `lost` for a notice. */
export function membershipJson(e: MembershipEventMsg): string {
  if (Number(e.lost) > 0) return JSON.stringify({ lost: Number(e.lost) });
  return JSON.stringify({ kind: e.kind.toLowerCase(), clusterId: e.cluster_id, name: e.cluster_name, source: e.source, droppedEntries: Number(e.dropped_entries) });
}

/** One event as a text line: `JOIN cluster 7 (name) via rpc`, a leave with its dropped entries. */
export function membershipText(e: MembershipEventMsg): string {
  if (Number(e.lost) > 0) return `LOST ${e.lost} membership events (this watcher fell behind)\n`;
  const name = e.cluster_name ? ` (${e.cluster_name})` : '';
  const dropped = e.kind === 'LEAVE' ? `, ${e.dropped_entries} entries dropped` : '';
  return `${e.kind} cluster ${e.cluster_id}${name} via ${e.source}${dropped}\n`;
}

/**
 * Watches until `cmd.count` joins/leaves were printed (lost notices not counted), the
 * daemon ends the stream, or SIGINT (all resolve 0); rejects with CliRpcError when the
 * call fails.
 */
export function watchMembership(cmd: WatchCommand, io: Io): Promise<number> {
  const client = clusterCtMapsClient(...connection(cmd.server));
  const format = cmd.output === 'json' ? (e: MembershipEventMsg) => `${membershipJson(e)}\n` : membershipText;
  let printed = 0;
  return followStream(client.WatchMembership({}), 'ClusterCTMaps.WatchMembership', cmd.server, (e: MembershipEventMsg) => {
    io.out(format(e));
    return Number(e.lost) === 0 && cmd.count !== undefined && ++printed >= cmd.count;
  }).finally(() => client.close());
}
