/**
 * `ctmap ct list | count | delete | flush | get`: the CT maps through the daemon, with
 * conntrack-style flow filters evaluated on the server (DumpFilter: the flow's source and
 * destination as a line of `ct list` reads them, ports, protocol, direction, state), and the
 * maps chosen by family and cluster (`--cluster-id N|all`) from what the daemon has open.
 */
import * as grpc from '@grpc/grpc-js';
import { isIP } from 'node:net';
import { CtMapsClient, UnaryMethod, ctMapsClient } from '../api/clients';
import { CtRecordJson } from '../api/ct-json';
import { CtRecordMsg, DumpFilterMsg, DumpTextChunkMsg, MapRefMsg, parseEntry, parseKey } from '../api/ct-proto';
import type { Family } from '../maps/addr';
import { CT_ENTRY_SIZE, encodeEntry, encodeKey, keySize } from '../maps/ctmap/codec';
import { formatEntryLine } from '../maps/ctmap/format';
import { IPPROTO, TupleFlag } from '../maps/ctmap/layout';
import type { CliCommand, CtFlowFilter } from './args';
import { CliRpcError, connection, rpcError } from './client';
import type { Io } from './datapath';
import { progressOf } from './progress';

type CtCommand = Extract<CliCommand, { kind: 'ct-list' | 'ct-count' | 'ct-delete' | 'ct-flush' }>;

const FAMILY_ENUM = { ipv4: 'FAMILY_IPV4', ipv6: 'FAMILY_IPV6' } as const;
/** `ct list` pauses its stream while more than this waits for stdout (about four jsonl batches). */
const MAX_QUEUED_OUTPUT = 8 << 20;

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
function unary<Req, Res>(client: CtMapsClient, rpc: string, cmd: Pick<CtCommand, 'server'>, method: UnaryMethod<Req, Res>, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    const call = method as (req: Req, callback: grpc.requestCallback<Res>) => grpc.ClientUnaryCall;
    call.call(client, req, (err, res) => (err ? reject(rpcError(`CTMaps.${rpc}`, cmd.server, err)) : resolve(res as Res)));
  });
}

/**
 * The open maps of the command's family and cluster (N, or every one with `all`), from
 * ActiveMaps; `ct` commands and `gc run` choose their maps so. Rejects with CliRpcError
 * when none is open.
 */
export async function selectedMaps(client: CtMapsClient, cmd: Pick<CtCommand, 'server' | 'family' | 'clusterId'>): Promise<MapRefMsg[]> {
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
  // An 8 MiB HTTP/2 window instead of grpc-js's 64 KiB: with the default, the daemon stops
  // after every 64 KiB until this process has turned the previous batch into JSON, so
  // receiving and converting take turns instead of overlapping (`ct list -o jsonl` of 1 Mi
  // entries: 3.6 s -> 2.2 s). Still flow control: a paused stream stops the daemon after 8 MiB.
  const client = ctMapsClient(...connection(cmd.server), { 'grpc-node.flow_control_window': 8 << 20 });
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
        const stop = progressOf(io).elapsed('ct delete: waiting for the daemon,');
        try {
          for (const map of maps) deleted += (await unary(client, 'Delete', cmd, client.Delete, { map, keys: [], filter })).deleted;
        } finally {
          stop();
        }
        io.out(cmd.output === 'text' ? `${deleted} flow entries have been deleted\n` : `${JSON.stringify({ deleted })}\n`);
        return 0;
      }
      case 'ct-flush': {
        const stop = progressOf(io).elapsed('ct flush: waiting for the daemon,');
        const res = await unary(client, 'Flush', cmd, client.Flush, { maps, filter: noCriteria(cmd.filter) ? null : filter }).finally(stop);
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
  const progress = progressOf(io);
  let entries = 0;
  let stream: grpc.ClientReadableStream<unknown> | undefined;
  let paused = false;
  // Flow control: while more than MAX_QUEUED_OUTPUT of text waits for stdout, the stream is
  // paused, so a slow reader holds the daemon back instead of this process buffering the
  // whole dump; it resumes below half of that. Several batches stay queued, so that the
  // next one is converted while stdout drains.
  const written = (then?: () => void) => (): void => {
    then?.();
    if (paused && (io.outQueued?.() ?? 0) <= MAX_QUEUED_OUTPUT / 2) {
      paused = false;
      stream?.resume();
    }
  };
  // The count goes on the status line; the line is cleared before each write to stdout,
  // so that on a terminal the entries and the count do not run into each other.
  const out = (text: string | Buffer, n: number, then?: () => void): void => {
    entries += n;
    progress.clear();
    io.out(text, written(then));
    progress.update(`ct list: ${entries} entries so far`);
    if (!paused && (io.outQueued?.() ?? 0) > MAX_QUEUED_OUTPUT) {
      paused = true;
      stream?.pause();
    }
  };
  io.bulkOutput?.();
  return new Promise<number>((resolve, reject) => {
    const req = { maps, filter };
    const fail = (rpc: string) => (err: grpc.ServiceError) => reject(rpcError(`CTMaps.${rpc}`, cmd.server, err));
    if (cmd.output === 'text') {
      const text = client.DumpEntriesWithTimeDiff(req);
      stream = text;
      text.on('data', (chunk: DumpTextChunkMsg) => out(chunk.text, lineCount(chunk.text)));
      text.on('error', fail('DumpEntriesWithTimeDiff'));
      text.on('end', () => resolve(0));
      return;
    }
    // json and jsonl: the batches as received bytes, turned into JSON text without
    // protobufjs objects (ct-json.ts; the same text as JSON.stringify of the decoded
    // records), one write of the bytes per batch, whose buffer is reused once written.
    const method = (client.constructor as grpc.ServiceClientConstructor).service.DumpEntriesBatched;
    const batches = client.makeServerStreamRequest<object, Buffer>(method.path, method.requestSerialize, (b: Buffer) => b, req);
    stream = batches;
    const json = new CtRecordJson(cmd.output === 'jsonl' ? 'jsonl' : 'json-array');
    if (cmd.output === 'json') io.out('[');
    let failed = false;
    /** Records already written (and counted on the status line). */
    let listed = 0;
    batches.on('data', (batch: Buffer) => {
      if (failed) return;
      try {
        json.appendBatch(batch);
      } catch (err) {
        failed = true;
        batches.cancel();
        return reject(new CliRpcError(`CTMaps.DumpEntriesBatched: a response the client cannot decode: ${(err as Error).message}`));
      }
      if (json.pending === 0) return;
      const bytes = json.takeBytes();
      out(bytes, json.records - listed, () => json.release(bytes));
      listed = json.records;
    });
    batches.on('error', (err: grpc.ServiceError) => {
      if (!failed) fail('DumpEntriesBatched')(err);
    });
    batches.on('end', () => {
      if (failed) return;
      if (cmd.output === 'json') io.out(json.records === 0 ? ']\n' : '\n]\n');
      resolve(0);
    });
  }).finally(() => progress.done());
}

