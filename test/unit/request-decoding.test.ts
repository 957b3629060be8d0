/**
 * Issue 12, defect 12: valid protobuf was answered INTERNAL by the request decoder
 * (protobufjs, through proto-loader's deserializer). The reference parser (protoc's C++
 * runtime) reads a 32-bit field sent as a 6-9 byte varint by its low 32 bits, and treats a
 * known field number with another wire type as an unknown field; ctmapd must decode such
 * requests the same way. Requests are hand-made bytes sent with an identity serializer.
 *
 * The first part drives the daemon (memory backend); the second compares, for random
 * requests of every served method with random wire-level changes, what the server decoded
 * (echoed back, re-encoded) with what protoc --decode reads from the same bytes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';
import { createLogger } from '../../src/daemon/logger';
import { protoRoot, services } from '../../src/api/proto';
import { startServer, type ServerHandle } from '../../src/server/server';
import { TestDaemon, call, ctClient, startTestDaemon, tempDir, type Client } from '../helpers/grpc';
import { WIRE, fixed32, fixed64, group, hasProtoc, knownFieldsOnly, lfield, protocDecode, tag, varint, vfield } from '../helpers/wire';

const identity = (b: Buffer): Buffer => b;

/** One unary call of `path` with `bytes` as the request; resolves with the response bytes or the error. */
function rawUnary(client: grpc.Client, path: string, bytes: Buffer): Promise<{ err: grpc.ServiceError | null; res?: Buffer }> {
  return new Promise((resolve) => client.makeUnaryRequest(path, identity, identity, bytes, (err, res) => resolve({ err, res })));
}

function rawStream(client: grpc.Client, path: string, bytes: Buffer): Promise<{ status: grpc.StatusObject; messages: Buffer[] }> {
  return new Promise((resolve) => {
    const messages: Buffer[] = [];
    const s = client.makeServerStreamRequest(path, identity, identity, bytes);
    s.on('data', (m: Buffer) => messages.push(m));
    s.on('error', () => undefined);
    s.on('status', (status) => resolve({ status, messages }));
  });
}

// MapRef { family = 1; kind = 2; cluster_id = 3 }, CtKey { daddr = 1; saddr = 2; dport = 3;
// sport = 4; nexthdr = 5; flags = 6 }, LookupRequest { map = 1; key = 2 }.
const TCP4 = (width?: number) => Buffer.concat([vfield(1, 1, width), vfield(2, 1, width)]);
const KEY = { daddr: '192.0.2.1', saddr: '198.51.100.2', dport: 80, sport: 40000, nexthdr: 6, flags: 0 };

