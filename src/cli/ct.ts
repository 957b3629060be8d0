/**
 * `ctmap ct list | count | delete | flush`: the CT maps through the daemon, with
 * conntrack-style flow filters evaluated on the server (DumpFilter: the flow's source and
 * destination as a line of `ct list` reads them, ports, protocol, direction, state), and the
 * maps chosen by family and cluster (`--cluster-id N|all`) from what the daemon has open.
 */
import * as grpc from '@grpc/grpc-js';
import { CtMapsClient, UnaryMethod, ctMapsClient } from '../api/clients';
import { CtRecordJson } from '../api/ct-json';
import type { DumpFilterMsg, DumpTextChunkMsg, MapRefMsg } from '../api/ct-proto';
import type { CliCommand, CtFlowFilter } from './args';
import { CliRpcError, connection, rpcError } from './client';
import type { Io } from './datapath';

type CtCommand = Extract<CliCommand, { kind: 'ct-list' | 'ct-count' | 'ct-delete' | 'ct-flush' }>;

const FAMILY_ENUM = { ipv4: 'FAMILY_IPV4', ipv6: 'FAMILY_IPV6' } as const;

/** The DumpFilter message of the command's flow criteria (unset ones left out). */
export function dumpFilterOf(f: CtFlowFilter, allClusters: boolean): DumpFilterMsg {
  const msg: DumpFilterMsg & Record<string, unknown> = {};
  if (f.src.length > 0) msg.src = [...f.src];
  if (f.dst.length > 0) msg.dst = [...f.dst];
  if (f.sport !== undefined) msg.sport = f.sport;
  if (f.dport !== undefined) msg.dport = f.dport;
  if (f.proto !== undefined) msg.nexthdr = f.proto;
  if (f.dir !== undefined) msg.direction = `FLOW_DIRECTION_${f.dir.toUpperCase()}`;
  if (f.state !== undefined) msg.state = `FLOW_STATE_${f.state.toUpperCase().replace('-', '_')}`;
  if (allClusters) msg.all_clusters = true;
  return msg;
}

/** True when no flow criterion is set (a delete of everything, which `ct delete` refuses). */
export function noCriteria(f: CtFlowFilter): boolean {
  return f.src.length === 0 && f.dst.length === 0 && f.sport === undefined && f.dport === undefined && f.proto === undefined && f.dir === undefined && f.state === undefined;
}

/** A unary call of `client` as a promise; a failure becomes CliRpcError naming `rpc`. */
function unary<Req, Res>(client: CtMapsClient, rpc: string, cmd: CtCommand, method: UnaryMethod<Req, Res>, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    const call = method as (req: Req, callback: grpc.requestCallback<Res>) => grpc.ClientUnaryCall;
    call.call(client, req, (err, res) => (err ? reject(rpcError(`CTMaps.${rpc}`, cmd.server, err)) : resolve(res as Res)));
  });
}

/** The open maps of the command's family and cluster (N, or every one with `all`), from ActiveMaps. */
async function selectedMaps(client: CtMapsClient, cmd: CtCommand): Promise<MapRefMsg[]> {
  const active = await unary(client, 'ActiveMaps', cmd, client.ActiveMaps, {});
  const maps = active.maps
    .map((m) => m.ref)
    .filter((r) => (cmd.family === undefined || r.family === FAMILY_ENUM[cmd.family]) && (cmd.clusterId === 'all' || r.cluster_id === cmd.clusterId));
  if (maps.length === 0) {
    const what = `${cmd.family ?? 'any family'}${cmd.clusterId === 'all' ? '' : cmd.clusterId === 0 ? ', global' : `, cluster ${cmd.clusterId}`}`;
    throw new CliRpcError(`no open CT maps of ${what} (has the cluster joined? is the family enabled?)`);
  }
  return maps;
}

const mapLabel = (r: MapRefMsg): string =>
  `${r.family === 'FAMILY_IPV6' ? 'IPv6' : 'IPv4'} ${r.kind === 'MAP_KIND_TCP' ? 'TCP' : 'any'} ${r.cluster_id ? `cluster ${r.cluster_id}` : 'global'}`;

