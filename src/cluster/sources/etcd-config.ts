/**
 * Cilium's clustermesh etcd configuration file: one per remote cluster, as written by the
 * `clustermesh-apiserver` secrets (`cilium-clustermesh`) and read by the agent's
 * `--clustermesh-config` directory:
 *
 * ```yaml
 * endpoints:
 * - https://cluster1.mesh.cilium.io:2379
 * trusted-ca-file: /var/lib/cilium/clustermesh/cluster1-ca.crt
 * key-file: /var/lib/cilium/clustermesh/cluster1.key
 * cert-file: /var/lib/cilium/clustermesh/cluster1.crt
 * ```
 *
 * Other keys are ignored, as Cilium's etcd client configuration ignores them.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { isMap, parseDocument } from 'yaml';
import { CtmapError, quote } from '../../errors';

/** The TLS material named by a config file, read when the file was parsed. */
export interface EtcdTls {
  /** PEM CA bundle (`trusted-ca-file`); absent: the system roots. */
  readonly ca?: Buffer;
  /** PEM client key and certificate (`key-file` + `cert-file`, always both). */
  readonly key?: Buffer;
  readonly cert?: Buffer;
}

export interface EtcdConfig {
  /** The file the config came from (for log lines and errors). */
  readonly file: string;
  /** `http(s)://host:port` URLs, at least one, all with the same scheme. */
  readonly endpoints: readonly string[];
  /** Present when the file names any TLS file; the endpoints are then https. */
  readonly tls?: EtcdTls;
  /**
   * sha256 over the file text and the TLS files' contents: two configs with the same
   * fingerprint connect the same way, so a rotated certificate counts as a change.
   */
  readonly fingerprint: string;
}

/** The TLS keys of the file format and where their contents go. */
const TLS_FIELDS = [
  ['trusted-ca-file', 'ca'],
  ['key-file', 'key'],
  ['cert-file', 'cert'],
] as const;

/**
 * Whether `text` is meant as an etcd config: it mentions `endpoints:`. This is Cilium's own
 * test (pkg/clustermesh/common `isEtcdConfigFile`), which lets the TLS files that share the
 * directory with the configs (`cluster1.etcd-client.crt`, ...) be skipped without noise.
 */
export function looksLikeEtcdConfig(text: string): boolean {
  return text.includes('endpoints:');
}

/**
 * Parses and validates the config `text` of `file` and reads the TLS files it names
 * (relative paths are taken from the config file's directory). Rejects with a CtmapError
 * `invalid-argument` whose message starts with the file and the field, e.g.
 * `/etc/mesh/cluster1: endpoints: must be a non-empty list of URLs`, and whose `field` is
 * the YAML key (`yaml` for a syntax error).
 */
export async function parseEtcdConfig(file: string, text: string): Promise<EtcdConfig> {
  const bad = (field: string, problem: string, cause?: unknown): CtmapError =>
    new CtmapError('invalid-argument', `${file}: ${field}: ${problem}`, { field, cause });

  const doc = parseDocument(text);
  if (doc.errors.length > 0) throw bad('yaml', doc.errors[0].message.trim(), doc.errors[0]);
  if (!isMap(doc.contents)) throw bad('yaml', 'must be a mapping with an `endpoints` list');
  let raw: Record<string, unknown>;
  try {
    raw = doc.toJS() as Record<string, unknown>;
  } catch (err) {
    // e.g. more alias expansions than yaml's maxAliasCount ("billion laughs")
    throw bad('yaml', (err as Error).message, err);
  }

  const endpoints = raw.endpoints;
  if (!Array.isArray(endpoints) || endpoints.length === 0) throw bad('endpoints', 'must be a non-empty list of URLs');
  const urls = endpoints.map((e, i) => checkEndpoint(e, (problem) => bad(`endpoints[${i}]`, problem)));
  const schemes = new Set(urls.map((u) => u.protocol));
  // etcd3 builds one channel credential for all hosts, so a mix cannot be honoured.
  if (schemes.size > 1) throw bad('endpoints', 'must all use the same scheme (http or https)');

  const hash = createHash('sha256').update(text);
  const tls: { ca?: Buffer; key?: Buffer; cert?: Buffer } = {};
  for (const [field, slot] of TLS_FIELDS) {
    const value = raw[field];
    if (value === undefined || value === null) continue;
    if (typeof value !== 'string' || value === '') throw bad(field, 'must be a file path');
    const tlsPath = path.resolve(path.dirname(file), value);
    try {
      tls[slot] = await fsp.readFile(tlsPath);
    } catch (err) {
      throw bad(field, `cannot read ${tlsPath}: ${(err as Error).message}`, err);
    }
    hash.update(`\0${field}\0`).update(tls[slot]);
  }
  if ((tls.key === undefined) !== (tls.cert === undefined)) {
    throw bad(tls.key === undefined ? 'key-file' : 'cert-file', 'key-file and cert-file must be given together');
  }
  const hasTls = tls.ca !== undefined || tls.key !== undefined;
  if (hasTls && !schemes.has('https:')) throw bad('endpoints', 'TLS files are given, so the endpoints must be https:// URLs');

  return {
    file,
    endpoints: urls.map((u) => u.href),
    ...(hasTls ? { tls } : {}),
    fingerprint: hash.digest('hex'),
  };
}

/**
 * Checks one endpoint and returns it as `scheme://host:port`: etcd3 strips the scheme and
 * hands the rest to gRPC as the target, so a trailing `/` or a path must not get through.
 */
function checkEndpoint(value: unknown, bad: (problem: string) => CtmapError): { protocol: string; href: string } {
  if (typeof value !== 'string') throw bad('must be a URL string');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw bad(`${quote(value)} is not a URL (want https://host:port)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw bad(`${quote(value)}: scheme must be http or https`);
  if ((url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '' || url.username !== '') {
    throw bad(`${quote(value)}: must be scheme://host:port only`);
  }
  // URL drops a port equal to the scheme's default (443 for https), so look at the text too.
  const port = url.port !== '' ? url.port : /:(\d+)\/?$/.exec(value)?.[1];
  // Without a port gRPC would dial 443, never etcd's 2379: make the operator say which.
  if (port === undefined) throw bad(`${quote(value)}: must include a port (etcd listens on 2379)`);
  return { protocol: url.protocol, href: `${url.protocol}//${url.hostname}:${port}` };
}