describe('requests decoded as the reference parser decodes them (issue 12, defect 12): daemon', () => {
  const sock = tempDir();
  let d: TestDaemon;
  let ct: Client;
  let raw: grpc.Client;

  before(async () => {
    d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `/memory-test/${process.pid}-wire`, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096']);
    ct = ctClient(d.address);
    raw = new grpc.Client(d.address, grpc.credentials.createInsecure());
    const map = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
    await call(ct, 'Update', { records: [{ map, key: KEY, entry: { lifetime: 0xfffffff0, packets: '7' } }, { map, key: { ...KEY, dport: 443 }, entry: { lifetime: 0xfffffff0 } }] });
  });

  after(async () => {
    ct?.close();
    raw?.close();
    await d?.stop();
    sock.cleanup();
  });

  const key = (parts: Buffer[]) => lfield(2, lfield(1, KEY.daddr), lfield(2, KEY.saddr), ...parts);
  const lookup = (bytes: Buffer) => rawUnary(raw, '/ctmap.v1.CTMaps/Lookup', bytes);
  const packetsOf = (res?: Buffer) => String(services().CTMaps.service.Lookup!.responseDeserialize(res!).entry.packets);

  it('reads a 32-bit field sent as a 6..10-byte varint by its low 32 bits', async () => {
    for (const width of [6, 7, 8, 9, 10]) {
      // The value's bits above 32 are set too: the reference parser drops them.
      const dport = BigInt(KEY.dport) | (0x5an << 32n);
      const bytes = Buffer.concat([lfield(1, TCP4(width)), key([vfield(3, dport, width), vfield(4, KEY.sport, width), vfield(5, KEY.nexthdr, width)])]);
      const { err, res } = await lookup(bytes);
      assert.equal(err, null, `width ${width}: ${err?.code}: ${err?.details}`);
      assert.equal(packetsOf(res), '7');
    }
  });

  it('treats a known field number sent with another wire type as unknown', async () => {
    // dport also as fixed32, fixed64, bytes and a group (and map.family as bytes): each ignored.
    const bytes = Buffer.concat([
      lfield(1, lfield(1, 'x'), TCP4()),
      key([fixed32(3, 443), fixed64(3, 443n), lfield(3, 'no'), group(3, vfield(1, 1)), vfield(3, KEY.dport), lfield(4, Buffer.from([1, 2])), vfield(4, KEY.sport), vfield(5, KEY.nexthdr)]),
    ]);
    const { err, res } = await lookup(bytes);
    assert.equal(err, null, `${err?.code}: ${err?.details}`);
    assert.equal(packetsOf(res), '7');
  });

  it('a required message sent with another wire type is missing: INVALID_ARGUMENT naming it', async () => {
    const { err } = await lookup(Buffer.concat([vfield(1, 5), key([vfield(3, KEY.dport), vfield(4, KEY.sport), vfield(5, KEY.nexthdr)])]));
    assert.equal(err?.code, grpc.status.INVALID_ARGUMENT, `${err?.code}: ${err?.details}`);
    assert.match(err!.details, /^map: is required/);
  });

  it('a server stream request (DumpEntries filter.port as a 7-byte varint) is read the same way', async () => {
    // DumpEntriesRequest { maps = 1; filter = 2 }, DumpFilter { port = 3 (optional) }.
    const { status, messages } = await rawStream(raw, '/ctmap.v1.CTMaps/DumpEntries', Buffer.concat([lfield(1, TCP4()), lfield(2, fixed32(3, 80), vfield(3, 443, 7))]));
    assert.equal(status.code, grpc.status.OK, status.details);
    assert.equal(messages.length, 1);
    assert.equal(services().CTMaps.service.DumpEntries!.responseDeserialize(messages[0]!).key.dport, 443);
  });

  it('grpc.health.v1.Health/Check with its service field as a varint reads service ""', async () => {
    const { err } = await rawUnary(raw, '/grpc.health.v1.Health/Check', vfield(1, 1, 8));
    assert.equal(err, null, `${err?.code}: ${err?.details}`);
  });

  it('bytes the reference parser refuses are still refused', async () => {
    const refused = [
      Buffer.concat([tag(1, WIRE.VARINT), varint(1, 11)]), // an 11-byte varint
      Buffer.from([0x0a, 0x05, 0x08]), // a length past the end
      lfield(2, lfield(1, Buffer.from([0xc3, 0x28]))), // key.daddr not UTF-8
      Buffer.from([0x0c]), // an end group with no start
      Buffer.from([0x0f, 0x00]), // wire type 7
      Buffer.from([0x00]), // field number 0
    ];
    for (const bytes of refused) {
      const { err } = await lookup(bytes);
      assert.equal(err?.code, grpc.status.INTERNAL, `${bytes.toString('hex')}: ${err?.code}: ${err?.details}`);
    }
  });
});

