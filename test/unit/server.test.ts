/**
 * The gRPC server end to end over a unix socket in a temp dir: health, reflection, flow
 * control of serverStream(), cancellation and shutdown, with a test-only fake of CTMaps.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as descriptor from 'protobufjs/ext/descriptor';
import { CtmapError } from '../../src/errors';
import { createLogger, type Logger } from '../../src/daemon/logger';
import { PROTO_LOADER_OPTIONS, services } from '../../src/api/proto';
import { startServer, type ServerHandle } from '../../src/server/server';
import { ABORT, serverStream, unary } from '../../src/server/call-boundary';

const MAP_INFO = {
  ref: { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 },
  name: 'cilium_ct4_global',
  pin_path: '/sys/fs/bpf/tc/globals/cilium_ct4_global',
  max_entries: 524288,
  key_size: 14,
  value_size: 56,
  flags: 0,
  backend: 'memory',
  entries: '0',
  migration: null,
};

function record(i: number) {
  return {
    map: MAP_INFO.ref,
    key: { daddr: '192.0.2.1', saddr: '198.51.100.2', dport: 80, sport: i % 65536, nexthdr: 6, flags: 0 },
    entry: { packets: String(i), bytes: String(i * 100), lifetime: 1000 + i, union0: Buffer.alloc(16) },
  };
}

/**
 * Test-only CTMaps: ActiveMaps returns MAP_INFO; DumpEntries streams `n` records through
 * the serverStream writer (counting the writes that resolved), or with `hang` sends one
 * record and then waits for ctx.signal, remembering why it aborted.
 */
function fakeCtMaps(log: Logger, shutdown: AbortSignal) {
  const state = {
    n: 0,
    hang: false,
    written: 0,
    finished: false,
    abortReason: undefined as unknown,
    aborted: undefined as Promise<unknown> | undefined,
  };
  const implementation = {
    ActiveMaps: unary(log, 'CTMaps/ActiveMaps', async () => ({ maps: [MAP_INFO] }), shutdown),
    DumpEntries: serverStream<unknown, ReturnType<typeof record>>(
      log,
      'CTMaps/DumpEntries',
      async (_req, writer, ctx) => {
        state.written = 0;
        state.finished = false;
        if (state.hang) {
          state.aborted = new Promise((resolve) => {
            ctx.signal.addEventListener('abort', () => resolve(ctx.signal.reason), { once: true });
          });
          await writer.write(record(0));
          state.abortReason = await state.aborted;
          throw ctx.signal.reason;
        }
        for (let i = 0; i < state.n; i++) {
          await writer.write(record(i));
          state.written++;
        }
        state.finished = true;
      },
      shutdown,
    ),
  };
  return { state, implementation };
}

function memoryLogger(): Logger {
  return createLogger('warn', { write: () => undefined });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until `value()` has not changed for `quietMs` (at most 10 s); returns it. */
async function settled(value: () => number, quietMs = 300): Promise<number> {
  let last = value();
  let since = Date.now();
  for (const end = Date.now() + 10_000; Date.now() < end; await sleep(20)) {
    const v = value();
    if (v !== last) [last, since] = [v, Date.now()];
    else if (Date.now() - since >= quietMs) return v;
  }
  return value();
}

function unaryCall<Res>(client: grpc.Client, method: string, req: unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client as any)[method](req, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}

/** Collects a server stream; resolves with the messages and the final status. */
function drain(call: grpc.ClientReadableStream<unknown>): Promise<{ messages: unknown[]; status: grpc.StatusObject }> {
  return new Promise((resolve) => {
    const messages: unknown[] = [];
    call.on('data', (m) => messages.push(m));
    call.on('error', () => undefined); // the status below carries the error
    call.on('status', (status) => resolve({ messages, status }));
  });
}

/** ServerReflectionInfo list_services through the reflection proto @grpc/reflection ships. */
async function reflect(address: string, version: 'v1' | 'v1alpha', request: Record<string, string>): Promise<any[]> {
  const root = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto');
  const def = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, { ...PROTO_LOADER_OPTIONS, includeDirs: [root] });
  const pkg = grpc.loadPackageDefinition(def) as any;
  const Reflection = pkg.grpc.reflection[version].ServerReflection as grpc.ServiceClientConstructor;
  const client = new Reflection(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => {
      const responses: any[] = [];
      const call = (client as any).ServerReflectionInfo() as grpc.ClientDuplexStream<unknown, any>;
      call.on('data', (m) => responses.push(m));
      call.on('error', reject);
      call.on('end', () => resolve(responses));
      call.write(request);
      call.end();
    });
  } finally {
    client.close();
  }
}

