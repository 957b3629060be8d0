/**
 * Issue 12, items 1-3 on TCP: --listen is TLS with client certificates made here by
 * openssl. No certificate, another CA's, an expired one: refused in the handshake; a
 * valid one: served; the certificate's identity selects its role (--authz-policy); a
 * refused write writes nothing; certificates, CAs and the policy rotate on disk without
 * a restart; plaintext needs --listen-insecure. Memory backend, 127.0.0.1, ephemeral port.
 */
import { run as runCli } from '../../src/cli/main';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { REPO_ROOT } from '../../src/config/paths';
import { parseConfig } from '../../src/config/config';
import { startDaemon } from '../../src/daemon/daemon';
import { services } from '../../src/api/proto';
import { accessOf } from '../../src/server/access';
import { TestDaemon, call, rejectsWith, startTestDaemon } from '../helpers/grpc';
import { makeRecords } from '../helpers/ct-flow';
import { allMethods, probe } from '../helpers/access';
import { Issued, TestPki } from '../helpers/pki';

const MEMORY = ['--backend', 'memory', '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096'];
/** Server certificates name localhost: a TLS server name may not be an IP (RFC 6066). */
const CLIENT: grpc.ChannelOptions = { 'grpc.ssl_target_name_override': 'localhost' };
/** A channel of its own per client: grpc-js would otherwise share one connection between
 *  clients with equal credentials, and a rotation test needs new connections. */