/** A deterministic PRNG (mulberry32), so a failing case can be replayed from its seed. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random valid message of `type` as a protobufjs object. */
function randomMessage(type: protobuf.Type, r: () => number, depth = 0): Record<string, unknown> {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const scalar = (f: protobuf.Field): unknown => {
    if (f.resolvedType instanceof protobuf.Type) return randomMessage(f.resolvedType, r, depth + 1);
    if (f.resolvedType instanceof protobuf.Enum) return pick([...Object.values(f.resolvedType.values), 7, -1, 0x7fffffff]);
    switch (f.type) {
      case 'string': return pick(['', '192.0.2.1', '2001:db8::1', 'héllo ✓', 'x'.repeat(Math.floor(r() * 200))]);
      case 'bytes': return Buffer.from(Array.from({ length: Math.floor(r() * 20) }, () => Math.floor(r() * 256)));
      case 'bool': return r() < 0.5;
      case 'uint32': return pick([0, 1, 127, 128, 65535, 2 ** 31, 2 ** 32 - 1, Math.floor(r() * 2 ** 32)]);
      case 'int32': return pick([0, 1, -1, -(2 ** 31), 2 ** 31 - 1]);
      case 'uint64': return pick(['0', '1', '4294967296', '18446744073709551615', String(Math.floor(r() * 2 ** 53))]);
      case 'int64': return pick(['0', '-1', '-9223372036854775808', '9223372036854775807', '123456789012']);
      case 'double': return pick([0, 1.5, -2.25, 1e300]);
      default: throw new Error(`no generator for ${f.type}`);
    }
  };
  const out: Record<string, unknown> = {};
  for (const f of type.fieldsArray) {
    if (r() < 0.35 || (depth > 3 && f.resolvedType instanceof protobuf.Type)) continue;
    out[f.name] = f.repeated ? Array.from({ length: Math.floor(r() * 3) }, () => scalar(f)) : scalar(f);
  }
  return out;
}

/**
 * `bytes` (a valid, canonical encoding of `type`) with random wire-level changes the
 * reference parser accepts or refuses: over-long varints and tags (with junk above bit
 * 32), known field numbers with other wire types, unknown fields and groups, repeated
 * singular messages (which the reference merges), and now and then a broken encoding.
 */
function mutate(type: protobuf.Type, bytes: Uint8Array, r: () => number, top = true): Buffer {
  const out: Buffer[] = [];
  const reader = protobuf.Reader.create(bytes);
  const junkField = (id: number): Buffer => {
    switch (Math.floor(r() * 5)) {
      case 0: return vfield(id, BigInt(Math.floor(r() * 2 ** 53)) << 11n);
      case 1: return fixed32(id, Math.floor(r() * 2 ** 32));
      case 2: return fixed64(id, BigInt(Math.floor(r() * 2 ** 53)));
      case 3: return lfield(id, Buffer.from([0x08, 0x7f])); // a message with field 1, or a string
      default: return group(id, Buffer.concat([vfield(1, 3), group(2, lfield(1, 'x'))]));
    }
  };
  const widen = (v: bigint, minimal: number): number | undefined => (r() < 0.4 ? minimal + Math.ceil(r() * (10 - minimal)) : undefined);
  while (reader.pos < reader.len) {
    const t = reader.uint32();
    const id = t >>> 3;
    const wire = t & 7;
    const field = type.fieldsById[id];
    if (r() < 0.15) out.push(junkField(id)); // a known number with (most likely) another wire type
    if (r() < 0.1) out.push(junkField(1000 + Math.floor(r() * 100)));
    const tagBytes = r() < 0.1 ? tag(id, wire, 5) : tag(id, wire);
    if (wire === WIRE.VARINT) {
      const start = reader.pos;
      reader.skipType(WIRE.VARINT);
      const minimal = reader.pos - start;
      let v = 0n;
      for (let i = minimal - 1; i >= 0; i--) v = (v << 7n) | BigInt(bytes[start + i]! & 0x7f);
      const width = widen(v, minimal);
      // Junk above bit 35 of a widened 32-bit value: the reference parser keeps the low 32.
      const is32 = field && ['uint32', 'int32', 'bool'].includes(field.type) || field?.resolvedType instanceof protobuf.Enum;
      const junk = width && width >= 6 && is32 && r() < 0.5 ? BigInt(Math.floor(r() * 2 ** 20)) << 35n : 0n;
      out.push(tagBytes, varint(BigInt.asUintN(64, v | junk), width));
    } else if (wire === WIRE.LEN) {
      const body = reader.bytes();
      const sub = field?.resolvedType instanceof protobuf.Type ? field.resolvedType : undefined;
      const encode = (b: Uint8Array) => Buffer.concat([tagBytes, varint(b.length, r() < 0.1 ? 5 : undefined), b]);
      if (sub) {
        out.push(encode(mutate(sub, body, r, false)));
        if (!field!.repeated && r() < 0.25) out.push(encode(mutate(sub, body, r, false))); // merged by the reference
      } else out.push(encode(Buffer.from(body)));
    } else {
      const start = reader.pos;
      reader.skipType(wire);
      out.push(tagBytes, Buffer.from(bytes.subarray(start, reader.pos)));
    }
  }
  if (top && r() < 0.08) out.push(pickBroken(r));
  return Buffer.concat(out);
}

