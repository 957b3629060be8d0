/**
 * The gRPC server: the given services plus grpc.health.v1.Health and server reflection
 * (v1 and v1alpha), on a unix socket and optionally on TCP, with an ordered shutdown.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { CtmapError, quote } from '../errors';
import type { Config } from '../config/config';
import type { Logger } from 'pino';
import { reflectionPackageDefinition } from '../api/proto';
import { decodeRequestsAsReference } from '../api/request-decoding';

/**
 * One service to serve: its definition (from services() in src/api/proto.ts, with the
 * serializers the handlers need) and its handlers. What every factory in services/ returns.
 */
export interface ServiceRegistration {
  readonly definition: grpc.ServiceDefinition;
  readonly implementation: grpc.UntypedServiceImplementation;
}

/** What every service factory in services/ is given besides its own domain objects. */
export interface ServiceDeps {
  /** Parent of each call's child logger (unary()/serverStream() add method and peer). */
  readonly log: Logger;
  /** The signal of StartServerOptions.shutdown: aborted when shutdown() begins, it ends calls. */
  readonly shutdown: AbortSignal;
}

export interface StartServerOptions {
  readonly config: Pick<Config, 'socket' | 'listen'>;
  readonly log: Logger;
  readonly services: readonly ServiceRegistration[];
  /** The controller whose signal the handlers were given (unary()/serverStream()'s
   *  `shutdown`); shutdown() aborts it. A new one when omitted (see handle.shutdownSignal). */
  readonly shutdown?: AbortController;
  readonly serverOptions?: grpc.ServerOptions;
}

export interface ServerHandle {
  /** Bound addresses: "unix:<path>" first, then "HOST:PORT" with the actual port. */
  readonly addresses: readonly string[];
  /** Aborted when shutdown() begins. */
  readonly shutdownSignal: AbortSignal;
  /** Health SERVING for "" and every served service; call once the maps are open.
   *  No effect once shutdown has begun. */
  markServing(): void;
  /** Health NOT_SERVING again (e.g. the maps had to be closed). */
  markNotServing(): void;
  /**
   * Health NOT_SERVING -> abort the shutdown signal (streams end) -> tryShutdown, and
   * forceShutdown (cancelling what is left) once `graceMs` have passed -> remove the socket
   * file. Idempotent: later calls return the same promise. Never rejects.
   */
  shutdown(graceMs: number): Promise<void>;
}

/**
 * Starts serving. Listens on `unix:<config.socket>` (parent directory created 0755, a
 * stale socket file removed, the socket chmod 0660) and, when config.listen is set, on
 * that TCP address with insecure credentials. Health starts NOT_SERVING.
 * Throws CtmapError: already-exists when another process answers on the socket,
 * failed-precondition when the socket path holds something else or binding fails.
 */
export async function startServer(opts: StartServerOptions): Promise<ServerHandle> {
  const { config, log } = opts;
  const shutdownController = opts.shutdown ?? new AbortController();
  const server = new grpc.Server(opts.serverOptions);

  const names = ['', ...new Set(opts.services.map((s) => serviceName(s.definition)))];
  const health = new HealthImplementation(Object.fromEntries(names.map((n) => [n, 'NOT_SERVING'])));
  const setHealth = (status: ServingStatus) => names.forEach((n) => health.setStatus(n, status));

  // Every service, health and reflection included, decodes its requests as the reference
  // protobuf implementation does (issue 12, defect 12).
  const services: Pick<grpc.Server, 'addService'> = {
    addService: (definition, implementation) => server.addService(decodeRequestsAsReference(definition), implementation),
  };
  for (const s of opts.services) services.addService(s.definition, s.implementation);
  addHealth(services, health, shutdownController.signal);
  new ReflectionService(reflectionPackageDefinition()).addToServer(services);

  const addresses: string[] = [];
  const socket = path.resolve(config.socket);
  try {
    await prepareSocketPath(socket);
    await bind(server, `unix:${socket}`);
    addresses.push(`unix:${socket}`);
    await fs.promises.chmod(socket, 0o660);
    if (config.listen !== undefined) {
      const port = await bind(server, config.listen);
      addresses.push(config.listen.replace(/:\d+$/, `:${port}`));
    }
  } catch (err) {
    server.forceShutdown();
    // Only a socket we bound is ours to remove; another server's is not.
    if (addresses.length > 0) await removeSocket(socket);
    throw err;
  }
  log.info({ addresses }, 'grpc server listening');

  let shuttingDown: Promise<void> | undefined;
  return {
    addresses,
    shutdownSignal: shutdownController.signal,
    markServing: () => {
      if (shuttingDown) return;
      setHealth('SERVING');
      log.info('serving');
    },
    markNotServing: () => setHealth('NOT_SERVING'),
    shutdown: (graceMs) => {
      shuttingDown ??= (async () => {
        log.info({ graceMs }, 'shutting down');
        setHealth('NOT_SERVING');
        shutdownController.abort();
        const graceful = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown();
            resolve(false);
          }, graceMs);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve(true);
          });
        });
        await removeSocket(socket);
        log.info({ graceful }, 'grpc server stopped');
      })();
      return shuttingDown;
    },
  };
}

