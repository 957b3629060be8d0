/**
 * Issue 12, defect 9: an error message quotes at most a short prefix of the value it is
 * about. A 9,000-byte address used to come back in a 9 KB status message, which a default
 * grpc-js client refuses as oversized metadata. Each request below carries one huge value
 * in a field that is validated; the answer must name the field, quote a prefix and say how
 * long the whole was, in a short message. Daemon on the memory backend, in process.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { quote } from '../../src/errors';
import { services } from '../../src/api/proto';
import { Client, TestDaemon, call, collect, ctClient, serviceClient, startTestDaemon, tempDir } from '../helpers/grpc';

const HUGE = 9000;
/** Longest message accepted here: the field name, a 64-character prefix and the length. */
const SHORT = 200;

/** A value no parser accepts, HUGE characters long, with a recognisable start. */
const huge = (start = 'bad'): string => start + 'x'.repeat(HUGE - start.length);

async function statusOf(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('the call succeeded');
}

function assertShort(err: grpc.ServiceError, code: grpc.status, field: string): void {
  assert.equal(err.code, code, `${grpc.status[err.code]}: ${err.details.slice(0, 300)}`);
  assert.ok(Buffer.byteLength(err.details) <= SHORT, `${Buffer.byteLength(err.details)}-byte message: ${err.details.slice(0, 300)}`);
  assert.ok(err.details.includes(field), `does not name ${field}: ${err.details}`);
  assert.ok(err.details.includes('"badxxx'), `does not quote the start of the value: ${err.details}`);
  assert.ok(err.details.includes(String(HUGE)), `does not say how long the value was: ${err.details}`);
}

describe('quote', () => {
  it('quotes a short value whole, as JSON', () => {
    assert.equal(quote('192.0.2.300'), '"192.0.2.300"');
    assert.equal(quote('a"b\n'), '"a\\"b\\n"');
    assert.equal(quote(70000), '70000');
    assert.equal(quote(undefined), 'undefined');
    assert.equal(quote(12n), '12');
  });

  it('quotes a prefix of a long value and says how long it was', () => {
    assert.equal(quote('x'.repeat(HUGE)), `"${'x'.repeat(64)}"… (${HUGE} characters)`);
    assert.equal(quote('abcdef', 3), '"abc"… (6 characters)');
    assert.equal(quote(['a'.repeat(100)], 10), '["aaaaaaaa… (104 characters)');
  });
});

describe('error messages quote a bounded prefix of the offending value (issue 12, defect 9)', () => {
  const sock = tempDir();
  let d: TestDaemon;
  let ct: Client;
  let gc: Client;
  let nat: Client;
  let health: Client;

  before(async () => {
    d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `/memory-test/${process.pid}-bounds`, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096']);
    ct = ctClient(d.address);
    gc = serviceClient(services().GCRunner.service, 'GCRunner', d.address);
    nat = serviceClient(services().NATMaps.service, 'NATMaps', d.address);
    health = serviceClient(services().Health.service, 'Health', d.address);
  });

  after(async () => {
    for (const c of [ct, gc, nat, health]) c?.close();
    await d?.stop();
    sock.cleanup();
  });

  const map = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
  const key = { daddr: '192.0.2.1', saddr: '198.51.100.2', dport: 80, sport: 40000, nexthdr: 6, flags: 0 };

  it('CTMaps.Lookup: key.daddr', async () => {
    assertShort(await statusOf(call(ct, 'Lookup', { map, key: { ...key, daddr: huge() } })), grpc.status.INVALID_ARGUMENT, 'key.daddr');
  });

  it('CTMaps.Update: records[0].key.saddr', async () => {
    const err = await statusOf(call(ct, 'Update', { records: [{ map, key: { ...key, saddr: huge() }, entry: { lifetime: 100 } }] }));
    assertShort(err, grpc.status.INVALID_ARGUMENT, 'records[0].key.saddr');
  });

  it('CTMaps.DumpEntries: filter.address', async () => {
    assertShort(await statusOf(collect(ct, 'DumpEntries', { maps: [], filter: { address: huge() } })), grpc.status.INVALID_ARGUMENT, 'filter.address');
  });

  it('GCRunner.Run: filter.match_ips[1]', async () => {
    const err = await statusOf(collect(gc, 'Run', { family: 'FAMILY_IPV4', filter: { match_ips: ['192.0.2.1', huge()] } }));
    assertShort(err, grpc.status.INVALID_ARGUMENT, 'filter.match_ips[1]');
  });

  it('NATMaps.Update: records[0].entry.addr', async () => {
    const record = { family: 'FAMILY_IPV4', cluster_id: 0, key: { ...key, nexthdr: 17 }, entry: { addr: huge(), port: 1, created: '1', needs_ct: false } };
    assertShort(await statusOf(call(nat, 'Update', { records: [record] })), grpc.status.INVALID_ARGUMENT, 'records[0].entry.addr');
  });

  it('Health.Check: an unknown service name', async () => {
    assertShort(await statusOf(call(health, 'Check', { service: huge() })), grpc.status.NOT_FOUND, 'service');
  });
});
