/**
 * `ctmap health`, and what every gRPC command of `ctmap` shares: the connection to the
 * daemon, on its unix socket or, with `--server HOST:PORT`, its TLS listener.
 * gRPC failures become CliRpcError with the status name and the server's message, plus a
 * hint when the daemon is not reachable.
 */
import * as grpc from '@grpc/grpc-js';
import { UnaryMethod, healthClient } from '../api/clients';
import * as fs from 'node:fs';
import type { CliCommand, CliServer } from './args';
import type { Io } from './datapath';

/** A failed call: exit code 1, the message names the RPC and the status. */
export class CliRpcError extends Error {
  override name = 'CliRpcError';
}

/** A failed call as CliRpcError: the RPC, the status name, the server's message, and a hint when no daemon answers. */
export function rpcError(rpc: string, server: CliServer, err: grpc.ServiceError): CliRpcError {
  const where = server.target.startsWith('unix:') ? `--socket ${server.target.slice(5)}` : `--listen ${server.target}`;
  const hint = err.code === grpc.status.UNAVAILABLE ? ` (is ctmapd running with ${where}?)` : '';
  return new CliRpcError(`${rpc}: ${grpc.status[err.code] ?? err.code}: ${err.details}${hint}`);
}

/**
 * The address and credentials for `server`: insecure on a unix socket (the socket's mode
 * is the access control) and with --insecure; else TLS with the client certificate. Throws
 * CliRpcError naming a TLS file that cannot be read.
 */
/** A unary call of `method` on `client` as a promise; a failure becomes CliRpcError naming `rpc` ("CTMaps.ActiveMaps"). */
export function unary<Req, Res>(client: grpc.Client, rpc: string, server: CliServer, method: UnaryMethod<Req, Res>, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    const call = method as (req: Req, callback: grpc.requestCallback<Res>) => grpc.ClientUnaryCall;
    call.call(client, req, (err, res) => (err ? reject(rpcError(rpc, server, err)) : resolve(res as Res)));
  });
}

export function connection(server: CliServer): [string, grpc.ChannelCredentials] {
  if (!server.tls) return [server.target, grpc.credentials.createInsecure()];
  const read = (file: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new CliRpcError(`cannot read ${file}: ${(err as Error).message}`);
    }
  };
  return [server.target, grpc.credentials.createSsl(read(server.tls.caFile), read(server.tls.keyFile), read(server.tls.certFile))];
}

/**
 * grpc.health.v1.Health/Check on the daemon's socket (`service` "" = the whole server).
 * Prints the status and resolves with 0 only for SERVING; NOT_SERVING (starting, or
 * shutting down), UNKNOWN and SERVICE_UNKNOWN resolve with 1. Rejects with CliRpcError
 * when the call fails (no daemon, an unknown service, no answer within `timeoutMs`).
 */
export function health(cmd: Extract<CliCommand, { kind: 'health' }>, io: Io): Promise<number> {
  const client = healthClient(...connection(cmd.server));
  const what = cmd.service === '' ? 'ctmapd' : cmd.service;
  return new Promise<number>((resolve, reject) => {
    client.Check({ service: cmd.service }, { deadline: Date.now() + cmd.timeoutMs }, (err, res) => {
      if (err) return reject(rpcError('grpc.health.v1.Health/Check', cmd.server, err));
      if (!res) return reject(new CliRpcError('grpc.health.v1.Health/Check: no response'));
      io.out(`${what}: ${res.status}\n`);
      resolve(res.status === 'SERVING' ? 0 : 1);
    });
  }).finally(() => client.close());
}

/**
 * Follows a watch stream (`ctmap events`, `ctmap cluster watch`) until `take` says it has
 * printed enough (returns true), the daemon ends the stream, or SIGINT: each resolves 0;
 * a failed call rejects with CliRpcError naming `rpc`. The stream is cancelled when the
 * command stops early, and the SIGINT handler is removed whichever way it ends.
 */
export function followStream<T>(stream: grpc.ClientReadableStream<T>, rpc: string, server: CliServer, take: (msg: T) => boolean): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let done = false;
    const stop = (result: () => void): void => {
      if (done) return;
      done = true;
      process.off('SIGINT', finish);
      result();
    };
    const finish = (): void =>
      stop(() => {
        stream.cancel();
        resolve(0);
      });
    process.once('SIGINT', finish);
    stream.on('data', (msg: T) => {
      if (!done && take(msg)) finish();
    });
    stream.on('error', (err: grpc.ServiceError) => stop(() => reject(rpcError(rpc, server, err))));
    stream.on('end', () => stop(() => resolve(0)));
  });
}