function pickBroken(r: () => number): Buffer {
  const broken = [Buffer.concat([tag(1, WIRE.VARINT), varint(1, 11)]), Buffer.from([0x12, 0x7f]), Buffer.from([0x0c]), Buffer.from([0x07]), tag(1, WIRE.VARINT, 6)];
  return broken[Math.floor(r() * broken.length)]!;
}

describe('requests decoded as the reference parser decodes them (issue 12, defect 12): protoc', () => {
  const sock = tempDir();
  let handle: ServerHandle;
  let client: grpc.Client;
  const root = new protobuf.Root().loadSync(path.join(protoRoot(), 'ctmap/v1/ctmap.proto'), { keepCase: true });
  root.resolveAll();

  /** Every served ctmap.v1 method as a unary echo: the decoded request, re-encoded. */
  const echoed = (['CTMaps', 'GCRunner', 'NATMaps', 'ClusterCTMaps'] as const).map((name) => {
    const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const [method, m] of Object.entries(services()[name].service)) {
      def[method] = { ...m, requestStream: false, responseStream: false, responseSerialize: m.requestSerialize as (v: unknown) => Buffer, responseDeserialize: identity };
      implementation[method] = ((c: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, c.request)) as grpc.handleUnaryCall<unknown, unknown>;
    }
    return { name, definition: def as grpc.ServiceDefinition, implementation };
  });

  before(async () => {
    handle = await startServer({ config: { socket: path.join(sock.dir, 'echo.sock') }, log: createLogger('warn', { write: () => undefined }), services: echoed });
    client = new grpc.Client(handle.addresses[0]!, grpc.credentials.createInsecure());
  });

  after(async () => {
    client?.close();
    await handle?.shutdown(1000);
    sock.cleanup();
  });

  it('agrees with protoc --decode on random requests of every method', async (t) => {
    if (!hasProtoc()) {
      process.stderr.write('*** REFERENCE DECODER CHECK SKIPPED: protoc not found (apt-get install protobuf-compiler) ***\n');
      t.skip('protoc not found');
      return;
    }
    const seed = Number(process.env.WIRE_SEED ?? 12);
    const r = rng(seed);
    const mismatches: string[] = [];
    let cases = 0;
    let refused = 0;
    for (const { name, definition } of echoed) {
      for (const [method, m] of Object.entries(definition)) {
        const typeName = `ctmap.v1.${(m as unknown as { requestType: { type: { name: string } } }).requestType.type.name}`;
        const type = root.lookupType(typeName);
        for (let i = 0; i < 12; i++, cases++) {
          const valid = type.encode(type.fromObject(randomMessage(type, r))).finish();
          const bytes = mutate(type, valid, r);
          const reference = protocDecode(protoRoot(), 'ctmap/v1/ctmap.proto', typeName, bytes);
          const { err, res } = await rawUnary(client, `/ctmap.v1.${name}/${method}`, bytes);
          const where = `${name}/${method} case ${i} (seed ${seed}) ${bytes.toString('hex')}`;
          if (reference === undefined) {
            refused++;
            if (!err) mismatches.push(`${where}: protoc refuses it, the server decoded it`);
            continue;
          }
          if (err) {
            mismatches.push(`${where}: the server answered ${grpc.status[err.code]}: ${err.details}`);
            continue;
          }
          const ours = protocDecode(protoRoot(), 'ctmap/v1/ctmap.proto', typeName, res!);
          if (ours !== knownFieldsOnly(reference)) mismatches.push(`${where}:\nprotoc:\n${knownFieldsOnly(reference)}\nserver:\n${ours}`);
        }
      }
    }
    t.diagnostic(`${cases} requests compared, ${refused} of them refused by protoc`);
    assert.deepEqual(mismatches.slice(0, 5), [], `${mismatches.length} of ${cases} requests decoded differently`);
  });
});
