/**
 * The ctmap.v1.NATMaps service: request parsing and response shaping around NatTables and
 * the orphan purge. Errors thrown here are CtmapErrors; unary()/serverStream() map them to
 * gRPC statuses (INVALID_ARGUMENT names the request field).
 */
import * as grpc from '@grpc/grpc-js';
import { CtmapError, invalidArgument } from '../../errors';
import type { Family } from '../../maps/addr';
import { checkUint, decodeKey } from '../../maps/ctmap/codec';
import type { CtTables } from '../../maps/ctmap/tables';
import { NatEntry, decodeNatEntry } from '../../maps/nat/codec';
import { purgeOrphanNatEntries } from '../../maps/nat/purge';
import type { NatRecordInput, NatTables } from '../../maps/nat/tables';
import { CtKeyMsg, familyEnum, parseFamily, parseKey } from '../../api/ct-proto';
import type { Logger } from 'pino';
import { packageDefinition } from '../../api/proto';
import { StreamWriter, serverStream, unary } from '../call-boundary';

/** NatEntry as proto-loader presents it (created as a decimal string). */
export interface NatEntryMsg {
  addr?: string;
  port?: number;
  created?: string | number;
  needs_ct?: boolean;
}

/** NatRecord as proto-loader presents it. */
export interface NatRecordMsg {
  family?: string | number;
  cluster_id?: number;
  key?: CtKeyMsg | null;
  entry?: NatEntryMsg | null;
}

interface NatMapSelector {
  family?: string | number;
  cluster_id?: number;
}

export const NATMAPS_SERVICE = 'ctmap.v1.NATMaps';

/** The NAT map a request names by `family` and `cluster_id` (fields prefixed by `prefix`). */
function selectMap(req: NatMapSelector, prefix = ''): { family: Family; clusterId: number } {
  const family = parseFamily(req.family, `${prefix}family`);
  checkUint(req.cluster_id ?? 0, 0xffffffff, `${prefix}cluster_id`);
  return { family, clusterId: req.cluster_id ?? 0 };
}

/** Parses a NatEntry message; range and family checks are NatTables.update's (validateNatEntry). */
export function parseNatEntry(msg: NatEntryMsg | null | undefined, field: string): NatEntry {
  if (!msg) throw invalidArgument(field, 'is required');
  let created = 0n;
  if (msg.created !== undefined && msg.created !== '') {
    try {
      created = BigInt(msg.created);
    } catch {
      throw invalidArgument(`${field}.created`, `not an integer: ${String(msg.created)}`);
    }
  }
  return { addr: msg.addr ?? '', port: msg.port ?? 0, created, needsCt: msg.needs_ct === true };
}

/** A NatEntry as the NatEntry message (created as a decimal string, as longs: String). */
export function natEntryMsg(e: NatEntry): NatEntryMsg {
  return { addr: e.addr, port: e.port, created: e.created.toString(), needs_ct: e.needsCt };
}

/**
 * The NATMaps handlers. `nat` holds the NAT maps, `ct` the CT maps the purge checks against
 * (same family and cluster). `shutdown` ends calls when the server stops. Every request
 * is validated completely before anything is written or deleted.
 */
export function natMapsService(nat: NatTables, ct: CtTables, log: Logger, shutdown: AbortSignal): grpc.UntypedServiceImplementation {
  return {
    DumpEntries: serverStream(log, 'NATMaps/DumpEntries', async (req: NatMapSelector, writer: StreamWriter<NatRecordMsg>, ctx) => {
      const { family, clusterId } = selectMap(req);
      const table = nat.get(family, clusterId);
      const cursor = nat.dump(table);
      const ks = table.map.spec.keySize;
      const vs = table.map.spec.valueSize;
      const fam = familyEnum(family);
      try {
        // Each write waits for the client to drain when the transport is backed up, and
        // the next batch is read only after the last record of this one went out.
        for (let b = await cursor.next(); b; b = await cursor.next()) {
          if (ctx.signal.aborted) throw ctx.signal.reason;
          for (let i = 0; i < b.count; i++) {
            await writer.write({
              family: fam,
              cluster_id: clusterId,
              key: decodeKey(family, b.keys, i * ks),
              entry: natEntryMsg(decodeNatEntry(family, b.values, i * vs)),
            });
          }
        }
      } finally {
        cursor.close();
      }
    }, shutdown),

    Update: unary(log, 'NATMaps/Update', async (req: { records?: NatRecordMsg[] }) => {
      const records: NatRecordInput[] = (req.records ?? []).map((r, i) => {
        const { family, clusterId } = selectMap(r, `records[${i}].`);
        return {
          family,
          clusterId,
          key: parseKey(r.key, `records[${i}].key`).key,
          entry: parseNatEntry(r.entry, `records[${i}].entry`),
        };
      });
      return { written: nat.update(records, 'records') };
    }, shutdown),

    Delete: unary(log, 'NATMaps/Delete', async (req: NatMapSelector & { keys?: CtKeyMsg[] }) => {
      const { family, clusterId } = selectMap(req);
      nat.get(family, clusterId); // map errors before key errors, as the fields are ordered
      const keys = (req.keys ?? []).map((k, i) => {
        const parsed = parseKey(k, `keys[${i}]`);
        if (parsed.family !== family) throw invalidArgument(`keys[${i}]`, `${parsed.family} key for the ${family} NAT map`);
        return parsed.key;
      });
      return { deleted: nat.delete(family, clusterId, keys) };
    }, shutdown),

    PurgeOrphanNATEntries: unary(log, 'NATMaps/PurgeOrphanNATEntries', async (req: NatMapSelector, ctx) => {
      const { family, clusterId } = selectMap(req);
      const table = nat.get(family, clusterId);
      const ctTcp = ct.get({ family, kind: 'tcp', clusterId }, 'family');
      const ctAny = ct.get({ family, kind: 'any', clusterId }, 'family');
      const stats = await purgeOrphanNatEntries(table, ctTcp, ctAny, ctx.signal);
      ctx.log.info({ family, clusterId, ...stats }, 'purged orphan SNAT entries');
      return {
        ingress_alive: String(stats.ingressAlive),
        ingress_deleted: String(stats.ingressDeleted),
        egress_alive: String(stats.egressAlive),
        egress_deleted: String(stats.egressDeleted),
      };
    }, shutdown),
  };
}

let cachedDefinition: grpc.ServiceDefinition | undefined;

/**
 * The NATMaps service definition from the shared package definition (proto.ts), to add to
 * a grpc.Server next to natMapsService(). Also makes a client:
 * grpc.makeGenericClientConstructor(natMapsDefinition(), 'NATMaps'). No serializer
 * changes: NAT records are small and few compared with CT dumps.
 * Throws INTERNAL when the loaded protos have no ctmap.v1.NATMaps.
 */
export function natMapsDefinition(): grpc.ServiceDefinition {
  if (cachedDefinition) return cachedDefinition;
  let node: unknown = grpc.loadPackageDefinition(packageDefinition());
  for (const part of NATMAPS_SERVICE.split('.')) node = (node as grpc.GrpcObject | undefined)?.[part];
  if (typeof node !== 'function' || !('service' in node)) throw new CtmapError('internal', `proto: service ${NATMAPS_SERVICE} not in the package definition`);
  cachedDefinition = (node as grpc.ServiceClientConstructor).service;
  return cachedDefinition;
}
