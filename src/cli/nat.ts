/**
 * `ctmap nat list | flush`: the SNAT maps through the daemon (NATMaps), chosen by family
 * and cluster (`--cluster-id N|all`) from what ActiveMaps says is open. list prints text
 * as `cilium bpf nat list` does (one line per entry, src/maps/nat/format.ts), json (one
 * array over every map) or jsonl (one record per line); flush empties the maps.
 */
import type * as grpc from '@grpc/grpc-js';
import { NatMapsClient, ctMapsClient, natMapsClient } from '../api/clients';
import type { NatMapInfoMsg } from '../api/ct-proto';
import { NatRecordMsg, parseNatEntry } from '../api/nat-proto';
import { parseKey } from '../api/ct-proto';
import { formatNatLine } from '../maps/nat/format';
import type { CliCommand } from './args';
import { CliRpcError, connection, rpcError, unary } from './client';
import type { Io } from './datapath';

type NatCommand = Extract<CliCommand, { kind: 'nat-list' | 'nat-flush' }>;

const FAMILY_ENUM = { ipv4: 'FAMILY_IPV4', ipv6: 'FAMILY_IPV6' } as const;

/** Runs one `nat` command; resolves with the exit code, rejects with CliRpcError. */
export async function runNat(cmd: NatCommand, io: Io): Promise<number> {
  const [target, creds] = connection(cmd.server);
  if (cmd.kind === 'nat-flush') {
    const client = natMapsClient(target, creds);
    try {
      const req = {
        family: cmd.family ? FAMILY_ENUM[cmd.family] : 'FAMILY_UNSPECIFIED',
        cluster_id: cmd.clusterId === 'all' ? 0 : cmd.clusterId,
        all_clusters: cmd.clusterId === 'all',
      };
      const res = await unary(client, 'NATMaps.Flush', cmd.server, client.Flush, req);
      io.out(cmd.output === 'text' ? `${res.flushed} entries have been removed\n` : `${JSON.stringify({ flushed: Number(res.flushed) })}\n`);
      return 0;
    } finally {
      client.close();
    }
  }
  const maps = await selectedMaps(cmd);
  const client = natMapsClient(target, creds);
  io.bulkOutput?.();
  try {
    if (cmd.output === 'json') io.out('[');
    let first = true;
    for (const m of maps) {
      await dumpOne(client, cmd, m, (r) => {
        if (cmd.output === 'text') return natText(r);
        if (cmd.output === 'jsonl') return `${JSON.stringify(r)}\n`;
        const text = `${first ? '\n' : ',\n'}${JSON.stringify(r)}`;
        first = false;
        return text;
      }, io);
    }
    if (cmd.output === 'json') io.out(first ? ']\n' : '\n]\n');
    return 0;
  } finally {
    client.close();
  }
}

/** The open SNAT maps of the command's family and cluster, from ActiveMaps.nat_maps. */
async function selectedMaps(cmd: NatCommand): Promise<NatMapInfoMsg[]> {
  const client = ctMapsClient(...connection(cmd.server));
  try {
    const active = await unary(client, 'CTMaps.ActiveMaps', cmd.server, client.ActiveMaps, {});
    const maps = active.nat_maps.filter((m) => (cmd.family === undefined || m.family === FAMILY_ENUM[cmd.family]) && (cmd.clusterId === 'all' || m.cluster_id === cmd.clusterId));
    if (maps.length === 0) {
      const what = `${cmd.family ?? 'any family'}${cmd.clusterId === 'all' ? '' : cmd.clusterId === 0 ? ', global' : `, cluster ${cmd.clusterId}`}`;
      throw new CliRpcError(`no open SNAT maps of ${what} (has the cluster joined? is the family enabled?)`);
    }
    return maps;
  } finally {
    client.close();
  }
}

/** One map's entries, each written through `format` as it arrives. */
function dumpOne(client: NatMapsClient, cmd: NatCommand, m: NatMapInfoMsg, format: (r: NatRecordMsg) => string, io: Io): Promise<void> {
  return new Promise((resolve, reject) => {
    const stream = client.DumpEntries({ family: m.family, cluster_id: m.cluster_id });
    stream.on('data', (r: NatRecordMsg) => io.out(format(r)));
    stream.on('error', (err: grpc.ServiceError) => reject(rpcError('NATMaps.DumpEntries', cmd.server, err)));
    stream.on('end', () => resolve());
  });
}

/** A record as its `cilium bpf nat list` line (the record as JSON should it not parse). */
export function natText(r: NatRecordMsg): string {
  try {
    const { key, family } = parseKey(r.key, 'key');
    return formatNatLine(family, key, parseNatEntry(r.entry, 'entry'), BigInt(r.entry?.age_seconds ?? 0));
  } catch {
    return `${JSON.stringify(r)}\n`;
  }
}
