/**
 * The unix sockets of the gRPC server: the main socket and the optional read-only one.
 * The daemon accepts their connections itself (a net.Server) and hands each to grpc-js
 * (Server.createConnectionInjector) after reading who connected: SO_PEERCRED through
 * src/sys/peercred.ts on the accepted socket's fd. grpc-js reports a unix peer as
 * "unknown" and hides the sockets it accepts, so without this every call and every audit
 * line would say "unknown" (issue 12).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { CtmapError, quote } from '../errors';

export interface UnixListenerOptions {
  /** Absolute socket path; its directory is created 0755. */
  readonly socket: string;
  readonly mode: number;
  /** Group to give the socket; undefined = the daemon's. */
  readonly gid?: number;
  /** Credentials (insecure, with the listener's access interceptor) of its connections. */
  readonly credentials: grpc.ServerCredentials;
  /** Where an accept error after listening goes (it would otherwise be unhandled). */
  readonly log: Logger;
}

export interface UnixListener {
  readonly address: string;
  /** Stops accepting (established connections are the grpc.Server's to end) and removes
   *  the socket file. Idempotent. */
  close(): Promise<void>;
}

/**
 * Listens on `opts.socket` for `server`: a socket file left by a process that died is
 * replaced, the socket gets `opts.mode` and `opts.gid`. Throws CtmapError: already-exists
 * when another process answers on the socket, failed-precondition when the path holds
 * something else or binding fails, permission-denied when the directory cannot be made
 * or read.
 */
export async function listenUnix(server: grpc.Server, opts: UnixListenerOptions): Promise<UnixListener> {
  const { socket } = opts;
  await prepareSocketPath(socket);
  const injector = server.createConnectionInjector(opts.credentials);
  const listener = net.createServer((conn) => {
    labelPeer(conn);
    injector.injectConnection(conn);
  });
  await new Promise<void>((resolve, reject) => {
    listener.once('error', (err) => reject(new CtmapError('failed-precondition', `listen unix:${socket}: ${err.message}`, { cause: err })));
    listener.listen(socket, () => {
      listener.removeAllListeners('error');
      listener.on('error', (err) => opts.log.error({ err, socket }, 'unix socket accept failed'));
      resolve();
    });
  });
  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= new Promise<void>((resolve) => listener.close(() => resolve())).then(() => removeSocket(socket));
    return closed;
  };
  try {
    await fs.promises.chmod(socket, opts.mode);
    if (opts.gid !== undefined) await fs.promises.chown(socket, -1, opts.gid);
  } catch (err) {
    await close();
    throw new CtmapError('failed-precondition', `socket ${socket}: ${(err as Error).message}`, { cause: err });
  }
  return { address: `unix:${socket}`, close };
}

/**
 * Makes the accepted connection's peer known to grpc-js: it reports a call's peer (and
 * the connection info interceptors see) from the socket's `remoteAddress`, which Node
 * leaves undefined for unix sockets. Set to "unix:pid=…,uid=…,gid=…" from SO_PEERCRED, or
 * "unix" where that is not available. The fd is the accepted handle's (`_handle.fd`,
 * Node's, not public API; absent means "unix").
 */
function labelPeer(conn: net.Socket): void {
  const fd = (conn as unknown as { _handle?: { fd?: number } })._handle?.fd;
  const creds = fd !== undefined && fd >= 0 ? peerCredentialsOf(fd) : undefined;
  const label = creds ? `unix:pid=${creds.pid},uid=${creds.uid},gid=${creds.gid}` : 'unix';
  Object.defineProperty(conn, 'remoteAddress', { value: label, configurable: true });
}

type PeerCredentialsFn = (fd: number) => { pid: number; uid: number; gid: number } | undefined;
let peerCredentialsFn: PeerCredentialsFn | null | undefined;

/** src/sys/peercred.ts, loaded on first use: it loads koffi, which the server does not
 *  need otherwise; null (peer "unix") when it cannot load. */
function peerCredentialsOf(fd: number): ReturnType<PeerCredentialsFn> {
  if (peerCredentialsFn === undefined) {
    try {
      peerCredentialsFn = (require('../sys/peercred') as { peerCredentials: PeerCredentialsFn }).peerCredentials;
    } catch {
      peerCredentialsFn = null;
    }
  }
  return peerCredentialsFn?.(fd);
}

/**
 * A group for chown: a gid as given, a name looked up in /etc/group (groups only a name
 * service knows need their gid). Throws CtmapError failed-precondition naming `flag`.
 */
export function resolveGroup(group: number | string, flag: string, groupFile = '/etc/group'): number {
  if (typeof group === 'number') return group;
  let text: string;
  try {
    text = fs.readFileSync(groupFile, 'utf8');
  } catch (err) {
    throw new CtmapError('failed-precondition', `${flag}: cannot read ${groupFile} to look up ${quote(group)}: ${(err as Error).message}`, { cause: err });
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new CtmapError('failed-precondition', `${flag}: no group ${quote(group)} in ${groupFile} (give its gid)`);
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