describe('startServer', () => {
  let dir: string;
  let socket: string;
  let handle: ServerHandle;
  let fake: ReturnType<typeof fakeCtMaps>;
  let ctMaps: grpc.Client;
  let health: grpc.Client;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-test-'));
    socket = path.join(dir, 'run', 'ctmapd.sock');
    const log = memoryLogger();
    const shutdown = new AbortController();
    fake = fakeCtMaps(log, shutdown.signal);
    handle = await startServer({
      config: { socket },
      log,
      shutdown,
      services: [{ definition: services().CTMaps.service, implementation: fake.implementation }],
    });
    ctMaps = new (services().CTMaps)(handle.addresses[0]!, grpc.credentials.createInsecure());
    health = new (services().Health)(handle.addresses[0]!, grpc.credentials.createInsecure());
  });

  after(async () => {
    ctMaps.close();
    health.close();
    await handle.shutdown(1000);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('listens on the unix socket with mode 0660 in a 0755 directory', () => {
    assert.deepEqual(handle.addresses, [`unix:${socket}`]);
    assert.ok(fs.statSync(socket).isSocket());
    assert.equal(fs.statSync(socket).mode & 0o777, 0o660);
    assert.equal(fs.statSync(path.dirname(socket)).mode & 0o777, 0o755 & ~process.umask());
  });

  it('serves the registered service', async () => {
    const res = await unaryCall<{ maps: unknown[] }>(ctMaps, 'ActiveMaps', { with_counts: false });
    assert.deepEqual(res.maps, [MAP_INFO]);
    // Methods the fake does not implement answer UNIMPLEMENTED.
    await assert.rejects(unaryCall(ctMaps, 'Count', {}), (e: grpc.ServiceError) => e.code === grpc.status.UNIMPLEMENTED);
  });

  it('reports NOT_SERVING until markServing()', async () => {
    for (const service of ['', 'ctmap.v1.CTMaps']) {
      assert.deepEqual(await unaryCall(health, 'Check', { service }), { status: 'NOT_SERVING' });
    }
    handle.markServing();
    for (const service of ['', 'ctmap.v1.CTMaps']) {
      assert.deepEqual(await unaryCall(health, 'Check', { service }), { status: 'SERVING' });
    }
    await assert.rejects(unaryCall(health, 'Check', { service: 'no.such.Service' }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  });

  it('lists the ctmap.v1 services, health and reflection through reflection v1 and v1alpha', async () => {
    for (const version of ['v1', 'v1alpha'] as const) {
      const [res] = await reflect(handle.addresses[0]!, version, { list_services: '' });
      const names = res.list_services_response.service.map((s: { name: string }) => s.name).sort();
      assert.deepEqual(names, [
        'ctmap.v1.CTEvents',
        'ctmap.v1.CTMaps',
        'ctmap.v1.ClusterCTMaps',
        'ctmap.v1.GCRunner',
        'ctmap.v1.NATMaps',
        'grpc.health.v1.Health',
        'grpc.reflection.v1.ServerReflection',
        'grpc.reflection.v1alpha.ServerReflection',
      ]);
    }
  });

  it('describes ctmap.v1 through reflection with a comment on every declaration', async () => {
    // What `grpcurl describe ctmap.v1.CTMaps` asks for.
    const [res] = await reflect(handle.addresses[0]!, 'v1', { file_containing_symbol: 'ctmap.v1.CTMaps' });
    const files = (res.file_descriptor_response.file_descriptor_proto as Buffer[]).map((b) =>
      descriptor.FileDescriptorProto.toObject(descriptor.FileDescriptorProto.decode(b)),
    );
    const file = files.find((f) => f.package === 'ctmap.v1');
    assert.ok(file, 'no ctmap.v1 file descriptor');
    const commented = new Set<string>((file.sourceCodeInfo?.location ?? []).map((l: { path: number[] }) => l.path.join('.')));
    const missing: string[] = [];
    const need = (where: number[], what: string) => void (commented.has(where.join('.')) || missing.push(what));
    file.messageType.forEach((m: any, i: number) => {
      need([4, i], m.name);
      m.field?.forEach((f: any, j: number) => need([4, i, 2, j], `${m.name}.${f.name}`));
    });
    file.enumType.forEach((e: any, i: number) => {
      need([5, i], e.name);
      e.value.forEach((v: any, j: number) => need([5, i, 2, j], v.name));
    });
    file.service.forEach((svc: any, i: number) => {
      need([6, i], svc.name);
      svc.method.forEach((m: any, j: number) => need([6, i, 2, j], `${svc.name}.${m.name}`));
    });
    assert.deepEqual(missing, []);
    assert.ok(file.service[0].method.some((m: any) => m.name === 'DumpEntriesBatched'));
    const filter = file.messageType.find((m: any) => m.name === 'DumpFilter');
    assert.deepEqual(
      filter.field.filter((f: any) => f.proto3Optional).map((f: any) => f.name),
      ['nexthdr', 'flags', 'port', 'sport', 'dport'],
    );
  });

  it('holds the producer while the client does not read, and finishes after resume', async (t) => {
    const N = 20000;
    fake.state.hang = false;
    fake.state.n = N;
    const call = (ctMaps as any).DumpEntries({ maps: [] }) as grpc.ClientReadableStream<unknown>;
    let received = 0;
    call.once('data', () => call.pause());
    call.on('data', () => received++);
    const done = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));

    const stalledAt = await settled(() => fake.state.written);
    assert.ok(stalledAt > 0, 'the server wrote nothing');
    assert.ok(stalledAt < N, `the server wrote all ${N} records while the client was paused`);
    assert.equal(fake.state.finished, false);
    t.diagnostic(`server stalled after ${stalledAt} of ${N} writes`);

    call.resume();
    const status = await done;
    assert.equal(status.code, grpc.status.OK);
    assert.equal(received, N);
    assert.equal(fake.state.written, N);
    assert.equal(fake.state.finished, true);
  });

  it('aborts ctx.signal when the client cancels', async () => {
    fake.state.hang = true;
    const call = (ctMaps as any).DumpEntries({ maps: [] }) as grpc.ClientReadableStream<unknown>;
    const result = drain(call);
    await new Promise((resolve) => call.once('data', resolve));
    call.cancel();
    assert.equal(await fake.state.aborted, ABORT.cancelled);
    assert.equal((await result).status.code, grpc.status.CANCELLED);
  });

  it('refuses to take over a socket another server answers on', async () => {
    await assert.rejects(
      startServer({ config: { socket }, log: memoryLogger(), services: [] }),
      (e: unknown) => e instanceof CtmapError && e.code === 'already-exists',
    );
    assert.ok(fs.statSync(socket).isSocket(), 'the live socket was removed');
  });
});

