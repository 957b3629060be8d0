/**
 * Test certificates made by openssl in a temp directory: CAs, server and client
 * certificates with the SANs a test asks for, and expired ones. EC P-256 keys, so that a
 * whole PKI takes a few hundred milliseconds.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface Issued {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: Buffer;
  readonly key: Buffer;
}

export interface IssueOptions {
  readonly cn: string;
  /** subjectAltName entries: "URI:spiffe://…", "DNS:…", "IP:…". */
  readonly san?: readonly string[];
  /** Valid in 2020 only. */
  readonly expired?: boolean;
  /** Server certificate (serverAuth) rather than client (clientAuth). */
  readonly server?: boolean;
}

export class TestPki {
  #n = 0;
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true });
  }

  /** A self-signed CA. */
  ca(name: string): Issued {
    const base = path.join(this.dir, name);
    openssl(['req', '-x509', ...newKey(`${base}.key`), '-out', `${base}.crt`, '-subj', `/CN=${name}`, '-days', '2', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    return read(base);
  }

  /** A certificate signed by `ca`, written as <name>.crt / <name>.key. */
  issue(ca: Issued, name: string, opts: IssueOptions): Issued {
    const base = path.join(this.dir, name);
    openssl(['req', ...newKey(`${base}.key`), '-out', `${base}.csr`, '-subj', `/CN=${opts.cn}`]);
    const ext = [
      'basicConstraints=CA:FALSE',
      `extendedKeyUsage=${opts.server ? 'serverAuth' : 'clientAuth'}`,
      ...(opts.san && opts.san.length > 0 ? [`subjectAltName=${opts.san.join(',')}`] : []),
    ];
    fs.writeFileSync(`${base}.ext`, `${ext.join('\n')}\n`);
    if (opts.expired) {
      // `openssl x509` sets no start date; `openssl ca` does, given a tiny CA database.
      const db = path.join(this.dir, `db-${this.#n++}`);
      fs.mkdirSync(db);
      fs.writeFileSync(path.join(db, 'index'), '');
      fs.writeFileSync(path.join(db, 'serial'), '01\n');
      fs.writeFileSync(
        path.join(db, 'ca.cnf'),
        `[ca]\ndefault_ca = test\n[test]\ndatabase = ${db}/index\nnew_certs_dir = ${db}\nserial = ${db}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n`,
      );
      openssl(['ca', '-batch', '-notext', '-config', path.join(db, 'ca.cnf'), '-cert', ca.certFile, '-keyfile', ca.keyFile, '-in', `${base}.csr`, '-out', `${base}.crt`, '-extfile', `${base}.ext`, '-startdate', '20200101000000Z', '-enddate', '20200102000000Z']);
    } else {
      openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-CAcreateserial', '-days', '2', '-extfile', `${base}.ext`, '-out', `${base}.crt`]);
    }
    return read(base);
  }
}

function newKey(keyFile: string): string[] {
  return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile];
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function read(base: string): Issued {
  return { certFile: `${base}.crt`, keyFile: `${base}.key`, cert: fs.readFileSync(`${base}.crt`), key: fs.readFileSync(`${base}.key`) };
}
