/**
 * The gRPC server: the given services plus grpc.health.v1.Health and server reflection
 * (v1 and v1alpha), on a unix socket, optionally a read-only unix socket and TCP (TLS with
 * client certificates, or explicitly plaintext), with an ordered shutdown. Every listener
 * has its own access interceptor (access.ts): who may call what is decided per listener
 * and, on TLS, per client certificate.
 */
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { CtmapError, quote } from '../errors';
import type { Config } from '../config/config';
import { DEFAULT_SOCKET_READONLY_MODE } from '../config/defaults';
import type { Logger } from 'pino';
import { reflectionPackageDefinition } from '../api/proto';
import { decodeRequestsAsReference } from '../api/request-decoding';
import { AuthzPolicy, FULL_ACCESS, Granter, READ_ONLY, accessInterceptor, parseAuthzPolicy, tlsGranter, unclassified } from './access';
import { FileReloader } from './file-reloader';
import { ReloadingTlsFiles } from './tls';
import { UnixListener, listenUnix, resolveGroup } from './unix-listener';

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

/** The flags startServer reads; only `socket` is required. */
export type ServerConfig = Pick<Config, 'socket'> &
  Partial<
    Pick<
      Config,
      'listen' | 'listenInsecure' | 'tlsCertFile' | 'tlsKeyFile' | 'tlsClientCaFiles' | 'authzPolicy' | 'socketReadonly' | 'socketReadonlyMode' | 'socketReadonlyGroup'
    >
  >;

export interface StartServerOptions {
  readonly config: ServerConfig;
  readonly log: Logger;
  readonly services: readonly ServiceRegistration[];
  /** The controller whose signal the handlers were given (unary()/serverStream()'s
   *  `shutdown`); shutdown() aborts it. A new one when omitted (see handle.shutdownSignal). */
  readonly shutdown?: AbortController;
  readonly serverOptions?: grpc.ServerOptions;
  /** How often the TLS files and the authz policy are re-read (default 1 s). */
  readonly reloadIntervalMs?: number;
}

export interface ServerHandle {
  /** Bound addresses: "unix:<path>" first, then the read-only socket's "unix:<path>" if
   *  any, then "HOST:PORT" with the actual port. */
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
 * stale socket file removed, the socket chmod 0660; full access), on
 * `unix:<config.socketReadonly>` when set (mode socketReadonlyMode, default 0660, group
 * socketReadonlyGroup; read RPCs only), and on config.listen when set: TLS requiring a
 * client certificate that chains to tlsClientCaFiles, roles from authzPolicy (see
 * access.ts), certificates, CAs and policy reloaded when they change on disk; or, with
 * listenInsecure, plaintext with full access, logged as a warning. Health starts
 * NOT_SERVING. Throws CtmapError: already-exists when another process answers on a
 * socket, failed-precondition when a socket path holds something else, binding fails,
 * the TLS files or the policy are unusable or listen has neither TLS nor listenInsecure;
 * internal when a service has a method access.ts does not classify.
 */