const FRESH: grpc.ChannelOptions = { ...CLIENT, 'grpc.use_local_subchannel_pool': 1 };
const WRITER_URI = 'spiffe://ctmapd.test/agent';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('TLS with client certificates on --listen (issue 12)', () => {
  let dir: string;
  let pki: TestPki;
  let ca: Issued;
  const id: Record<string, Issued> = {};
  let files: { cert: string; key: string; caMain: string; caExtra: string; policy: string };
  let d: TestDaemon;
  let address: string;
  let port: number;

  /** Client credentials trusting our CA; the serials of the server certificates seen go to `seen`. */
  const creds = (client: Issued | undefined, seen?: string[]) =>
    grpc.credentials.createSsl(ca.cert, client?.key ?? null, client?.cert ?? null, {
      checkServerIdentity: (host, cert) => {
        seen?.push(cert.serialNumber);
        return tls.checkServerIdentity(host, cert);
      },
    });
  const ctAs = (client: Issued | undefined, seen?: string[]) => new (services().CTMaps)(address, creds(client, seen), FRESH);
  /**
   * A raw TLS connection as `client`: 'ok' when the server still holds it open 300 ms
   * after the handshake, else the alert that ended it or 'closed' (Node's server drops a
   * client whose certificate it cannot verify without an alert). In TLS 1.3 the client's
   * side of the handshake completes before the server has judged its certificate.
   */
  const handshake = (client: Issued | undefined) =>
    new Promise<string>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', servername: 'localhost', port, ca: ca.cert, cert: client?.cert, key: client?.key, ALPNProtocols: ['h2'] });
      s.once('error', (e) => resolve(e.message));
      s.once('close', () => resolve('closed'));
      s.once('secureConnect', () => setTimeout(() => (resolve('ok'), s.destroy()), 300));
    });

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-tls-'));
    pki = new TestPki(path.join(dir, 'pki'));
    ca = pki.ca('ca1');
    const other = pki.ca('ca2');
    const third = pki.ca('ca3');
    id.server = pki.issue(ca, 'server', { cn: 'ctmapd', san: ['IP:127.0.0.1', 'DNS:localhost'], server: true });
    id.writer = pki.issue(ca, 'writer', { cn: 'agent', san: [`URI:${WRITER_URI}`] });
    id.reader = pki.issue(ca, 'reader', { cn: 'hubble', san: ['DNS:hubble.ctmapd.test'] });
    id.stranger = pki.issue(ca, 'stranger', { cn: 'stranger' });
    id.foreign = pki.issue(other, 'foreign', { cn: 'agent', san: [`URI:${WRITER_URI}`] });
    id.third = pki.issue(third, 'third', { cn: 'agent', san: [`URI:${WRITER_URI}`] });
    id.expired = pki.issue(ca, 'expired', { cn: 'agent', san: [`URI:${WRITER_URI}`], expired: true });
    id.ca2 = other;
    files = {
      cert: path.join(dir, 'tls.crt'),
      key: path.join(dir, 'tls.key'),
      caMain: path.join(dir, 'clients-ca.pem'),
      caExtra: path.join(dir, 'clients-ca-extra.pem'),
      policy: path.join(dir, 'authz.yaml'),
    };
    fs.writeFileSync(files.cert, id.server.cert);
    fs.writeFileSync(files.key, id.server.key);
    fs.writeFileSync(files.caMain, ca.cert);
    fs.writeFileSync(files.caExtra, third.cert);
    fs.writeFileSync(files.policy, `readers:\n  - hubble.ctmapd.test\nwriters:\n  - ${WRITER_URI}\n`);
    d = await startTestDaemon(dir, [
      ...MEMORY,
      '--listen=127.0.0.1:0',
      `--tls-cert-file=${files.cert}`,
      `--tls-key-file=${files.key}`,
      `--tls-client-ca-files=${files.caMain},${files.caExtra}`,
      `--authz-policy=${files.policy}`,
    ]);
    address = d.daemon.server.addresses.at(-1)!;
    port = Number(address.split(':').pop());
  });

  after(async () => {
    await d.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('ctmap --server HOST:PORT with the TLS files reaches the daemon; with a certificate of another CA it does not', async () => {
    const write = (name: string, text: string | Buffer): string => {
      const f = path.join(dir, name);
      fs.writeFileSync(f, text);
      return f;
    };
    const tlsFlags = ['--tls-ca-file', write('cli-ca.pem', ca.cert), '--tls-cert-file', write('cli.crt', id.reader.cert), '--tls-key-file', write('cli.key', id.reader.key)];
    const out = { out: '', err: '' };
    const io = { out: (t: string) => void (out.out += t), err: (t: string) => void (out.err += t) };
    // The daemon's certificate names 127.0.0.1 and localhost: the CLI checks it like any client.
    assert.equal(await runCli(['health', '--server', `localhost:${port}`, ...tlsFlags], {}, io), 0, out.err);
    assert.match(out.out, /SERVING/);
    assert.equal(await runCli(['ct', 'list', '--server', `localhost:${port}`, ...tlsFlags], {}, io), 0, out.err);
    out.err = '';
    const stranger = ['--tls-ca-file', write('cli-ca2.pem', ca.cert), '--tls-cert-file', write('s.crt', id.foreign.cert), '--tls-key-file', write('s.key', id.foreign.key)];
    assert.equal(await runCli(['health', '--server', `localhost:${port}`, '--timeout', '2', ...stranger], {}, io), 1, 'a certificate of another CA is refused');
    assert.match(out.err, /UNAVAILABLE|handshake|certificate/i);
  });

  it('serves a client with a valid certificate, and audits its write with the certificate subject', async () => {
    const c = ctAs(id.writer);
    try {
      const [record] = makeRecords(1);
      assert.equal((await call(c, 'Update', { records: [record] })).written, 1);
      const found = await call(c, 'Lookup', { map: record!.map, key: record!.key });
      assert.equal(found.entry.lifetime, record!.entry.lifetime);
      // The second CA file counts as well.
      const third = ctAs(id.third);
      assert.ok((await call(third, 'ActiveMaps', {})).maps.length > 0);
      third.close();
    } finally {
      c.close();
    }
    const line = d.logs.lines.find((l) => l.msg === 'audit' && l.method === 'CTMaps/Update');
    assert.ok(line, 'no audit line');
    assert.equal(line.level, 30);
    assert.equal(line.caller, 'CN=agent');
    assert.match(line.peer, /^127\.0\.0\.1:\d+$/);
    assert.deepEqual([line.outcome, line.maps, line.written], ['OK', ['tcp4'], 1]);
  });

  it('refuses no client certificate, one from another CA and an expired one in the handshake', async () => {
    for (const [who, client, alert] of [
      ['none', undefined, /certificate required/],
      ['another CA', id.foreign, /^closed$|ECONNRESET/],
      ['expired', id.expired, /^closed$|ECONNRESET/],
    ] as const) {
      assert.match(await handshake(client), alert, `${who}: the server ends the connection`);
      const c = ctAs(client);
      await rejectsWith(call(c, 'ActiveMaps', {}), grpc.status.UNAVAILABLE).finally(() => c.close());
    }
    assert.equal(await handshake(id.writer), 'ok');
  });

  it('is seen to demand a client certificate by a client that is not ours (openssl s_client)', async () => {
    // TLS 1.2 so that the refusal is part of the handshake s_client reports. Not spawnSync:
    // the server runs in this process.
    const sClient = (...extra: string[]) =>
      new Promise<string>((resolve) => {
        const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-CAfile', ca.certFile, '-tls1_2', '-alpn', 'h2', ...extra], { timeout: 5000 }, (_e, out, err) => resolve(`${out}${err}`));
        child.stdin?.end();
      });
    const refused = await sClient();
    assert.match(refused, /Acceptable client certificate CA names\s+CN ?= ?ca1\s+CN ?= ?ca3/);
    assert.match(refused, /alert handshake failure/);
    const served = await sClient('-cert', id.writer!.certFile, '-key', id.writer!.keyFile);
    assert.match(served, /Verify return code: 0 \(ok\)/);
    assert.match(served, /ALPN protocol: h2/);
    assert.doesNotMatch(served, /alert/);
  });

  it('gives a reader every read and no write, and a listed-nowhere client nothing; refused writes write nothing', async () => {
    const before = await countAll(ctAs(id.writer));
    // One credentials object per identity: its calls share one connection.
    const [readerCreds, strangerCreds] = [creds(id.reader), creds(id.stranger)];
    const reader = await Promise.all(allMethods().map(async (m) => ({ m, s: await probe(m, address, readerCreds, CLIENT) })));
    const stranger = await Promise.all(allMethods().map(async (m) => ({ m, s: await probe(m, address, strangerCreds, CLIENT) })));
    const wrong: string[] = [];
    for (const { m, s } of reader) {
      const denied = s.code === grpc.status.PERMISSION_DENIED;
      if (accessOf(m.path) === 'write' && !(denied && s.details.startsWith(`${m.path.slice(1)}: permission denied for CN=hubble`))) wrong.push(`reader ${m.path}: ${grpc.status[s.code]} ${s.details}`);
      if (accessOf(m.path) === 'read' && denied) wrong.push(`reader ${m.path}: ${s.details}`);
    }
    for (const { m, s } of stranger) {
      if (!(s.code === grpc.status.PERMISSION_DENIED && /permission denied for CN=stranger .*not listed in --authz-policy/.test(s.details))) wrong.push(`stranger ${m.path}: ${grpc.status[s.code]} ${s.details}`);
    }
    assert.deepEqual(wrong, []);
    // The reader tried Update, Delete, Flush, GC Run, NAT and cluster writes: nothing changed.
    assert.deepEqual(await countAll(ctAs(id.writer)), before);
    const [, record] = makeRecords(2);
    const r = ctAs(id.reader);
    await rejectsWith(call(r, 'Update', { records: [record] }), grpc.status.PERMISSION_DENIED, 'ctmap.v1.CTMaps/Update');
    await rejectsWith(call(r, 'Lookup', { map: record!.map, key: record!.key }), grpc.status.NOT_FOUND);
    r.close();
    const refused = d.logs.lines.find((l) => l.msg === 'permission denied' && l.caller === 'CN=hubble' && l.method === 'CTMaps/Update');
    assert.ok(refused, 'the refusal is logged');
    assert.equal(refused.level, 40);
  });

  it('takes rotated certificates, CA files and policy from disk without a restart', async () => {
    const oldSerial = new X509Certificate(id.server!.cert).serialNumber;
    const seenBefore: string[] = [];
    const c0 = ctAs(id.writer, seenBefore);
    await call(c0, 'ActiveMaps', {});
    assert.deepEqual(seenBefore, [oldSerial]);

    const rotated = pki.issue(ca, 'server-rotated', { cn: 'ctmapd-rotated', san: ['DNS:localhost'], server: true });
    const newSerial = new X509Certificate(rotated.cert).serialNumber;
    // Certificate first, key a moment later: the half-rotated pair in between is rejected
    // (and logged), the old pair stays in use until the key arrives.
    fs.writeFileSync(files.cert, rotated.cert);
    await sleep(1500);
    fs.writeFileSync(files.key, rotated.key);
    fs.writeFileSync(files.caExtra, id.ca2!.cert); // ca3 out, ca2 in
    fs.writeFileSync(files.policy, `writers: [hubble.ctmapd.test, ${WRITER_URI}]\n`);

    let seen: string[] = [];
    for (const end = Date.now() + 5000; Date.now() < end; await sleep(100)) {
      seen = [];
      const c = ctAs(id.writer, seen);
      await call(c, 'ActiveMaps', {}).finally(() => c.close());
      if (seen.includes(newSerial)) break;
    }
    assert.deepEqual(seen, [newSerial], 'a new connection gets the new certificate');
    assert.ok(d.logs.lines.some((l) => l.level === 40 && /tls files: new contents rejected.*not the key of --tls-cert-file/.test(l.msg)), 'the half-rotated pair was rejected');
    assert.ok(d.logs.lines.some((l) => l.msg === 'tls files: reloaded' && l.serial === newSerial));
    // The established connection keeps working.
    await call(c0, 'ActiveMaps', {});
    c0.close();

    await sleep(200); // the CA and policy files were written after the key
    const foreign = ctAs(id.foreign);
    assert.ok((await call(foreign, 'ActiveMaps', {})).maps.length > 0, 'a client of the added CA is served');
    foreign.close();
    assert.match(await handshake(id.third), /^closed$|ECONNRESET/, 'a client of the removed CA is refused');
    const reader = ctAs(id.reader);
    const [, , record] = makeRecords(3);
    assert.equal((await call(reader, 'Update', { records: [record] })).written, 1, 'the policy made hubble a writer');
    reader.close();
  });
});

