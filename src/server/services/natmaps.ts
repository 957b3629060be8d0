/**
 * The ctmap.v1.NATMaps service: request parsing and response shaping around NatTables and
 * the orphan purge (and Flush, Cilium's `bpf nat flush`). Errors thrown here are CtmapErrors; unary()/serverStream() map them to
 * gRPC statuses (INVALID_ARGUMENT names the request field).
 */
import type * as grpc from '@grpc/grpc-js';
import { invalidArgument } from '../../errors';
import { ctNow } from '../../maps/clock';
import { decodeKey } from '../../maps/ctmap/codec';
import type { CtTables } from '../../maps/ctmap/tables';
import { decodeNatEntry } from '../../maps/nat/codec';
import { purgeOrphanNatEntries } from '../../maps/nat/purge';
import { natRefLabel } from '../../maps/nat/spec';
import type { NatRecordInput, NatTables } from '../../maps/nat/tables';
import { familyEnum, parseKey } from '../../api/ct-proto';
import {
  NatDeleteRequestMsg,
  NatFlushRequestMsg,
  NatFlushResponseMsg,
  NatMapSelectorMsg,
  NatRecordMsg,
  NatUpdateRequestMsg,
  natEntryMsg,
  natPurgeMsg,
  parseNatEntry,
  parseNatFlushRequest,
  parseNatMapSelector,
} from '../../api/nat-proto';
import { services } from '../../api/proto';
import { StreamWriter, serverStream, unary } from '../call-boundary';
import type { ServiceDeps, ServiceRegistration } from '../server';

/** What natMapsService needs. */
export interface NatMapsServiceDeps extends ServiceDeps {
  /** The NAT maps served. */
  readonly nat: NatTables;
  /** The CT maps PurgeOrphanNATEntries checks against (same family and cluster). */
  readonly ct: CtTables;
}

/**
 * The NATMaps service: its definition (services().NATMaps, no serializer changes: NAT
 * records are small and few compared with CT dumps) and its handlers. `deps.shutdown`
 * ends calls when the server stops. Every request is validated completely before
 * anything is written or deleted.
 */
export function natMapsService(deps: NatMapsServiceDeps): ServiceRegistration {
  const { nat, ct, log, shutdown } = deps;
  const implementation: grpc.UntypedServiceImplementation = {
    DumpEntries: serverStream(log, 'NATMaps/DumpEntries', async (req: NatMapSelectorMsg, writer: StreamWriter<NatRecordMsg>, ctx) => {
      const { family, clusterId } = parseNatMapSelector(req);
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
          const now = ctNow();
          for (let i = 0; i < b.count; i++) {
            await writer.write({
              family: fam,
              cluster_id: clusterId,
              key: decodeKey(family, b.keys, i * ks),
              entry: natEntryMsg(decodeNatEntry(family, b.values, i * vs), now),
            });
          }
        }
      } finally {
        cursor.close();
      }
    }, shutdown),

    Update: unary(log, 'NATMaps/Update', async (req: NatUpdateRequestMsg, ctx) => {
      const records: NatRecordInput[] = (req.records ?? []).map((r, i) => {
        const { family, clusterId } = parseNatMapSelector(r, `records[${i}].`);
        return {
          family,
          clusterId,
          key: parseKey(r.key, `records[${i}].key`).key,
          entry: parseNatEntry(r.entry, `records[${i}].entry`),
        };
      });
      ctx.audit({ maps: [...new Set(records.map((r) => natRefLabel(r)))], records: records.length });
      const written = nat.update(records, 'records');
      ctx.audit({ written });
      return { written };
    }, shutdown),

    Delete: unary(log, 'NATMaps/Delete', async (req: NatDeleteRequestMsg, ctx) => {
      const { family, clusterId } = parseNatMapSelector(req);
      ctx.audit({ maps: [natRefLabel({ family, clusterId })], keys: req.keys?.length ?? 0 });
      nat.get(family, clusterId); // map errors before key errors, as the fields are ordered
      const keys = (req.keys ?? []).map((k, i) => {
        const parsed = parseKey(k, `keys[${i}]`);
        if (parsed.family !== family) throw invalidArgument(`keys[${i}]`, `${parsed.family} key for the ${family} NAT map`);
        return parsed.key;
      });
      const deleted = nat.delete(family, clusterId, keys);
      ctx.audit({ deleted });
      return { deleted };
    }, shutdown),

    PurgeOrphanNATEntries: unary(log, 'NATMaps/PurgeOrphanNATEntries', async (req: NatMapSelectorMsg, ctx) => {
      const { family, clusterId } = parseNatMapSelector(req);
      const table = nat.get(family, clusterId);
      ctx.audit({ maps: [natRefLabel(table.ref)] });
      const ctTcp = ct.get({ family, kind: 'tcp', clusterId }, 'family');
      const ctAny = ct.get({ family, kind: 'any', clusterId }, 'family');
      const stats = await purgeOrphanNatEntries(table, ctTcp, ctAny, ctx.signal);
      ctx.log.info({ family, clusterId, ...stats }, 'purged orphan SNAT entries');
      ctx.audit({ ...stats });
      return natPurgeMsg(stats);
    }, shutdown),

    Flush: unary(log, 'NATMaps/Flush', async (req: NatFlushRequestMsg, ctx): Promise<NatFlushResponseMsg> => {
      // Every map is resolved before any is emptied: a request naming a cluster without
      // maps, or a disabled family, removes nothing.
      const tables = nat.selectForFlush(parseNatFlushRequest(req));
      ctx.audit({ maps: tables.map((t) => natRefLabel(t.ref)) });
      const flushed = nat.flush(tables);
      ctx.log.info({ maps: tables.map((t) => natRefLabel(t.ref)), flushed }, 'flushed SNAT maps');
      ctx.audit({ flushed });
      return { flushed: String(flushed) };
    }, shutdown),
  };
  return { definition: services().NATMaps.service, implementation };
}
