/**
 * Who may call what (issue 12). Every RPC ctmapd serves is classified once, in RPC_ACCESS,
 * as a read or a write. Each listener grants the callers arriving on it a role: the main
 * socket and a --listen-insecure port grant write, the read-only socket read, TLS what
 * the verified client certificate's identity is given by --authz-policy (write without
 * one). accessInterceptor() refuses a call its caller's role does not cover with
 * PERMISSION_DENIED before the handler runs, so a refused call writes nothing; a method
 * missing from the table is refused to everyone, and startServer() refuses to serve one.
 */
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { parse as parseYaml } from 'yaml';
import { CtmapError, MAX_DETAILS_BYTES, capBytes, quote } from '../errors';
import type { Logger } from 'pino';

/** A read changes nothing; a write may change maps, cluster membership or GC state. A
 *  writer may also read. */
export type Access = 'read' | 'write';

/**
 * Every method ctmapd serves, by its full path. Reads: dumps, counts, lookups, status,
 * event streams, health and reflection. Writes: whatever changes a map, a cluster's maps
 * or when the GC runs.
 */
export const RPC_ACCESS: Readonly<Record<string, Access>> = Object.freeze({
  '/ctmap.v1.CTMaps/ActiveMaps': 'read',
  '/ctmap.v1.CTMaps/DumpEntries': 'read',
  '/ctmap.v1.CTMaps/DumpEntriesBatched': 'read',
  '/ctmap.v1.CTMaps/DumpEntriesWithTimeDiff': 'read',
  '/ctmap.v1.CTMaps/Count': 'read',
  '/ctmap.v1.CTMaps/Lookup': 'read',
  '/ctmap.v1.CTMaps/Update': 'write',
  '/ctmap.v1.CTMaps/Delete': 'write',
  '/ctmap.v1.CTMaps/Flush': 'write',
  '/ctmap.v1.GCRunner/Run': 'write',
  '/ctmap.v1.GCRunner/Observe': 'read',
  '/ctmap.v1.GCRunner/Status': 'read',
  '/ctmap.v1.GCRunner/Signal': 'write',
  '/ctmap.v1.NATMaps/DumpEntries': 'read',
  '/ctmap.v1.NATMaps/Update': 'write',
  '/ctmap.v1.NATMaps/Delete': 'write',
  '/ctmap.v1.NATMaps/PurgeOrphanNATEntries': 'write',
  '/ctmap.v1.NATMaps/Flush': 'write',
  '/ctmap.v1.ClusterCTMaps/CreateClusterCTMaps': 'write',
  '/ctmap.v1.ClusterCTMaps/DeleteClusterCTMaps': 'write',
  '/ctmap.v1.ClusterCTMaps/GetAllClusterCTMaps': 'read',
  '/ctmap.v1.ClusterCTMaps/CleanupPerClusterCTMaps': 'write',
  '/ctmap.v1.ClusterCTMaps/WatchMembership': 'read',
  '/ctmap.v1.CTEvents/Watch': 'read',
  '/ctmap.v1.CTEvents/WatchBatched': 'read',
  '/grpc.health.v1.Health/Check': 'read',
  '/grpc.health.v1.Health/Watch': 'read',
  '/grpc.health.v1.Health/List': 'read',
  '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo': 'read',
  '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo': 'read',
});

/** The access `path` ("/ctmap.v1.CTMaps/Update") needs; undefined when it is not classified. */
export function accessOf(path: string): Access | undefined {
  return Object.prototype.hasOwnProperty.call(RPC_ACCESS, path) ? RPC_ACCESS[path] : undefined;
}

/** Full paths of the methods of `definition` that RPC_ACCESS does not classify. */
export function unclassified(definition: grpc.ServiceDefinition): string[] {
  return Object.values(definition)
    .map((m) => m.path)
    .filter((p) => accessOf(p) === undefined);
}