/** Runs one `ct` command; resolves with the exit code, rejects with CliRpcError. */
export async function runCt(cmd: CtCommand, io: Io): Promise<number> {
  const client = ctMapsClient(...connection(cmd.server));
  try {
    const maps = await selectedMaps(client, cmd);
    const filter = dumpFilterOf(cmd.filter, false);
    switch (cmd.kind) {
      case 'ct-list':
        return await list(client, cmd, maps, filter, io);
      case 'ct-count': {
        const res = await unary(client, 'Count', cmd, client.Count, { maps, filter });
        const total = res.counts.reduce((n, c) => n + Number(c.entries), 0);
        if (cmd.output === 'text') {
          io.out(`${res.counts.map((c) => `${mapLabel(c.map)}: ${c.entries}`).join('\n')}\n${total} flow entries in total\n`);
        } else {
          io.out(`${JSON.stringify({ total, maps: res.counts.map((c) => ({ map: c.map, entries: Number(c.entries) })) })}\n`);
        }
        return 0;
      }
      case 'ct-delete': {
        let deleted = 0;
        for (const map of maps) deleted += (await unary(client, 'Delete', cmd, client.Delete, { map, keys: [], filter })).deleted;
        io.out(cmd.output === 'text' ? `${deleted} flow entries have been deleted\n` : `${JSON.stringify({ deleted })}\n`);
        return 0;
      }
      case 'ct-flush': {
        const res = await unary(client, 'Flush', cmd, client.Flush, { maps, filter: noCriteria(cmd.filter) ? null : filter });
        io.out(cmd.output === 'text' ? `${res.flushed} flow entries have been removed\n` : `${JSON.stringify({ flushed: Number(res.flushed) })}\n`);
        return 0;
      }
    }
  } finally {
    client.close();
  }
}

/**
 * `ct list`: text is Cilium's `bpf ct list` format with the remaining seconds
 * (DumpEntriesWithTimeDiff); json one array, jsonl one record per line (DumpEntriesBatched),
 * each written as it arrives.
 */
function list(client: CtMapsClient, cmd: Extract<CtCommand, { kind: 'ct-list' }>, maps: MapRefMsg[], filter: DumpFilterMsg, io: Io): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const req = { maps, filter };
    const fail = (rpc: string) => (err: grpc.ServiceError) => reject(rpcError(`CTMaps.${rpc}`, cmd.server, err));
    if (cmd.output === 'text') {
      const stream = client.DumpEntriesWithTimeDiff(req);
      stream.on('data', (chunk: DumpTextChunkMsg) => io.out(chunk.text));
      stream.on('error', fail('DumpEntriesWithTimeDiff'));
      stream.on('end', () => resolve(0));
      return;
    }
    // json and jsonl: the batches as received bytes, turned into JSON text without
    // protobufjs objects (ct-json.ts; the same text as JSON.stringify of the decoded
    // records), one write of the bytes per batch. When stdout's buffer is full (io.out returned
    // process.stdout.write's false), the stream pauses until stdout drains, so a slow
    // reader holds the daemon back instead of this process buffering the whole dump.
    const method = (client.constructor as grpc.ServiceClientConstructor).service.DumpEntriesBatched;
    const stream = client.makeServerStreamRequest<object, Buffer>(method.path, method.requestSerialize, (b: Buffer) => b, req);
    const json = new CtRecordJson(cmd.output === 'jsonl' ? 'jsonl' : 'json-array');
    if (cmd.output === 'json') io.out('[');
    let failed = false;
    stream.on('data', (batch: Buffer) => {
      if (failed) return;
      try {
        json.appendBatch(batch);
      } catch (err) {
        failed = true;
        stream.cancel();
        return reject(new CliRpcError(`CTMaps.DumpEntriesBatched: a response the client cannot decode: ${(err as Error).message}`));
      }
      if (json.pending === 0) return;
      const written: unknown = io.out(json.takeBytes());
      if (written === false && process.stdout.writableNeedDrain) {
        stream.pause();
        process.stdout.once('drain', () => stream.resume());
      }
    });
    stream.on('error', (err: grpc.ServiceError) => {
      if (!failed) fail('DumpEntriesBatched')(err);
    });
    stream.on('end', () => {
      if (failed) return;
      if (cmd.output === 'json') io.out(json.records === 0 ? ']\n' : '\n]\n');
      resolve(0);
    });
  });
}