export async function startServer(opts: StartServerOptions): Promise<ServerHandle> {
  const { config, log } = opts;
  const shutdownController = opts.shutdown ?? new AbortController();
  const server = new grpc.Server(opts.serverOptions);
  // A method nobody classified would be refused to every caller; refuse to serve it instead.
  // Every service, health and reflection included, decodes its requests as the reference
  // protobuf implementation does (issue 12, defect 12).
  const registrar = {
    addService(definition: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void {
      const missing = unclassified(definition);
      if (missing.length > 0) throw new CtmapError('internal', `server: ${missing.join(', ')} not classified as read or write (src/server/access.ts)`);
      server.addService(decodeRequestsAsReference(definition), implementation);
    },
  };

  const names = ['', ...new Set(opts.services.map((s) => serviceName(s.definition)))];
  const health = new HealthImplementation(Object.fromEntries(names.map((n) => [n, 'NOT_SERVING'])));
  const setHealth = (status: ServingStatus) => names.forEach((n) => health.setStatus(n, status));

  for (const s of opts.services) registrar.addService(s.definition, s.implementation);
  addHealth(registrar, health, shutdownController.signal);
  new ReflectionService(reflectionPackageDefinition()).addToServer(registrar);

  const addresses: string[] = [];
  const unixListeners: UnixListener[] = [];
  const reloaders: Array<{ close(): void }> = [];
  const listenerCredentials = (granter: Granter, base: grpc.ServerCredentials) =>
    grpc.experimental.createServerCredentialsWithInterceptors(base, [accessInterceptor(granter, log)]);
  try {
    const main = await listenUnix(server, {
      socket: path.resolve(config.socket),
      mode: 0o660,
      credentials: listenerCredentials(FULL_ACCESS, grpc.ServerCredentials.createInsecure()),
      log,
    });
    unixListeners.push(main);
    addresses.push(main.address);
    if (config.socketReadonly !== undefined) {
      const readonly = await listenUnix(server, {
        socket: path.resolve(config.socketReadonly),
        mode: config.socketReadonlyMode ?? DEFAULT_SOCKET_READONLY_MODE,
        gid: config.socketReadonlyGroup === undefined ? undefined : resolveGroup(config.socketReadonlyGroup, '--socket-readonly-group'),
        credentials: listenerCredentials(READ_ONLY, grpc.ServerCredentials.createInsecure()),
        log,
      });
      unixListeners.push(readonly);
      addresses.push(readonly.address);
    }
    if (config.listen !== undefined) {
      const port = await bind(server, config.listen, tcpCredentials(config, log, opts.reloadIntervalMs, reloaders, listenerCredentials));
      addresses.push(config.listen.replace(/:\d+$/, `:${port}`));
    }
  } catch (err) {
    server.forceShutdown();
    reloaders.forEach((r) => r.close());
    // Only a socket we bound is ours to remove; another server's is not.
    await Promise.all(unixListeners.map((l) => l.close()));
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
        // No new connections; each socket's close completes once grpc-js has ended its own.
        const socketsClosed = Promise.all(unixListeners.map((l) => l.close()));
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
        reloaders.forEach((r) => r.close());
        await socketsClosed;
        log.info({ graceful }, 'grpc server stopped');
      })();
      return shuttingDown;
    },
  };
}

/**
 * The credentials of the --listen port: TLS from the reloading files with the
 * certificate-based granter, or plaintext with full access when listenInsecure (warned
 * about at every start). Reloaders it starts are pushed on `reloaders`.
 */
function tcpCredentials(
  config: ServerConfig,
  log: Logger,
  intervalMs: number | undefined,
  reloaders: Array<{ close(): void }>,
  withAccess: (granter: Granter, base: grpc.ServerCredentials) => grpc.ServerCredentials,
): grpc.ServerCredentials {
  const { tlsCertFile, tlsKeyFile, tlsClientCaFiles } = config;
  if (tlsCertFile === undefined || tlsKeyFile === undefined || tlsClientCaFiles === undefined) {
    if (!config.listenInsecure) throw new CtmapError('failed-precondition', `--listen ${config.listen}: TLS files or --listen-insecure needed`);
    log.warn(
      { listen: config.listen },
      '--listen-insecure: the TCP port is plaintext and unauthenticated; anyone who can reach it may read and write every map',
    );
    return withAccess(FULL_ACCESS, grpc.ServerCredentials.createInsecure());
  }
  const tlsLog = log.child({ component: 'tls' });
  const files = new ReloadingTlsFiles({ certFile: tlsCertFile, keyFile: tlsKeyFile, clientCaFiles: tlsClientCaFiles }, tlsLog, intervalMs);
  reloaders.push(files);
  let policy: FileReloader<AuthzPolicy> | undefined;
  if (config.authzPolicy !== undefined) {
    const file = config.authzPolicy;
    policy = new FileReloader({
      paths: [file],
      flags: ['--authz-policy'],
      parse: ([text]) => parseAuthzPolicy(text!.toString('utf8'), `--authz-policy ${file}`),
      what: '--authz-policy',
      describe: (p) => ({ readers: p.readers.size, writers: p.writers.size }),
      log: tlsLog,
      intervalMs,
    });
    reloaders.push(policy);
  }
  const m = files.current;
  tlsLog.info(
    { subject: m.subject, serial: m.serial, validTo: m.validTo, clientCas: m.clientCaCount, authzPolicy: config.authzPolicy ?? 'none: every verified client may write' },
    'tls: client certificates required',
  );
  return withAccess(tlsGranter(() => policy?.current), files.credentials());
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

function bind(server: grpc.Server, address: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => {
      if (err) reject(new CtmapError('failed-precondition', `listen ${address}: ${err.message}`, { cause: err }));
      else resolve(port);
    });
  });
}