describe('startServer over a stale socket, then shutdown', () => {
  it('replaces the stale socket; shutdown ends streams and watchers and removes the socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-test-'));
    const socket = path.join(dir, 'ctmapd.sock');
    // A process killed while listening leaves its socket file behind.
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    assert.ok(fs.statSync(socket).isSocket(), 'no stale socket to test with');

    const log = memoryLogger();
    const shutdown = new AbortController();
    const fake = fakeCtMaps(log, shutdown.signal);
    fake.state.hang = true;
    const handle = await startServer({
      config: { socket, listen: '127.0.0.1:0', listenInsecure: true },
      log,
      shutdown,
      services: [{ definition: services().CTMaps.service, implementation: fake.implementation }],
    });
    assert.match(handle.addresses[1] ?? '', /^127\.0\.0\.1:[1-9]\d*$/);
    handle.markServing();
    const ctMaps = new (services().CTMaps)(handle.addresses[1]!, grpc.credentials.createInsecure());
    const health = new (services().Health)(handle.addresses[0]!, grpc.credentials.createInsecure());
    try {
      const stream = (ctMaps as any).DumpEntries({ maps: [] }) as grpc.ClientReadableStream<unknown>;
      const dump = drain(stream);
      await new Promise((resolve) => stream.once('data', resolve));
      const watch = drain((health as any).Watch({ service: '' }));
      await sleep(50);

      const started = Date.now();
      await handle.shutdown(5000);
      assert.ok(Date.now() - started < 4000, 'shutdown waited for the grace period');

      const { messages, status } = await dump;
      assert.equal(messages.length, 1);
      assert.equal(status.code, grpc.status.UNAVAILABLE);
      assert.equal(status.details, ABORT.shutdown.message);
      assert.equal(fake.state.abortReason, ABORT.shutdown);

      const w = await watch;
      assert.deepEqual(w.messages, [{ status: 'SERVING' }, { status: 'NOT_SERVING' }]);
      assert.equal(w.status.code, grpc.status.OK);

      assert.equal(fs.existsSync(socket), false);
      assert.equal(handle.shutdownSignal.aborted, true);
      await handle.shutdown(5000); // idempotent
    } finally {
      ctMaps.close();
      health.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
