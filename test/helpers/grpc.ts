/**
 * Test-side gRPC helpers: a real grpc-js client on the daemon's socket, promisified calls,
 * stream collection, and an in-process daemon with a private socket and log sink.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { parseConfig } from '../../src/config/config';
import { Daemon, startDaemon } from '../../src/daemon/daemon';
import { services } from '../../src/api/proto';

export type Client = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export function ctClient(address: string): Client {
  const Ctor = services().CTMaps;
  return new Ctor(address, grpc.credentials.createInsecure()) as unknown as Client;
}

/** A client of any service definition (e.g. services().NATMaps.service) on `address`. */
export function serviceClient(definition: grpc.ServiceDefinition, serviceName: string, address: string): Client {
  const Ctor = grpc.makeGenericClientConstructor(definition, serviceName);
  return new Ctor(address, grpc.credentials.createInsecure()) as unknown as Client;
}

/** `method` of any client (a Client, or a typed one from src/api/clients.ts). */
function method(client: grpc.Client, name: string): Function {
  return (client as unknown as Record<string, Function>)[name];
}

/** Calls a unary method; rejects with the grpc ServiceError. */
export function call<T = any>(client: grpc.Client, name: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => {
    method(client, name).call(client, req, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

/** Reads a server stream to its end. */
export function collect<T = any>(client: grpc.Client, name: string, req: object): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const out: T[] = [];
    const stream = method(client, name).call(client, req) as grpc.ClientReadableStream<T>;
    stream.on('data', (m: T) => out.push(m));
    stream.on('error', reject);
    stream.on('end', () => resolve(out));
  });
}

/** Asserts a call failed with `code` and a message naming `field`. */
export async function rejectsWith(p: Promise<unknown>, code: grpc.status, field?: string): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    const e = err as grpc.ServiceError;
    if (e.code !== code) throw new Error(`expected status ${grpc.status[code]}, got ${grpc.status[e.code]}: ${e.details}`);
    if (field && !e.details.includes(field)) throw new Error(`expected the message to name ${field}: ${e.details}`);
    return e;
  }
  throw new Error(`expected status ${grpc.status[code]}, but the call succeeded`);
}

/** Collects pino JSON lines in memory so tests can assert on what the daemon logged. */
export class LogSink extends Writable {
  readonly lines: Array<Record<string, any>> = [];
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    for (const line of chunk.toString().split('\n')) if (line) this.lines.push(JSON.parse(line));
    cb();
  }
  find(msg: RegExp): Record<string, any> | undefined {
    return this.lines.find((l) => msg.test(String(l.msg)));
  }
}

export interface TestDaemon {
  daemon: Daemon;
  address: string;
  logs: LogSink;
  stop(): Promise<void>;
}

/** A temp directory for sockets, removed by the returned cleanup (registered on `t` when given). */
export function tempDir(t?: { after(fn: () => void): void }): { dir: string; cleanup(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-test-'));
  const cleanup = (): void => fs.rmSync(dir, { recursive: true, force: true });
  t?.after(cleanup);
  return { dir, cleanup };
}

/** Starts a daemon in this process on a unix socket in `sockDir` with extra flags. */
export async function startTestDaemon(sockDir: string, flags: string[]): Promise<TestDaemon> {
  const socket = path.join(sockDir, `ctmapd-${Math.random().toString(36).slice(2, 8)}.sock`);
  const config = parseConfig(['--socket', socket, ...flags], {});
  const logs = new LogSink();
  const log = pino({ level: 'info' }, logs);
  const daemon = await startDaemon(config, log);
  return { daemon, address: `unix:${socket}`, logs, stop: () => daemon.stop(1000) };
}
