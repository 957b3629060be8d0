/**
 * Issue 12, items 2 and 3 on unix sockets: every RPC is classified as read or write
 * (enumerated from the loaded service definitions, so a new RPC cannot slip through), the
 * read-only socket refuses every write and serves every read, a refused call writes
 * nothing, and every mutating call logs one audit line with the caller's pid and uid.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { CtmapError } from '../../src/errors';
import { services } from '../../src/api/proto';
import { RPC_ACCESS, accessOf, parseAuthzPolicy, refusal, subjectAltNames, tlsGranter, unclassified } from '../../src/server/access';
import { startServer } from '../../src/server/server';
import { TestDaemon, call, collect, ctClient, rejectsWith, serviceClient, startTestDaemon, tempDir } from '../helpers/grpc';
import { makeRecords } from '../helpers/ct-flow';
import { allMethods, probe } from '../helpers/access';

const MEMORY = ['--backend', 'memory', '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096'];

describe('RPC classification (issue 12)', () => {
  it('classifies every method of every loaded service, and nothing else', () => {
    const methods = allMethods();
    assert.ok(methods.length >= 26, `found ${methods.length} methods`);
    assert.deepEqual(methods.filter((m) => accessOf(m.path) === undefined).map((m) => m.path), [], 'unclassified: add them to RPC_ACCESS');
    const known = new Set(methods.map((m) => m.path));
    assert.deepEqual(Object.keys(RPC_ACCESS).filter((p) => !known.has(p)), [], 'RPC_ACCESS names methods that do not exist');
    // The lists.
    const writes = methods.filter((m) => accessOf(m.path) === 'write').map((m) => `${m.service.split('.').pop()}/${m.name}`).sort();
    assert.deepEqual(writes, [
      'CTMaps/Delete',
      'CTMaps/Flush',
      'CTMaps/Update',
      'ClusterCTMaps/CleanupPerClusterCTMaps',
      'ClusterCTMaps/CreateClusterCTMaps',
      'ClusterCTMaps/DeleteClusterCTMaps',
      'GCRunner/Run',
      'GCRunner/Signal',
      'NATMaps/Delete',
      'NATMaps/Flush',
      'NATMaps/PurgeOrphanNATEntries',
      'NATMaps/Update',
    ]);
  });

  it('refuses to serve a service with an unclassified method', async (t) => {
    const { dir } = tempDir(t);
    const definition = { ...services().CTMaps.service, Sneak: { ...services().CTMaps.service.Count!, path: '/ctmap.v1.CTMaps/Sneak' } };
    assert.deepEqual(unclassified(definition), ['/ctmap.v1.CTMaps/Sneak']);
    await assert.rejects(
      startServer({ config: { socket: path.join(dir, 's.sock') }, log: pino({ level: 'silent' }), services: [{ definition, implementation: {} }] }),
      (e: unknown) => e instanceof CtmapError && e.code === 'internal' && /Sneak/.test(e.message),
    );
    assert.equal(refusal('/ctmap.v1.CTMaps/Sneak', { identity: 'unix', verified: false, names: [] }, { role: 'write', why: '' }), 'ctmap.v1.CTMaps/Sneak: permission denied for unix: the method is not classified as read or write');
  });
});

describe('authz policy and certificate names', () => {
  it('parses {readers, writers}; writers may read; the rest get nothing', () => {
    const p = parseAuthzPolicy('readers: [CN=hubble, Reader.Example]\nwriters:\n  - spiffe://c/agent\n', 'p.yaml');
    const grant = tlsGranter(() => p);
    const caller = (names: string[]) => ({ identity: 'x', verified: true, names });
    assert.equal(grant(caller(['spiffe://c/agent'])).role, 'write');
    assert.equal(grant(caller(['CN=hubble'])).role, 'read');
    assert.equal(grant(caller(['reader.example'])).role, 'read', 'DNS names compare without case');
    assert.equal(grant(caller(['CN=other', 'spiffe://c/other'])).role, undefined);
    assert.equal(grant({ identity: '127.0.0.1:1', verified: false, names: [] }).role, undefined);
    assert.equal(tlsGranter(() => undefined)(caller([])).role, 'write', 'no policy: every verified client writes');
    assert.deepEqual(parseAuthzPolicy('', 'p').writers, new Set());
    for (const bad of ['writer: [a]', '[a, b]', 'readers: a', 'readers: [1]', 'readers: [""]', '{']) {
      assert.throws(() => parseAuthzPolicy(bad, 'p.yaml'), (e: unknown) => e instanceof CtmapError && /^p\.yaml: /.test(e.message), bad);
    }
  });

  it('splits subjectAltName as Node prints it', () => {
    assert.deepEqual(subjectAltNames('DNS:a.example, URI:spiffe://c/x, IP Address:127.0.0.1'), [
      ['DNS', 'a.example'],
      ['URI', 'spiffe://c/x'],
      ['IP Address', '127.0.0.1'],
    ]);
    assert.deepEqual(subjectAltNames('URI:"spiffe://c/a, b", DNS:x'), [
      ['URI', 'spiffe://c/a, b'],
      ['DNS', 'x'],
    ]);
  });
});

describe('the read-only socket (--socket-readonly)', () => {
  let dir: string;
  let d: TestDaemon;
  let readonly: string;
  const seeded = makeRecords(4);
  const insecure = grpc.credentials.createInsecure();

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-ro-'));
    readonly = path.join(dir, 'ro', 'ctmapd-ro.sock');
    d = await startTestDaemon(dir, [...MEMORY, '--socket-readonly', readonly, '--socket-readonly-mode', '0666', '--socket-readonly-group', String(process.getgid!())]);
    const c = ctClient(d.address);
    assert.equal((await call(c, 'Update', { records: seeded })).written, 4);
    c.close();
  });

  after(async () => {
    await d.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('has the mode and group asked for; the main socket keeps 0660', () => {
    assert.deepEqual(d.daemon.server.addresses.slice(0, 2), [d.address, `unix:${readonly}`]);
    const st = fs.statSync(readonly);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o666);
    assert.equal(st.gid, process.getgid!());
    assert.equal(fs.statSync(d.address.slice('unix:'.length)).mode & 0o777, 0o660);
  });

  it('refuses every mutating RPC with PERMISSION_DENIED naming method and caller, serves every read, and writes nothing', async () => {
    const results = await Promise.all(allMethods().map(async (m) => ({ m, status: await probe(m, `unix:${readonly}`, insecure) })));
    const wrong: string[] = [];
    for (const { m, status } of results) {
      const write = accessOf(m.path) === 'write';
      if (write && status.code !== grpc.status.PERMISSION_DENIED) wrong.push(`${m.path}: write answered ${grpc.status[status.code]}`);
      if (write && !(status.details.includes(m.path.slice(1)) && /unix:pid=\d+,uid=\d+/.test(status.details))) wrong.push(`${m.path}: ${status.details}`);
      if (!write && [grpc.status.PERMISSION_DENIED, grpc.status.UNIMPLEMENTED].includes(status.code)) wrong.push(`${m.path}: read answered ${grpc.status[status.code]}: ${status.details}`);
    }
    assert.deepEqual(wrong, []);
    // Flush, Delete, GC Run and cluster cleanup were among them: every entry is still there.
    const main = ctClient(d.address);
    try {
      const counts = await call(main, 'Count', { maps: [] });
      assert.deepEqual(counts.counts.map((c: { entries: string }) => c.entries), ['1', '1', '1', '1']);
    } finally {
      main.close();
    }
    // What reads return on the read-only socket is what they return on the main socket.
    const ro = ctClient(`unix:${readonly}`);
    try {
      const dumped = await collect(ro, 'DumpEntries', { maps: [] });
      assert.deepEqual(dumped.map((r) => r.key).sort((a, b) => a.sport - b.sport), seeded.map((r) => r.key));
      await rejectsWith(call(ro, 'Flush', { maps: [] }), grpc.status.PERMISSION_DENIED, 'ctmap.v1.CTMaps/Flush');
    } finally {
      ro.close();
    }
    const refused = d.logs.lines.filter((l) => l.msg === 'permission denied');
    assert.ok(refused.some((l) => l.method === 'CTMaps/Flush' && /^unix:pid=/.test(l.caller)), 'refusals are logged');
  });

  it('the main socket serves every RPC', async () => {
    const results = await Promise.all(allMethods().map(async (m) => ({ m, status: await probe(m, d.address, insecure) })));
    assert.deepEqual(results.filter((r) => [grpc.status.PERMISSION_DENIED, grpc.status.UNIMPLEMENTED].includes(r.status.code)).map((r) => `${r.m.path}: ${r.status.details}`), []);
  });
});

describe('audit lines on the unix socket', () => {
  it('logs one info line per mutating call with method, pid and uid, maps and counts; none for reads', async (t) => {
    const { dir } = tempDir(t);
    const d = await startTestDaemon(dir, MEMORY);
    t.after(() => d.stop());
    const ct = ctClient(d.address);
    const nat = serviceClient(services().NATMaps.service, 'NATMaps', d.address);
    const clusters = serviceClient(services().ClusterCTMaps.service, 'ClusterCTMaps', d.address);
    const gc = serviceClient(services().GCRunner.service, 'GCRunner', d.address);
    t.after(() => [ct, nat, clusters, gc].forEach((c) => c.close()));
    const records = makeRecords(8);
    await call(ct, 'Update', { records });
    await call(ct, 'Delete', { map: records[0]!.map, keys: [records[0]!.key, { ...records[0]!.key, sport: 1 }] });
    await rejectsWith(call(ct, 'Update', { records: [{ ...records[1], key: { ...records[1]!.key, dport: 70000 } }] }), grpc.status.INVALID_ARGUMENT);
    await call(ct, 'Flush', { maps: [{ family: 'FAMILY_IPV4', kind: 'MAP_KIND_ANY', cluster_id: 0 }] });
    await call(clusters, 'CreateClusterCTMaps', { cluster_id: 7 });
    await call(nat, 'PurgeOrphanNATEntries', { family: 'FAMILY_IPV4', cluster_id: 0 });
    await collect(gc, 'Run', { family: 'FAMILY_IPV6', filter: { remove_expired: true, time: 0xffffffff } });
    await call(ct, 'Count', { maps: [] });
    await collect(ct, 'DumpEntries', { maps: [] });

    const audit = d.logs.lines.filter((l) => l.msg === 'audit');
    const me = new RegExp(`^unix:pid=${process.pid},uid=${process.getuid!()},gid=${process.getgid!()}$`);
    for (const l of audit) {
      assert.equal(l.level, 30, 'info');
      assert.match(l.caller, me);
      assert.equal(l.peer, l.caller);
    }
    const byMethod = (m: string) => audit.filter((l) => l.method === m);
    assert.deepEqual(audit.map((l) => l.method), ['CTMaps/Update', 'CTMaps/Delete', 'CTMaps/Update', 'CTMaps/Flush', 'ClusterCTMaps/CreateClusterCTMaps', 'NATMaps/PurgeOrphanNATEntries', 'GCRunner/Run']);
    assert.deepEqual(pick(byMethod('CTMaps/Update')[0]!, ['outcome', 'maps', 'records', 'written']), { outcome: 'OK', maps: ['tcp4', 'any4', 'tcp6', 'any6'], records: 8, written: 8 });
    assert.deepEqual(pick(byMethod('CTMaps/Update')[1]!, ['outcome', 'written']), { outcome: 'INVALID_ARGUMENT' });
    assert.deepEqual(pick(byMethod('CTMaps/Delete')[0]!, ['outcome', 'maps', 'keys', 'deleted']), { outcome: 'OK', maps: ['tcp4'], keys: 2, deleted: 1 });
    assert.deepEqual(pick(byMethod('CTMaps/Flush')[0]!, ['maps', 'flushed']), { maps: ['any4'], flushed: 2 });
    assert.equal(byMethod('ClusterCTMaps/CreateClusterCTMaps')[0]!.clusterId, 7);
    assert.ok(byMethod('ClusterCTMaps/CreateClusterCTMaps')[0]!.maps.length >= 4);
    assert.deepEqual(pick(byMethod('NATMaps/PurgeOrphanNATEntries')[0]!, ['maps', 'ingressDeleted']), { maps: ['snat4'], ingressDeleted: 0 });
    // A server stream: the line comes when the stream ends.
    assert.deepEqual(pick(byMethod('GCRunner/Run')[0]!, ['outcome', 'maps', 'deleted', 'natDeleted']), { outcome: 'OK', maps: ['tcp6', 'any6', 'tcp6 cluster 7', 'any6 cluster 7'], deleted: 4, natDeleted: 0 });
    // Every call, reads included, names its caller instead of "unknown".
    assert.deepEqual(d.logs.lines.filter((l) => l.peer === 'unknown'), []);
  });
});

function pick(o: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => k in o).map((k) => [k, o[k]]));
}
