/**
 * TLS of the --listen port (issue 12): the server certificate and key and the client CA
 * files, client certificates required and verified, everything reloaded when it changes
 * on disk. grpc-js swaps a listening server's secure context through its certificate
 * provider interface (experimental.CertificateProvider, made for xDS; the server calls
 * http2 setSecureContext on each update), so new connections get the new certificate and
 * CAs and established ones keep theirs. grpc-js's own FileWatcherCertificateProvider is not
 * used: it takes one CA file, and it passes on a half-rotated pair (new certificate, old
 * key), after which the server drops every connection until the next good read; the
 * provider here validates a set of files as a whole and keeps the last good one.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { FileReloader } from './file-reloader';

/** The files of --tls-cert-file, --tls-key-file and --tls-client-ca-files. */
export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
  readonly clientCaFiles: readonly string[];
}

/** One validated set of TLS files. */
export interface TlsMaterial {
  readonly certificate: Buffer;
  readonly privateKey: Buffer;
  /** The client CA files, concatenated. */
  readonly clientCa: Buffer;
  /** Of the server certificate (the chain's first), for the log. */
  readonly subject: string;
  readonly serial: string;
  readonly validTo: string;
  readonly clientCaCount: number;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** The certificates of a PEM file; throws naming `what` when it has none or a bad one. */
function pemCertificates(pem: Buffer, what: string): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new Error(`${what}: no PEM certificate`);
  return blocks.map((b) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw new Error(`${what}: ${(err as Error).message}`);
    }
  });
}

/**
 * Validates the contents of `files` (certificate, key, then each CA file): the
 * certificate file holds certificates, the key matches the first, every CA file holds
 * at least one certificate, and node:tls accepts the whole. Throws an Error naming the
 * flag and file at fault.
 */
export function parseTlsMaterial(files: TlsFiles, [certificate, privateKey, ...cas]: Buffer[]): TlsMaterial {
  const [leaf] = pemCertificates(certificate!, `--tls-cert-file ${files.certFile}`);
  let key;
  try {
    key = createPrivateKey(privateKey!);
  } catch (err) {
    throw new Error(`--tls-key-file ${files.keyFile}: ${(err as Error).message}`);
  }
  if (!leaf!.checkPrivateKey(key)) throw new Error(`--tls-key-file ${files.keyFile}: not the key of --tls-cert-file ${files.certFile}`);
  const clientCaCount = cas.reduce((n, ca, i) => n + pemCertificates(ca, `--tls-client-ca-files ${files.clientCaFiles[i]}`).length, 0);
  // Each file ends with a newline of its own, so that PEM blocks never run together.
  const clientCa = Buffer.concat(cas.flatMap((ca) => [ca, Buffer.from('\n')]));
  try {
    tls.createSecureContext({ cert: certificate, key: privateKey, ca: clientCa });
  } catch (err) {
    throw new Error(`--tls-cert-file ${files.certFile}: ${(err as Error).message}`);
  }
  return {
    certificate: certificate!,
    privateKey: privateKey!,
    clientCa,
    subject: leaf!.subject.split('\n').join(','),
    serial: leaf!.serialNumber,
    validTo: leaf!.validTo,
    clientCaCount,
  };
}

type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

/**
 * The --listen TLS files as a grpc-js certificate provider (identity and CAs from one
 * FileReloader). Construction reads and validates them: throws CtmapError
 * failed-precondition naming the flag and file when they are unusable.
 */
export class ReloadingTlsFiles implements grpc.experimental.CertificateProvider {
  readonly #files: FileReloader<TlsMaterial>;
  readonly #ca = new Set<CaListener>();
  readonly #identity = new Set<IdentityListener>();

  constructor(files: TlsFiles, log: Logger, intervalMs?: number) {
    this.#files = new FileReloader({
      paths: [files.certFile, files.keyFile, ...files.clientCaFiles],
      flags: ['--tls-cert-file', '--tls-key-file', ...files.clientCaFiles.map(() => '--tls-client-ca-files')],
      parse: (contents) => parseTlsMaterial(files, contents),
      what: 'tls files',
      describe: (m) => ({ subject: m.subject, serial: m.serial, validTo: m.validTo, clientCas: m.clientCaCount }),
      log,
      intervalMs,
    });
    this.#files.onChange((m) => {
      for (const l of this.#identity) l(identityOf(m));
      for (const l of this.#ca) l({ caCertificate: m.clientCa });
    });
  }

  get current(): TlsMaterial {
    return this.#files.current;
  }

  /**
   * Server credentials that require a client certificate verified against the client CAs
   * and follow every reload.
   */
  credentials(): grpc.ServerCredentials {
    // grpc-js 1.14 passes its first argument on as the identity provider and its second
    // as the CA provider (the parameter names say the opposite); this one is both.
    return grpc.experimental.createCertificateProviderServerCredentials(this, this, true);
  }

  /** Stops watching the files. */
  close(): void {
    this.#files.close();
  }

  // grpc-js adds its listeners while it creates the listening server and reads the
  // credentials right after, so the first update has to come on a later tick (as in its
  // own FileWatcherCertificateProvider).
  addCaCertificateListener(listener: CaListener): void {
    this.#ca.add(listener);
    process.nextTick(() => this.#ca.has(listener) && listener({ caCertificate: this.current.clientCa }));
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.#ca.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.#identity.add(listener);
    process.nextTick(() => this.#identity.has(listener) && listener(identityOf(this.current)));
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.#identity.delete(listener);
  }
}

function identityOf(m: TlsMaterial): grpc.experimental.IdentityCertificateUpdate {
  return { certificate: m.certificate, privateKey: m.privateKey };
}
