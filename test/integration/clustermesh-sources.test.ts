/**
 * Clustermesh membership sources (issue 4, item 5) against a real etcd: the etcd config
 * parser, EtcdClusterWatcher (one remote cluster's `cilium/cluster-config/<name>`) and
 * ConfigDirSource (`--clustermesh-config DIR`). The etcd tier needs the `etcd` and `etcdctl`
 * binaries (helpers/etcd.ts); the parser tests run everywhere.
 */
import { after, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CtmapError, invalidArgument } from '../../src/errors';
import type { ClaimOwner, ClaimVia, MembershipSink } from '../../src/cluster/membership-types';
import { ConfigDirSource } from '../../src/cluster/sources/config-dir';
import { EtcdClusterWatcher, parseClusterConfig } from '../../src/cluster/sources/etcd-cluster';
import { looksLikeEtcdConfig, parseEtcdConfig, type EtcdConfig } from '../../src/cluster/sources/etcd-config';
import { createLogger, type Logger } from '../../src/daemon/logger';
import { etcdTier, startEtcd, type EtcdServer } from '../helpers/etcd';
import { waitUntil } from '../helpers/wait';

type SinkEvent = { op: 'claim'; owner: ClaimOwner; name: string; id: number; via: ClaimVia } | { op: 'release'; owner: ClaimOwner; name: string; via: ClaimVia };

/** Records claims and releases in order; rejects ids above `maxId` as the real sink does. */
class FakeSink implements MembershipSink {
  readonly events: SinkEvent[] = [];
  constructor(private readonly maxId = 255) {}

  async claim(owner: ClaimOwner, name: string, id: number, via: ClaimVia): Promise<void> {
    if (id > this.maxId) throw invalidArgument('cluster_id', `must be in 1..${this.maxId}, got ${id}`);
    this.events.push({ op: 'claim', owner, name, id, via });
  }
  async release(owner: ClaimOwner, name: string, via: ClaimVia): Promise<void> {
    this.events.push({ op: 'release', owner, name, via });
  }
  /** Events of cluster `name` in the compact form `claim:7` / `release`, with the via when asked. */
  of(name: string, withVia = false): string[] {
    return this.events.filter((e) => e.name === name).map((e) => (e.op === 'claim' ? `claim:${e.id}` : 'release') + (withVia ? `/${e.via}` : ''));
  }
}

type LogLine = { level: number; msg: string; cluster?: string; err?: { message?: string } } & Record<string, unknown>;

function capturingLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { log: createLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) }), lines };
}

