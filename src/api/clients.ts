/**
 * Typed grpc-js clients of the ctmapd services, for the CLI and the tests. The clients
 * are grpc-js's generic ones (from services(), so the proto-loader options are the
 * server's); these interfaces say which request each method takes and which messages it
 * yields, as proto-loader presents them (see ct-proto.ts, gc-proto.ts, nat-proto.ts,
 * cluster-proto.ts).
 */
import * as grpc from '@grpc/grpc-js';
import type * as cluster from './cluster-proto';
import type * as ct from './ct-proto';
import type * as events from './events-proto';
import type * as gc from './gc-proto';
import type * as nat from './nat-proto';
import { CtmapGrpc, services } from './proto';

/** A request or response without fields. */
export type EmptyMsg = Record<string, never>;

/** A unary method of a generic grpc-js client: the response (or the error) comes to `callback`. */
export interface UnaryMethod<Req, Res> {
  (req: Req, callback: grpc.requestCallback<Res>): grpc.ClientUnaryCall;
  (req: Req, metadata: grpc.Metadata, callback: grpc.requestCallback<Res>): grpc.ClientUnaryCall;
  (req: Req, options: grpc.CallOptions, callback: grpc.requestCallback<Res>): grpc.ClientUnaryCall;
  (req: Req, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<Res>): grpc.ClientUnaryCall;
}

/** A server-streaming method of a generic grpc-js client. */
export type ServerStreamMethod<Req, Res> = (req: Req, options?: grpc.CallOptions) => grpc.ClientReadableStream<Res>;

export interface CtMapsClient extends grpc.Client {
  ActiveMaps: UnaryMethod<ct.ActiveMapsRequestMsg, ct.ActiveMapsResponseMsg>;
  DumpEntries: ServerStreamMethod<ct.DumpEntriesRequestMsg, ct.CtRecordMsg>;
  DumpEntriesBatched: ServerStreamMethod<ct.DumpEntriesRequestMsg, ct.CtRecordBatchMsg>;
  DumpEntriesWithTimeDiff: ServerStreamMethod<ct.DumpEntriesRequestMsg, ct.DumpTextChunkMsg>;
  Count: UnaryMethod<ct.DumpEntriesRequestMsg, ct.CountResponseMsg>;
  Lookup: UnaryMethod<ct.LookupRequestMsg, ct.CtRecordMsg>;
  Update: UnaryMethod<ct.UpdateRequestMsg, ct.UpdateResponseMsg>;
  Delete: UnaryMethod<ct.DeleteRequestMsg, ct.DeleteResponseMsg>;
  Flush: UnaryMethod<ct.DumpEntriesRequestMsg, ct.FlushResponseMsg>;
}

export interface GCRunnerClient extends grpc.Client {
  Run: ServerStreamMethod<gc.GCRunRequestMsg, gc.GCRunUpdateMsg>;
  Observe: ServerStreamMethod<gc.GCFamilyRequestMsg, gc.GCEventMsg>;
  Status: UnaryMethod<EmptyMsg, gc.GCStatusResponseMsg>;
  Signal: UnaryMethod<gc.GCFamilyRequestMsg, EmptyMsg>;
}

export interface NatMapsClient extends grpc.Client {
  DumpEntries: ServerStreamMethod<nat.NatMapSelectorMsg, nat.NatRecordMsg>;
  Update: UnaryMethod<nat.NatUpdateRequestMsg, ct.UpdateResponseMsg>;
  Delete: UnaryMethod<nat.NatDeleteRequestMsg, ct.DeleteResponseMsg>;
  PurgeOrphanNATEntries: UnaryMethod<nat.NatMapSelectorMsg, nat.PurgeOrphanNATEntriesResponseMsg>;
  Flush: UnaryMethod<nat.NatFlushRequestMsg, nat.NatFlushResponseMsg>;
}

export interface ClusterCtMapsClient extends grpc.Client {
  CreateClusterCTMaps: UnaryMethod<cluster.ClusterIdRequestMsg, cluster.ClusterMapsMsg>;
  DeleteClusterCTMaps: UnaryMethod<cluster.ClusterIdRequestMsg, cluster.DeleteClusterCTMapsResponseMsg>;
  GetAllClusterCTMaps: UnaryMethod<EmptyMsg, cluster.GetAllClusterCTMapsResponseMsg>;
  CleanupPerClusterCTMaps: UnaryMethod<cluster.CleanupPerClusterCTMapsRequestMsg, cluster.CleanupPerClusterCTMapsResponseMsg>;
  WatchMembership: ServerStreamMethod<EmptyMsg, cluster.MembershipEventMsg>;
}

export interface CtEventsClient extends grpc.Client {
  Watch: ServerStreamMethod<events.WatchCtEventsRequestMsg, events.CtLifecycleEventMsg>;
  WatchBatched: ServerStreamMethod<events.WatchCtEventsRequestMsg, events.CtLifecycleEventBatchMsg>;
}

/** grpc.health.v1.HealthCheckResponse as proto-loader presents it (status by its enum name). */
export interface HealthCheckResponseMsg {
  status: 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';
}

export interface HealthClient extends grpc.Client {
  Check: UnaryMethod<{ service: string }, HealthCheckResponseMsg>;
}

/** Makes a client on `address` ("unix:/path" or "host:port"); insecure credentials unless given. */
export type ClientFactory<C> = (address: string, credentials?: grpc.ChannelCredentials, options?: Partial<grpc.ClientOptions>) => C;

function clientOf<C extends grpc.Client>(service: keyof CtmapGrpc): ClientFactory<C> {
  // The one place the generic client meets its interface: proto-loader builds the methods
  // at run time from the same protos the types above describe.
  return (address, credentials = grpc.credentials.createInsecure(), options) =>
    new (services()[service])(address, credentials, options) as unknown as C;
}

export const ctMapsClient: ClientFactory<CtMapsClient> = clientOf('CTMaps');
export const gcRunnerClient: ClientFactory<GCRunnerClient> = clientOf('GCRunner');
export const natMapsClient: ClientFactory<NatMapsClient> = clientOf('NATMaps');
export const clusterCtMapsClient: ClientFactory<ClusterCtMapsClient> = clientOf('ClusterCTMaps');
export const ctEventsClient: ClientFactory<CtEventsClient> = clientOf('CTEvents');
export const healthClient: ClientFactory<HealthClient> = clientOf('Health');