/** What the server knows about who is calling. */
export interface Caller {
  /**
   * For logs and refusals: the certificate subject on TLS ("CN=agent,O=example"),
   * otherwise the peer grpc-js reports: "unix:pid=…,uid=…,gid=…" (or "unix") on a unix
   * socket (see unix-listener.ts), "HOST:PORT" on plaintext TCP.
   */
  readonly identity: string;
  /** Whether the call came over TLS with a client certificate the server verified. */
  readonly verified: boolean;
  /** What an authz policy matches: the verified certificate's SAN URIs, its SAN DNS
   *  names (lower case) and "CN=<common name>". Empty without a verified certificate. */
  readonly names: readonly string[];
}

/** The calls callerOf() reads: a handler's call object or an interceptor's. */
export interface CallIdentitySource {
  getPeer(): string;
  getAuthContext(): { transportSecurityType?: string; sslPeerCertificate?: { raw: Buffer } };
}

/**
 * The Caller of `call`. grpc-js reports a certificate only for a TLS connection whose
 * client certificate it verified (getAuthContext()); the names are read from the
 * certificate itself.
 */
export function callerOf(call: CallIdentitySource): Caller {
  const auth = call.getAuthContext();
  const raw = auth.transportSecurityType === 'ssl' ? auth.sslPeerCertificate?.raw : undefined;
  if (!raw) return { identity: call.getPeer(), verified: false, names: [] };
  const cert = new X509Certificate(raw);
  const subject = cert.subject.split('\n').filter(Boolean);
  const names = [
    ...subjectAltNames(cert.subjectAltName ?? '').flatMap(([type, value]) => (type === 'URI' ? [value] : type === 'DNS' ? [value.toLowerCase()] : [])),
    ...subject.filter((rdn) => rdn.startsWith('CN=')),
  ];
  return { identity: subject.join(',') || `certificate ${cert.serialNumber}`, verified: true, names };
}

/**
 * Splits a subjectAltName as Node prints it ("DNS:a.example, URI:spiffe://x/y"; a value
 * with a comma, quote or other special character is a JSON string) into [type, value].
 */
export function subjectAltNames(text: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(':', i);
    if (colon < 0) break;
    const type = text.slice(i, colon);
    let value: string;
    let next: number;
    if (text[colon + 1] === '"') {
      let end = colon + 2;
      while (end < text.length && text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      value = JSON.parse(text.slice(colon + 1, end + 1)) as string;
      next = end + 1;
    } else {
      const comma = text.indexOf(', ', colon);
      next = comma < 0 ? text.length : comma;
      value = text.slice(colon + 1, next);
    }
    out.push([type, value]);
    i = next + 2; // past ", "
  }
  return out;
}

/** --authz-policy: which certificate identities may read, which may write. */
export interface AuthzPolicy {
  readonly readers: ReadonlySet<string>;
  readonly writers: ReadonlySet<string>;
}

/**
 * Parses a policy file: a YAML mapping with `readers` and/or `writers`, each a list of
 * identities: a SAN URI ("spiffe://cluster.local/ns/x/sa/y"), a SAN DNS name (matched
 * case-insensitively) or "CN=<common name>". Any other key is an error (a typo must not
 * silently take a role away). Throws CtmapError invalid-argument naming `source`.
 */
