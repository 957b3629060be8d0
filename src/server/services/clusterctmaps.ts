/**
 * The ctmap.v1.ClusterCTMaps service: per-cluster CT maps by RPC (Cilium's
 * PerClusterCTMapper) and the live membership stream. Every change goes through
 * Membership, so RPCs and the clustermesh sources are serialised and all show up in
 * WatchMembership.
 */
import type * as grpc from '@grpc/grpc-js';
import type { ClusterMaps } from '../../cluster/cluster-maps';
import type { Membership, MembershipEvent } from '../../cluster/membership';
import { checkUint } from '../../maps/ctmap/codec';
import { BoundedQueue } from '../bounded-queue';
import { familyEnum, mapInfoMsg, mapRefMsg } from '../../api/ct-proto';
import { services } from '../../api/proto';
import { StreamWriter, serverStream, unary } from '../call-boundary';
import type { ServiceDeps, ServiceRegistration } from '../server';

/** Events a WatchMembership subscriber may fall behind by before it is told what it lost. */
const WATCH_BUFFER = 1024;

function clusterId(req: { cluster_id?: number }): number {
  const id = req.cluster_id ?? 0;
  checkUint(id, 0xffffffff, 'cluster_id');
  return id;
}

function clusterMsg(c: ClusterMaps): object {
  const maps: object[] = [];
  for (const family of ['ipv4', 'ipv6'] as const) {
    for (const ct of c.ct.filter((x) => x.ref.family === family)) maps.push(mapInfoMsg(mapRefMsg(ct.ref), ct.map));
    for (const nat of c.nat.filter((x) => x.family === family)) {
      maps.push(mapInfoMsg({ family: familyEnum(family), kind: 'MAP_KIND_UNSPECIFIED', cluster_id: c.clusterId }, nat.map));
    }
  }
  return { cluster_id: c.clusterId, maps };
}

function eventMsg(e: MembershipEvent): object {
  return {
    kind: e.kind === 'join' ? 'JOIN' : 'LEAVE',
    cluster_id: e.clusterId,
    cluster_name: e.clusterName,
    source: e.via,
    dropped_entries: String(e.dropped),
  };
}

/** What clusterCtMapsService needs. */
export interface ClusterCtMapsServiceDeps extends ServiceDeps {
  /** Every change goes through it; its maps are what the RPCs report. */
  readonly membership: Membership;
}

/**
 * The ClusterCTMaps service: its definition (services().ClusterCTMaps) and its handlers.
 * `deps.shutdown` ends calls (WatchMembership streams too) when the server stops.
 */
export function clusterCtMapsService(deps: ClusterCtMapsServiceDeps): ServiceRegistration {
  const { membership, log, shutdown } = deps;
  const maps = membership.maps;
  const implementation: grpc.UntypedServiceImplementation = {
    CreateClusterCTMaps: unary(log, 'ClusterCTMaps/CreateClusterCTMaps', async (req: { cluster_id?: number }) => {
      const id = clusterId(req);
      await membership.claim('rpc', '', id, 'rpc');
      return clusterMsg(maps.get(id)!);
    }, shutdown),

    DeleteClusterCTMaps: unary(log, 'ClusterCTMaps/DeleteClusterCTMaps', async (req: { cluster_id?: number }) => {
      const dropped = await membership.forceLeave(clusterId(req), 'rpc');
      return { deleted: dropped !== undefined, dropped_entries: String(dropped ?? 0) };
    }, shutdown),

    GetAllClusterCTMaps: unary(log, 'ClusterCTMaps/GetAllClusterCTMaps', async () => ({
      clusters: maps.ids().map((id) => clusterMsg(maps.get(id)!)),
    }), shutdown),

    CleanupPerClusterCTMaps: unary(log, 'ClusterCTMaps/CleanupPerClusterCTMaps', async (req: { ipv4?: boolean; ipv6?: boolean }) => ({
      removed: await membership.cleanup(req.ipv4 === true, req.ipv6 === true),
    }), shutdown),

    WatchMembership: serverStream(log, 'ClusterCTMaps/WatchMembership', async (_req: object, writer: StreamWriter<object>, ctx) => {
      const queue = new BoundedQueue<MembershipEvent>(WATCH_BUFFER);
      const sub = membership.events().subscribe({ next: (e) => queue.push(e), complete: () => queue.close() });
      const onAbort = () => queue.close();
      ctx.signal.addEventListener('abort', onAbort);
      try {
        for (let item = await queue.take(); item && !ctx.signal.aborted; item = await queue.take()) {
          await writer.write(item.kind === 'lost' ? { lost: String(item.count) } : eventMsg(item.value));
        }
      } finally {
        sub.unsubscribe();
        queue.close();
        ctx.signal.removeEventListener('abort', onAbort);
      }
      if (ctx.signal.aborted) throw ctx.signal.reason;
    }, shutdown),
  };
  return { definition: services().ClusterCTMaps.service, implementation };
}