const WARN = 40;
const DEBUG = 20;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function tmpDir(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-mesh-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function etcdYaml(endpoint: string): string {
  return `endpoints:\n- ${endpoint}\n`;
}

function plainConfig(endpoint: string): EtcdConfig {
  return { file: '(test)', endpoints: [endpoint], fingerprint: endpoint };
}

/** An address where nothing listens: a port the kernel just handed out and took back. */
async function deadEndpoint(): Promise<string> {
  const net = await import('node:net');
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as import('node:net').AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

/** One etcd for the tests that do not kill theirs; started on first use. */
let shared: Promise<EtcdServer> | undefined;
const sharedEtcd = (): Promise<EtcdServer> => (shared ??= startEtcd());
after(async () => (await shared?.catch(() => undefined))?.stop());

const key = (name: string): string => `cilium/cluster-config/${name}`;

describe('etcd config file', () => {
  test('parses endpoints and reads the TLS files; the fingerprint covers their contents', async (t) => {
    const dir = tmpDir(t);
    fs.writeFileSync(path.join(dir, 'ca.crt'), 'CA-1');
    fs.writeFileSync(path.join(dir, 'c.key'), 'KEY');
    fs.writeFileSync(path.join(dir, 'c.crt'), 'CERT');
    const file = path.join(dir, 'cluster1');
    const text = [
      'endpoints:',
      '- https://cluster1.mesh.cilium.io:2379/',
      '- https://10.0.0.1:443',
      `trusted-ca-file: ${path.join(dir, 'ca.crt')}`,
      'key-file: c.key', // relative: taken from the config file's directory
      `cert-file: ${path.join(dir, 'c.crt')}`,
      '',
    ].join('\n');
    const cfg = await parseEtcdConfig(file, text);
    assert.deepEqual(cfg.endpoints, ['https://cluster1.mesh.cilium.io:2379', 'https://10.0.0.1:443']);
    assert.equal(cfg.file, file);
    assert.equal(cfg.tls?.ca?.toString(), 'CA-1');
    assert.equal(cfg.tls?.key?.toString(), 'KEY');
    assert.equal(cfg.tls?.cert?.toString(), 'CERT');

    assert.equal((await parseEtcdConfig(file, text)).fingerprint, cfg.fingerprint, 'same files, same fingerprint');
    fs.writeFileSync(path.join(dir, 'ca.crt'), 'CA-2'); // a rotated CA, same config text
    assert.notEqual((await parseEtcdConfig(file, text)).fingerprint, cfg.fingerprint);

    const plain = await parseEtcdConfig(file, 'endpoints: ["http://127.0.0.1:2379"]\nunknown-key: 1\n');
    assert.deepEqual(plain.endpoints, ['http://127.0.0.1:2379']);
    assert.equal(plain.tls, undefined);
  });

  test('rejects bad files with an invalid-argument error naming the file and the field', async (t) => {
    const dir = tmpDir(t);
    const file = path.join(dir, 'cluster1');
    const cases: Array<[string, string, RegExp]> = [
      ['endpoints: [unclosed\n', 'yaml', /^\S+cluster1: yaml: /],
      ['endpoints:\n  a: 1\n  a: 2\n', 'yaml', /: yaml: .*[Mm]ap keys must be unique/],
      ['- just\n- a list\n', 'yaml', /: yaml: must be a mapping/],
      ['trusted-ca-file: /x\n', 'endpoints', /: endpoints: must be a non-empty list/],
      ['endpoints: []\n', 'endpoints', /: endpoints: must be a non-empty list/],
      ['endpoints: https://a:2379\n', 'endpoints', /: endpoints: must be a non-empty list/],
      ['endpoints: [42]\n', 'endpoints[0]', /: endpoints\[0\]: must be a URL string/],
      ['endpoints: ["a:2379"]\n', 'endpoints[0]', /: endpoints\[0\]: .*scheme must be http or https/],
      ['endpoints: ["not a url"]\n', 'endpoints[0]', /: endpoints\[0\]: .*is not a URL/],
      ['endpoints: ["https://a"]\n', 'endpoints[0]', /: endpoints\[0\]: .*must include a port/],
      ['endpoints: ["https://a:2379/v3"]\n', 'endpoints[0]', /: endpoints\[0\]: .*scheme:\/\/host:port only/],
      ['endpoints: ["https://a:2379", "http://b:2379"]\n', 'endpoints', /: endpoints: must all use the same scheme/],
      [`endpoints: ["https://a:2379"]\nkey-file: ${file}\n`, 'cert-file', /: cert-file: key-file and cert-file must be given together/],
      [`endpoints: ["http://a:2379"]\ntrusted-ca-file: ${file}\n`, 'endpoints', /: endpoints: TLS files are given, so the endpoints must be https/],
      ['endpoints: ["https://a:2379"]\ntrusted-ca-file: missing.crt\n', 'trusted-ca-file', /: trusted-ca-file: cannot read \S+missing\.crt: ENOENT/],
      ['endpoints: ["https://a:2379"]\ncert-file: 7\n', 'cert-file', /: cert-file: must be a file path/],
    ];
    fs.writeFileSync(file, 'x'); // a readable file for the TLS cases that need one
    for (const [text, field, message] of cases) {
      await assert.rejects(parseEtcdConfig(file, text), (err: unknown) => {
        assert.ok(err instanceof CtmapError, `${text}: ${String(err)}`);
        assert.equal(err.code, 'invalid-argument', text);
        assert.equal(err.field, field, text);
        assert.match(err.message, message, text);
        assert.ok(err.message.startsWith(`${file}: `), err.message);
        return true;
      });
    }
  });

  test('looksLikeEtcdConfig tells configs from the TLS files beside them (Cilium isEtcdConfigFile)', () => {
    assert.equal(looksLikeEtcdConfig(etcdYaml('https://a:2379')), true);
    assert.equal(looksLikeEtcdConfig('-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'), false);
  });
});

describe('cluster config value', () => {
  test('id must be an integer >= 1; capabilities are ignored', () => {
    assert.deepEqual(parseClusterConfig('{"id": 7, "capabilities": {"maxConnectedClusters": 255}}'), { id: 7 });
    assert.deepEqual(parseClusterConfig('{"id": 511}'), { id: 511 });
    const cases: Array<[string, string]> = [
      ['garbage', 'value'],
      ['[7]', 'value'],
      ['null', 'value'],
      ['{}', 'id'],
      ['{"id": 0}', 'id'],
      ['{"id": -3}', 'id'],
      ['{"id": 1.5}', 'id'],
      ['{"id": "7"}', 'id'],
    ];
    for (const [value, field] of cases) {
      assert.throws(
        () => parseClusterConfig(value),
        (err: unknown) => err instanceof CtmapError && err.code === 'invalid-argument' && err.field === field,
        value,
      );
    }
  });
});

describe('EtcdClusterWatcher (real etcd)', () => {
  test('claims the id, follows id changes, ignores bad values and releases on delete', async (t) => {
    if (!etcdTier(t)) return;
    const etcd = await sharedEtcd();
    const sink = new FakeSink(255);
    const { log, lines } = capturingLogger();
    await etcd.put(key('w-one'), '{"id": 7, "capabilities": {"maxConnectedClusters": 255}}');
    const w = new EtcdClusterWatcher({ name: 'w-one', config: plainConfig(etcd.endpoint), sink, log, graceMs: 1_000, connectTimeoutMs: 5_000 });
    t.after(() => w.stop());
    await w.start();
    assert.equal(w.synced, false, 'not synced before the first read');
    await w.whenSynced();
    assert.equal(w.synced, true);
    assert.deepEqual(sink.of('w-one', true), ['claim:7/etcd'], 'the initial read is claimed before synced');
    assert.ok(sink.events.every((e) => e.owner === 'clustermesh'));

    await etcd.put(key('w-one'), '{"id": 9}');
    await waitUntil(() => sink.of('w-one').length === 2, 'the claim of the new id');
    assert.deepEqual(sink.of('w-one'), ['claim:7', 'claim:9'], 'an id change is a claim with the new id');

    const warnings = (): LogLine[] => lines.filter((l) => l.level === WARN && l.cluster === 'w-one');
    await etcd.put(key('w-one'), 'garbage');
    await waitUntil(() => warnings().length === 1, 'a warning about the malformed value');
    assert.match(warnings()[0].msg, /malformed cluster config/);
    assert.match(String(warnings()[0].err?.message), /not JSON/);
    assert.equal(warnings()[0].keptId, 9);
    await etcd.put(key('w-one'), '{"id": 0}');
    await waitUntil(() => warnings().length === 2, 'a warning about id 0');
    assert.match(String(warnings()[1].err?.message), /^id: must be an integer >= 1/);
    await etcd.put(key('w-one'), '{"id": 300}');
    await waitUntil(() => warnings().length === 3, 'a warning about the rejected claim');
    assert.match(warnings()[2].msg, /rejected/);
    assert.match(String(warnings()[2].err?.message), /cluster_id: must be in 1\.\.255/);
    assert.deepEqual(sink.of('w-one'), ['claim:7', 'claim:9'], 'bad values neither claim nor release: the last valid claim stays');
    assert.equal(warnings()[0].keptId, 9);

    await etcd.del(key('w-one'));
    await waitUntil(() => sink.of('w-one').length === 3, 'the release');
    assert.deepEqual(sink.of('w-one', true), ['claim:7/etcd', 'claim:9/etcd', 'release/etcd']);
    await etcd.put(key('w-one'), '{"id": 5}');
    await waitUntil(() => sink.of('w-one').length === 4, 'the claim after the key came back');
    assert.equal(sink.of('w-one')[3], 'claim:5');

    await w.stop();
    await etcd.put(key('w-one'), '{"id": 6}');
    await sleep(200);
    assert.deepEqual(sink.of('w-one'), ['claim:7', 'claim:9', 'release', 'claim:5'], 'stop releases nothing and stops watching');
  });

  test('a key absent at the first read: synced after a release (a no-op for a cluster nobody claimed), claimed when written', async (t) => {
    if (!etcdTier(t)) return;
    const etcd = await sharedEtcd();
    const sink = new FakeSink();
    const w = new EtcdClusterWatcher({ name: 'w-late', config: plainConfig(etcd.endpoint), sink, log: capturingLogger().log });
    t.after(() => w.stop());
    await w.start();
    await w.whenSynced();
    assert.deepEqual(sink.of('w-late'), ['release']);
    await etcd.put(key('w-late'), '{"id": 3}');
    await waitUntil(() => sink.of('w-late').length === 2, 'the claim');
    assert.deepEqual(sink.of('w-late'), ['release', 'claim:3']);
  });

  test('synced waits for the first read: an etcd that never answers counts as synced after the connect timeout', async (t) => {
    if (!etcdTier(t)) return;
    const sink = new FakeSink();
    const { log, lines } = capturingLogger();
    const w = new EtcdClusterWatcher({ name: 'w-dead', config: plainConfig(await deadEndpoint()), sink, log, connectTimeoutMs: 600 });
    t.after(() => w.stop());
    const started = Date.now();
    await w.start();
    await sleep(300);
    assert.equal(w.synced, false, 'not synced before the connect timeout');
    await w.whenSynced();
    assert.ok(Date.now() - started >= 550, `synced after ${Date.now() - started} ms`);
    assert.deepEqual(sink.events, []);
    assert.ok(lines.some((l) => l.level === WARN && /did not answer within the connect timeout/.test(l.msg)));
    assert.ok(lines.some((l) => l.level === WARN && /cannot reach the remote cluster etcd/.test(l.msg)));
  });

  test('etcd lost: released after the grace period, claimed again when it is back; a short outage only re-claims', async (t) => {
    if (!etcdTier(t)) return;
    const etcd = await startEtcd(t);
    const sink = new FakeSink();
    const { log, lines } = capturingLogger();
    await etcd.put(key('w-lost'), '{"id": 4}');
    const w = new EtcdClusterWatcher({ name: 'w-lost', config: plainConfig(etcd.endpoint), sink, log, graceMs: 1_000, connectTimeoutMs: 2_000 });
    t.after(() => w.stop());
    await w.start();
    await w.whenSynced();
    assert.deepEqual(sink.of('w-lost'), ['claim:4']);

    // An outage shorter than the grace period: no release; the reconnect re-claims the same
    // id, which the sink takes as a no-op.
    await etcd.kill();
    await waitUntil(() => lines.some((l) => /lost the remote cluster etcd/.test(l.msg)), 'the loss to be noticed');
    await etcd.restart();
    await waitUntil(() => sink.of('w-lost').length === 2, 'the re-claim after the reconnect');
    await sleep(1_200);
    assert.deepEqual(sink.of('w-lost'), ['claim:4', 'claim:4']);

    const killedAt = Date.now();
    await etcd.kill();
    await sleep(500);
    assert.deepEqual(sink.of('w-lost'), ['claim:4', 'claim:4'], 'still claimed inside the grace period');
    await waitUntil(() => sink.of('w-lost').length === 3, 'the release after the grace period', 3_000);
    const releasedAfter = Date.now() - killedAt;
    assert.ok(releasedAfter >= 950, `released ${releasedAfter} ms after the kill`);
    assert.deepEqual(sink.of('w-lost', true), ['claim:4/etcd', 'claim:4/etcd', 'release/etcd']);

    await etcd.restart();
    await waitUntil(() => sink.of('w-lost').length === 4, 'the claim after etcd is back');
    assert.deepEqual(sink.of('w-lost'), ['claim:4', 'claim:4', 'release', 'claim:4']);
  });
});

describe('ConfigDirSource (real etcd)', () => {
  test('reads Cilium\'s layout: secret-volume symlinks followed, hidden files and non-configs skipped, bad configs warned', async (t) => {
    if (!etcdTier(t)) return;
    const etcd = await sharedEtcd();
    await etcd.put(key('d-plain'), '{"id": 11}');
    await etcd.put(key('d-link'), '{"id": 12}');
    await etcd.put(key('d-bad'), '{"id": 13}');
    await etcd.put(key('d-noend'), '{"id": 14}');
    await etcd.put(key('.d-hidden'), '{"id": 15}');
    const dir = tmpDir(t);
    // The layout of a Kubernetes secret volume: files behind ..data, swapped atomically.
    const ts = path.join(dir, '..2024_01_01_00_00_00.000000001');
    fs.mkdirSync(ts);
    fs.writeFileSync(path.join(ts, 'd-link'), etcdYaml(etcd.endpoint));
    fs.writeFileSync(path.join(ts, 'd-link.etcd-client.crt'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    fs.symlinkSync(path.basename(ts), path.join(dir, '..data'));
    fs.symlinkSync('..data/d-link', path.join(dir, 'd-link'));
    fs.symlinkSync('..data/d-link.etcd-client.crt', path.join(dir, 'd-link.etcd-client.crt'));
    fs.writeFileSync(path.join(dir, 'd-plain'), etcdYaml(etcd.endpoint));
    fs.writeFileSync(path.join(dir, '.d-hidden'), etcdYaml(etcd.endpoint));
    fs.writeFileSync(path.join(dir, 'd-bad'), `endpoints: [${etcd.endpoint}\n`);
    fs.writeFileSync(path.join(dir, 'd-noend'), 'trusted-ca-file: /x\n');
    fs.mkdirSync(path.join(dir, 'd-subdir'));

    const sink = new FakeSink();
    const { log, lines } = capturingLogger();
    const src = new ConfigDirSource({ dir, sink, log, rescanMs: 200, connectTimeoutMs: 5_000 });
    t.after(() => src.stop());
    await src.start();
    assert.equal(src.synced, false, 'the directory is read but the etcds have not answered yet');
    await src.whenSynced();
    assert.deepEqual(
      [...sink.events].sort((a, b) => a.name.localeCompare(b.name)),
      [
        { op: 'claim', owner: 'clustermesh', name: 'd-link', id: 12, via: 'etcd' },
        { op: 'claim', owner: 'clustermesh', name: 'd-plain', id: 11, via: 'etcd' },
      ],
    );
    const bad = lines.filter((l) => l.level === WARN && l.cluster === 'd-bad');
    assert.equal(bad.length, 1, 'one warning for the bad config');
    assert.match(bad[0].msg, /invalid clustermesh etcd config/);
    assert.match(String(bad[0].err?.message), new RegExp(`^${path.join(dir, 'd-bad')}: yaml: `));
    for (const name of ['d-noend', 'd-link.etcd-client.crt']) {
      assert.ok(
        lines.some((l) => l.level === DEBUG && l.cluster === name && /not an etcd config/.test(l.msg)),
        `${name} is skipped with a debug line`,
      );
    }
    assert.ok(!lines.some((l) => l.cluster === '.d-hidden' || l.cluster === '..data'), 'hidden names are not even looked at');

    await sleep(500); // a few rescans: the bad file is not warned about again, nothing else changes
    assert.equal(lines.filter((l) => l.level === WARN && l.cluster === 'd-bad').length, 1);
    assert.equal(sink.events.length, 2);
  });

  test('a file appearing claims, an edited file reconnects, a removed file releases (fs.watch, no rescan)', async (t) => {
    if (!etcdTier(t)) return;
    const [a, b] = await Promise.all([sharedEtcd(), startEtcd(t)]);
    await a.put(key('d-new'), '{"id": 21}');
    await b.put(key('d-new'), '{"id": 22}');
    const dir = tmpDir(t);
    const sink = new FakeSink();
    const { log, lines } = capturingLogger();
    // A rescan period longer than the test: every change below is seen through fs.watch.
    const src = new ConfigDirSource({ dir, sink, log, rescanMs: 60_000 });
    t.after(() => src.stop());
    await src.start();
    await src.whenSynced();
    assert.deepEqual(sink.events, [], 'an empty directory is synced at once');

    fs.writeFileSync(path.join(dir, 'd-new'), etcdYaml(a.endpoint));
    await waitUntil(() => sink.of('d-new').length === 1, 'the claim of the new file');
    assert.deepEqual(sink.of('d-new', true), ['claim:21/etcd']);

    fs.writeFileSync(path.join(dir, 'd-new'), etcdYaml(b.endpoint));
    await waitUntil(() => sink.of('d-new').length === 2, 'the claim from the edited file\'s etcd');
    assert.deepEqual(sink.of('d-new'), ['claim:21', 'claim:22'], 'reconnected without a release in between');
    assert.ok(lines.some((l) => l.cluster === 'd-new' && /config changed; reconnecting/.test(l.msg)));
    await a.put(key('d-new'), '{"id": 23}');
    await sleep(300);
    assert.deepEqual(sink.of('d-new'), ['claim:21', 'claim:22'], 'the old etcd is no longer watched');

    fs.rmSync(path.join(dir, 'd-new'));
    await waitUntil(() => sink.of('d-new').length === 3, 'the release of the removed file');
    assert.deepEqual(sink.of('d-new', true), ['claim:21/etcd', 'claim:22/etcd', 'release/config-dir']);
    await b.put(key('d-new'), '{"id": 24}');
    await sleep(300);
    assert.equal(sink.of('d-new').length, 3, 'the removed cluster\'s etcd is no longer watched');
  });

  test('a secret-volume update to an etcd with the same id reconnects without a release', async (t) => {
    if (!etcdTier(t)) return;
    const [a, b] = await Promise.all([sharedEtcd(), startEtcd(t)]);
    await a.put(key('d-swap'), '{"id": 31}');
    await b.put(key('d-swap'), '{"id": 31}');
    const dir = tmpDir(t);
    const writeGeneration = (gen: number, endpoint: string): void => {
      const ts = path.join(dir, `..2024_01_0${gen}_00_00_00.000000000`);
      fs.mkdirSync(ts);
      fs.writeFileSync(path.join(ts, 'd-swap'), etcdYaml(endpoint));
      // Kubelet's atomic writer: a new ..data_tmp link renamed over ..data.
      fs.symlinkSync(path.basename(ts), path.join(dir, '..data_tmp'));
      fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
    };
    writeGeneration(1, a.endpoint);
    fs.symlinkSync('..data/d-swap', path.join(dir, 'd-swap'));

    const sink = new FakeSink();
    const { log, lines } = capturingLogger();
    const src = new ConfigDirSource({ dir, sink, log, rescanMs: 200 });
    t.after(() => src.stop());
    await src.start();
    await src.whenSynced();
    assert.deepEqual(sink.of('d-swap'), ['claim:31']);

    writeGeneration(2, b.endpoint);
    await waitUntil(() => sink.of('d-swap').length === 2, 'the claim read from the new etcd');
    assert.ok(lines.some((l) => l.cluster === 'd-swap' && /connected to the remote cluster etcd/.test(l.msg) && String(l.etcd) === b.endpoint));
    await sleep(300);
    assert.deepEqual(sink.of('d-swap'), ['claim:31', 'claim:31'], 'same id: re-claimed (a no-op for the sink), never released');
    await b.put(key('d-swap'), '{"id": 32}');
    await waitUntil(() => sink.of('d-swap').length === 3, 'a change in the new etcd');
    assert.deepEqual(sink.of('d-swap'), ['claim:31', 'claim:31', 'claim:32']);
  });

  test('connects to an etcd with mutual TLS using the files the config names', async (t) => {
    if (!etcdTier(t)) return;
    const etcd = await startEtcd(t, { tls: true });
    assert.ok(etcd.tls !== undefined && etcd.endpoint.startsWith('https://'));
    await etcd.put(key('d-tls'), '{"id": 61}');
    await etcd.put(key('d-notls'), '{"id": 62}');
    const dir = tmpDir(t);
    const { caFile, certFile, keyFile } = etcd.tls;
    fs.writeFileSync(path.join(dir, 'd-tls'), `${etcdYaml(etcd.endpoint)}trusted-ca-file: ${caFile}\nkey-file: ${keyFile}\ncert-file: ${certFile}\n`);
    // Without a client certificate etcd refuses the connection (--client-cert-auth).
    fs.writeFileSync(path.join(dir, 'd-notls'), `${etcdYaml(etcd.endpoint)}trusted-ca-file: ${caFile}\n`);
    const sink = new FakeSink();
    const { log, lines } = capturingLogger();
    const src = new ConfigDirSource({ dir, sink, log, rescanMs: 200, connectTimeoutMs: 1_000 });
    t.after(() => src.stop());
    await src.start();
    await src.whenSynced();
    assert.deepEqual(sink.events, [{ op: 'claim', owner: 'clustermesh', name: 'd-tls', id: 61, via: 'etcd' }]);
    assert.ok(lines.some((l) => l.level === WARN && l.cluster === 'd-notls' && /cannot reach the remote cluster etcd/.test(l.msg)));
  });

  test('the initial files hold synced back until their etcds answered or timed out', async (t) => {
    if (!etcdTier(t)) return;
    const dir = tmpDir(t);
    fs.writeFileSync(path.join(dir, 'd-dead'), etcdYaml(await deadEndpoint()));
    const sink = new FakeSink();
    const src = new ConfigDirSource({ dir, sink, log: capturingLogger().log, rescanMs: 200, connectTimeoutMs: 700 });
    t.after(() => src.stop());
    const started = Date.now();
    await src.start();
    await sleep(350);
    assert.equal(src.synced, false);
    await src.whenSynced();
    assert.ok(Date.now() - started >= 650, `synced after ${Date.now() - started} ms`);
    assert.deepEqual(sink.events, []);
  });

  test('a directory missing at start is warned about, synced (no clusters) and picked up when it appears', async (t) => {
    if (!etcdTier(t)) return;
    const etcd = await sharedEtcd();
    await etcd.put(key('d-later'), '{"id": 41}');
    const dir = path.join(tmpDir(t), 'clustermesh');
    const sink = new FakeSink();
    const { log, lines } = capturingLogger();
    const src = new ConfigDirSource({ dir, sink, log, rescanMs: 100 });
    t.after(() => src.stop());
    await src.start();
    assert.equal(src.synced, true, 'nothing to wait for');
    assert.ok(lines.some((l) => l.level === WARN && /does not exist/.test(l.msg)));

    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'd-later'), etcdYaml(etcd.endpoint));
    await waitUntil(() => sink.of('d-later').length === 1, 'the claim once the directory exists');
    assert.deepEqual(sink.of('d-later'), ['claim:41']);
    // fs.watch is set up on the new directory: a removal is seen without waiting for rescans.
    fs.rmSync(path.join(dir, 'd-later'));
    await waitUntil(() => sink.of('d-later').length === 2, 'the release');
  });

  test('stop() closes every watch, connection and timer', async (t) => {
    if (!etcdTier(t)) return;
    const etcd = await sharedEtcd();
    await etcd.put(key('d-stop'), '{"id": 51}');
    const dir = tmpDir(t);
    fs.writeFileSync(path.join(dir, 'd-stop'), etcdYaml(etcd.endpoint));
    fs.writeFileSync(path.join(dir, 'd-stop-dead'), etcdYaml(await deadEndpoint()));
    await sleep(50);
    const before = resourceCounts();
    const sink = new FakeSink();
    const src = new ConfigDirSource({ dir, sink, log: capturingLogger().log, rescanMs: 100, connectTimeoutMs: 300 });
    await src.start();
    await src.whenSynced();
    assert.deepEqual(sink.of('d-stop'), ['claim:51']);
    const stopStarted = Date.now();
    await src.stop();
    await src.stop(); // idempotent
    assert.ok(Date.now() - stopStarted < 2_000, `stop() took ${Date.now() - stopStarted} ms`);
    assert.deepEqual(sink.events.filter((e) => e.op === 'release'), [], 'stop releases nothing');
    // etcd3 and grpc-js finish closing their channels on their own timers (< 1 s).
    await waitUntil(() => leftovers(before, resourceCounts()).length === 0, `no handles left (${JSON.stringify(leftovers(before, resourceCounts()))})`, 3_000);
  });
});

/** Active libuv handles and requests by type (Timeout, TCPSocketWrap, FSEventWrap, ...). */
function resourceCounts(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}

/** Resource types of which `now` has more than `before`. */
function leftovers(before: Map<string, number>, now: Map<string, number>): string[] {
  return [...now].filter(([type, n]) => n > (before.get(type) ?? 0)).map(([type, n]) => `${type} x${n - (before.get(type) ?? 0)}`);
}