export function parseAuthzPolicy(text: string, source: string): AuthzPolicy {
  const bad = (problem: string) => new CtmapError('invalid-argument', `${source}: ${problem}`);
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw bad(`not YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  doc ??= {};
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad('want a mapping {readers: [...], writers: [...]}');
  const extra = Object.keys(doc).filter((k) => k !== 'readers' && k !== 'writers');
  if (extra.length > 0) throw bad(`unknown key ${quote(extra[0])} (want readers, writers)`);
  const list = (key: 'readers' | 'writers'): Set<string> => {
    const v = (doc as Record<string, unknown>)[key] ?? [];
    if (!Array.isArray(v) || v.some((e) => typeof e !== 'string' || e.trim() === '')) throw bad(`${key}: want a list of identities`);
    return new Set(v.map((e: string) => normalizeIdentity(e.trim())));
  };
  return { readers: list('readers'), writers: list('writers') };
}

/** DNS names compare case-insensitively; URIs (they hold a ':') and CN= do not. */
function normalizeIdentity(entry: string): string {
  return entry.startsWith('CN=') || entry.includes(':') ? entry : entry.toLowerCase();
}

/** A listener's verdict on a caller: its role, or none with the reason. */
export interface Grant {
  readonly role?: Access;
  /** Why the role is what it is; said in a refusal. */
  readonly why: string;
}

/** How a listener grants roles to the callers arriving on it. */
export type Granter = (caller: Caller) => Grant;

/** The main unix socket and a --listen-insecure port: everything, as before issue 12. */
export const FULL_ACCESS: Granter = () => ({ role: 'write', why: 'full access' });

/** The read-only socket. */
export const READ_ONLY: Granter = () => ({ role: 'read', why: 'the read-only socket serves read RPCs only' });

/**
 * The TLS port: a verified client may write unless `policy()` returns a policy; then a
 * writer (any of its names listed in writers) may write, a reader read, anyone else
 * nothing. `policy` is asked at each call, so a reloaded policy applies at once.
 */
export function tlsGranter(policy: () => AuthzPolicy | undefined): Granter {
  return (caller) => {
    if (!caller.verified) return { why: 'no verified client certificate' };
    const p = policy();
    if (!p) return { role: 'write', why: 'a verified client (no --authz-policy)' };
    if (caller.names.some((n) => p.writers.has(n))) return { role: 'write', why: 'a writer in --authz-policy' };
    if (caller.names.some((n) => p.readers.has(n))) return { role: 'read', why: 'a reader in --authz-policy, not a writer' };
    // A few names say enough; a certificate may carry many (messages stay short, issue 12 item 9).
    const shown = caller.names.slice(0, 4).join(', ') + (caller.names.length > 4 ? ', …' : '');
    return { why: `not listed in --authz-policy (names: ${shown || 'none'})` };
  };
}

/**
 * Why `caller` may not call `path` under `grant`, or undefined when it may. The message
 * names the method and the caller; it is what PERMISSION_DENIED says.
 */
export function refusal(path: string, caller: Caller, grant: Grant): string | undefined {
  const needs = accessOf(path);
  const denied = `${path.replace(/^\//, '')}: permission denied for ${caller.identity}`;
  if (needs === undefined) return `${denied}: the method is not classified as read or write`;
  if (grant.role === 'write' || grant.role === needs) return undefined;
  return `${denied} (${needs} RPC): ${grant.why}`;
}

/** "CTMaps/Update" from "/ctmap.v1.CTMaps/Update": the `method` of the call boundary's logs. */
function shortName(path: string): string {
  const [, service = '', method = ''] = path.split('/');
  return `${service.split('.').pop()}/${method}`;
}

/**
 * The server interceptor of one listener: every call's caller gets a role from `granter`;
 * a call the role does not cover ends with PERMISSION_DENIED (logged at warn) before its
 * handler sees metadata or a message, so it runs no handler code and writes nothing.
 */
export function accessInterceptor(granter: Granter, log: Logger): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, forward) => {
            const caller = callerOf(call);
            const details = refusal(method.path, caller, granter(caller));
            if (details === undefined) return forward(metadata);
            log.warn({ method: shortName(method.path), caller: caller.identity, peer: call.getPeer(), needs: accessOf(method.path) ?? 'unclassified' }, 'permission denied');
            // A certificate may name long identities: the status is cut like every other (call-boundary.ts).
            call.sendStatus({ code: grpc.status.PERMISSION_DENIED, details: capBytes(details, MAX_DETAILS_BYTES), metadata: new grpc.Metadata() });
          },
        }),
    });
}