describe('--listen without TLS', () => {
  it('refuses to start without --listen-insecure (exit 2, naming --listen)', (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-tls-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin/ctmapd'), ...MEMORY, '--socket', path.join(dir, 's.sock'), '--listen', '127.0.0.1:0'], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^ctmapd: --listen: TCP needs TLS with client certificates .*--listen-insecure/);
    assert.equal(fs.existsSync(path.join(dir, 's.sock')), false, 'nothing was started');
  });

  it('serves plaintext with --listen-insecure and warns at start', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-tls-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const d = await startTestDaemon(dir, [...MEMORY, '--listen=127.0.0.1:0', '--listen-insecure']);
    t.after(() => d.stop());
    const warning = d.logs.lines.find((l) => l.level === 40 && /--listen-insecure/.test(l.msg));
    assert.ok(warning, 'no warning');
    const c = new (services().CTMaps)(d.daemon.server.addresses.at(-1)!, grpc.credentials.createInsecure(), FRESH);
    assert.ok((await call(c, 'ActiveMaps', {})).maps.length > 0);
    c.close();
  });

  it('does not start with unusable TLS files, naming the flag', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-tls-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pki = new TestPki(dir);
    const ca = pki.ca('ca');
    const a = pki.issue(ca, 'a', { cn: 'a', server: true });
    const b = pki.issue(ca, 'b', { cn: 'b', server: true });
    const flags = (key: string) => [...MEMORY, '--socket', path.join(dir, 's.sock'), '--listen=127.0.0.1:0', `--tls-cert-file=${a.certFile}`, `--tls-key-file=${key}`, `--tls-client-ca-files=${ca.certFile}`];
    const log = pino({ level: 'silent' });
    await assert.rejects(startDaemon(parseConfig(flags(b.keyFile), {}), log), /--tls-key-file .*b\.key: not the key of --tls-cert-file/);
    await assert.rejects(startDaemon(parseConfig([...flags(a.keyFile).slice(0, -1), `--tls-client-ca-files=${a.keyFile}`], {}), log), /--tls-client-ca-files .*a\.key: no PEM certificate/);
    await assert.rejects(startDaemon(parseConfig(flags(path.join(dir, 'missing.key')), {}), log), /--tls-key-file .*missing\.key: cannot read: ENOENT/);
    await assert.rejects(startDaemon(parseConfig([...flags(a.keyFile), `--authz-policy=${path.join(dir, 'none.yaml')}`], {}), log), /--authz-policy .*none\.yaml: cannot read: ENOENT/);
    assert.equal(fs.existsSync(path.join(dir, 's.sock')), false, 'the socket is removed again');
  });
});

/** Entries per global map, through `c` (closed afterwards). */
async function countAll(c: grpc.Client): Promise<string[]> {
  try {
    return (await call(c, 'Count', { maps: [] })).counts.map((x: { entries: string }) => x.entries);
  } finally {
    c.close();
  }
}