/** "ctmap.v1.CTMaps" from a method path "/ctmap.v1.CTMaps/ActiveMaps". */
function serviceName(def: grpc.ServiceDefinition): string {
  const first = Object.values(def)[0];
  if (!first) throw new CtmapError('internal', 'server: service definition without methods');
  return first.path.split('/')[1] ?? '';
}

/**
 * Adds the health service. Health.Watch streams never end on their own, so each is ended
 * when shutdown begins (after it has sent NOT_SERVING); otherwise every watcher would hold
 * tryShutdown until the grace period runs out. Check's NOT_FOUND for an unknown service
 * quotes a short prefix of the name, not all of it (issue 12, defect 9).
 */
function addHealth(server: Pick<grpc.Server, 'addService'>, health: HealthImplementation, shutdown: AbortSignal): void {
  health.addToServer({
    addService: (definition, implementation) => {
      const watch = implementation.watch as grpc.handleServerStreamingCall<unknown, unknown>;
      const check = implementation.check as grpc.handleUnaryCall<{ service: string }, unknown>;
      server.addService(definition as grpc.ServiceDefinition, {
        ...implementation,
        check: (call: grpc.ServerUnaryCall<{ service: string }, unknown>, callback: grpc.sendUnaryData<unknown>) =>
          check(call, (err, value) => {
            if (err?.code === grpc.status.NOT_FOUND) err = { ...err, details: `Health status unknown for service ${quote(call.request.service)}` };
            callback(err, value);
          }),
        watch: (call: grpc.ServerWritableStream<unknown, unknown>) => {
          watch(call);
          const end = () => call.end();
          if (shutdown.aborted) return end();
          shutdown.addEventListener('abort', end, { once: true });
          call.on('cancelled', () => shutdown.removeEventListener('abort', end));
        },
      });
    },
  });
}

function bind(server: grpc.Server, address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
      if (err) reject(new CtmapError('failed-precondition', `listen ${address}: ${err.message}`, { cause: err }));
      else resolve(port);
    });
  });
}

/**
 * Makes `socket` bindable: creates the parent directory and removes a socket file left by
 * a process that died. A socket something still answers on is not touched, nor is any
 * file that is not a socket.
 */
async function prepareSocketPath(socket: string): Promise<void> {
  let st: fs.Stats | undefined;
  try {
    await fs.promises.mkdir(path.dirname(socket), { recursive: true, mode: 0o755 });
    st = await fs.promises.lstat(socket).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const kind = code === 'EACCES' || code === 'EPERM' ? 'permission-denied' : 'failed-precondition';
    throw new CtmapError(kind, `socket ${socket}: ${(err as Error).message}`, { cause: err });
  }
  if (st === undefined) return;
  if (!st.isSocket()) throw new CtmapError('failed-precondition', `socket path ${socket} exists and is not a socket`);
  if (await answers(socket)) throw new CtmapError('already-exists', `another server is listening on ${socket}`);
  await removeSocket(socket);
}

function answers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const conn = net.connect(socket);
    conn.once('connect', () => {
      conn.destroy();
      resolve(true);
    });
    conn.once('error', () => resolve(false));
  });
}

async function removeSocket(socket: string): Promise<void> {
  await fs.promises.rm(socket, { force: true });
}