function lineCount(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) n++;
  return n;
}

/**
 * `ct get`: CTMaps.Lookup of the one entry of the flow src:sport -> dst:dport. The key
 * stores the flow's source as daddr and its destination as saddr (ports as they are), as
 * `ct list` reads them back. Text is `ct list`'s line, formatted here from the record with
 * the same formatter the daemon's text dump uses. NOT_FOUND: exit 1 with a message.
 */
export async function getEntry(cmd: Extract<CliCommand, { kind: 'ct-get' }>, io: Io): Promise<number> {
  const family: Family = isIP(cmd.src) === 6 ? 'ipv6' : 'ipv4';
  const map = { family: FAMILY_ENUM[family], kind: cmd.proto === IPPROTO.TCP ? 'MAP_KIND_TCP' : 'MAP_KIND_ANY', cluster_id: cmd.clusterId };
  const flags = cmd.dir === 'in' ? TupleFlag.IN : cmd.dir === 'service' ? TupleFlag.SERVICE : TupleFlag.OUT;
  const key = { daddr: cmd.src, saddr: cmd.dst, sport: cmd.sport, dport: cmd.dport, nexthdr: cmd.proto, flags };
  const client = ctMapsClient(...connection(cmd.server));
  let record: CtRecordMsg;
  try {
    record = await new Promise<CtRecordMsg>((resolve, reject) =>
      client.Lookup({ map, key }, (err, res) => (err ? reject(err) : resolve(res as CtRecordMsg))),
    );
  } catch (err) {
    const e = err as grpc.ServiceError;
    if (e.code === grpc.status.NOT_FOUND) {
      throw new CliRpcError(`no entry for ${cmd.dir.toUpperCase()} ${endpoint(family, cmd.src, cmd.sport)} -> ${endpoint(family, cmd.dst, cmd.dport)} (proto ${cmd.proto}) in the ${mapLabel(map)} map`);
    }
    throw rpcError('CTMaps.Lookup', cmd.server, e);
  } finally {
    client.close();
  }
  if (cmd.output === 'json') {
    io.out(`${JSON.stringify(record)}\n`);
    return 0;
  }
  io.out(recordLine(record, true));
  return 0;
}

const endpoint = (family: Family, addr: string, port: number): string => (family === 'ipv6' ? `[${addr}]:${port}` : `${addr}:${port}`);

/**
 * A CtRecord message as `ct list`'s text line (with its newline), formatted with the
 * daemon's own formatter; `withRemaining` adds the remaining seconds as the daemon
 * reported them. Throws CtmapError (invalid-argument) for a record that is no CT entry.
 */
export function recordLine(record: CtRecordMsg | null | undefined, withRemaining = false): string {
  const { key, family } = parseKey(record?.key, 'key');
  const keys = Buffer.alloc(keySize(family));
  const values = Buffer.alloc(CT_ENTRY_SIZE);
  encodeKey(family, key, keys);
  const entry = parseEntry(record?.entry, 'entry');
  encodeEntry(entry, values);
  // The daemon's CT clock, recovered from what it reported, not this host's guess of it.
  const now = withRemaining ? entry.lifetime - Number(record?.entry?.expires_in_seconds ?? 0) : undefined;
  return formatEntryLine(family, keys, 0, values, 0, now);
}
