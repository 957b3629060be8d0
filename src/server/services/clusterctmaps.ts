/**
 * The ctmap.v1.ClusterCTMaps service: per-cluster CT maps by RPC (Cilium's
 * PerClusterCTMapper) and the live membership stream. Every change goes through
 * Membership, so RPCs and the clustermesh sources are serialised and all show up in
 * WatchMembership.
 */
import type * as grpc from '@grpc/grpc-js';
import type { Membership, MembershipEvent } from '../../cluster/membership';
import { BoundedQueue } from '../bounded-queue';
import {
  CleanupPerClusterCTMapsRequestMsg,
  ClusterIdRequestMsg,
  ClusterMapsMsg,
  DeleteClusterCTMapsResponseMsg,
  GetAllClusterCTMapsResponseMsg,
  clusterMapsMsg,
  membershipEventMsg,
  parseClusterId,
} from '../../api/cluster-proto';
import { services } from '../../api/proto';
import { StreamWriter, serverStream, unary } from '../call-boundary';
import type { ServiceDeps, ServiceRegistration } from '../server';

/** Events a WatchMembership subscriber may fall behind by before it is told what it lost. */
const WATCH_BUFFER = 1024;

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
    CreateClusterCTMaps: unary(log, 'ClusterCTMaps/CreateClusterCTMaps', async (req: ClusterIdRequestMsg, ctx): Promise<ClusterMapsMsg> => {
      const id = parseClusterId(req);
      ctx.audit({ clusterId: id });
      await membership.claim('rpc', '', id, 'rpc');
      const created = clusterMapsMsg(maps.get(id)!);
      ctx.audit({ maps: created.maps.map((m) => m.name) });
      return created;
    }, shutdown),

    DeleteClusterCTMaps: unary(log, 'ClusterCTMaps/DeleteClusterCTMaps', async (req: ClusterIdRequestMsg, ctx): Promise<DeleteClusterCTMapsResponseMsg> => {
      const id = parseClusterId(req);
      ctx.audit({ clusterId: id });
      const dropped = await membership.forceLeave(id, 'rpc');
      ctx.audit({ deleted: dropped !== undefined, droppedEntries: dropped ?? 0 });
      return { deleted: dropped !== undefined, dropped_entries: String(dropped ?? 0) };
    }, shutdown),

    GetAllClusterCTMaps: unary(log, 'ClusterCTMaps/GetAllClusterCTMaps', async (): Promise<GetAllClusterCTMapsResponseMsg> => ({
      clusters: maps.ids().map((id) => clusterMapsMsg(maps.get(id)!)),
    }), shutdown),

    CleanupPerClusterCTMaps: unary(log, 'ClusterCTMaps/CleanupPerClusterCTMaps', async (req: CleanupPerClusterCTMapsRequestMsg, ctx) => {
      ctx.audit({ ipv4: req.ipv4 === true, ipv6: req.ipv6 === true });
      const removed = await membership.cleanup(req.ipv4 === true, req.ipv6 === true);
      ctx.audit({ removed });
      return { removed };
    }, shutdown),

    WatchMembership: serverStream(log, 'ClusterCTMaps/WatchMembership', async (_req: object, writer: StreamWriter<object>, ctx) => {
      const queue = new BoundedQueue<MembershipEvent>(WATCH_BUFFER);
      const sub = membership.events().subscribe({ next: (e) => queue.push(e), complete: () => queue.close() });
      const onAbort = () => queue.close();
      ctx.signal.addEventListener('abort', onAbort);
      try {
        for (let item = await queue.take(); item && !ctx.signal.aborted; item = await queue.take()) {
          await writer.write(item.kind === 'lost' ? { lost: String(item.count) } : membershipEventMsg(item.value));
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
