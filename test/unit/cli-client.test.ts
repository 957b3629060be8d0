/**
 * `ctmap ct list` and `ctmap gc run` against an in-process daemon (memory backend) over
 * its unix socket: the typed clients of src/api/clients.ts, end to end through run().
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as path from 'node:path';
import { run } from '../../src/cli/main';
import { call, ctClient, startTestDaemon, tempDir } from '../helpers/grpc';

test('ctmap ct list prints the entries; ctmap gc run removes the expired one and prints the counts', async (t) => {
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `/memory-cli-${process.pid}`, '--enable-ipv6=false']);
  t.after(() => d.stop());
  const socket = d.address.slice('unix:'.length);
  assert.ok(path.isAbsolute(socket));
  const ct = ctClient(d.address);
  t.after(() => ct.close());
  const map = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
  const key = { daddr: '192.0.2.1', saddr: '198.51.100.1', dport: 443, sport: 40000, nexthdr: 6, flags: 0 };
  await call(ct, 'Update', {
    records: [
      { map, key, entry: { lifetime: 1, packets: '3' } },
      { map, key: { ...key, sport: 40001 }, entry: { lifetime: 0xfffffff0, packets: '5' } },
    ],
  });

  const ctmap = async (...argv: string[]) => {
    const o = { out: '', err: '' };
    const code = await run([...argv, '--socket', socket], {}, { out: (s) => (o.out += s), err: (s) => (o.err += s) });
    return { code, ...o };
  };

  const listed = await ctmap('ct', 'list');
  assert.deepEqual([listed.code, listed.err], [0, '']);
  assert.equal(listed.out.trimEnd().split('\n').length, 2, listed.out);
  assert.match(listed.out, /^TCP OUT 192\.0\.2\.1:40001 -> 198\.51\.100\.1:443 .* Packets=5 /m);

  const gc = await ctmap('gc', 'run', '--family', 'ipv4');
  assert.deepEqual([gc.code, gc.err], [0, '']);
  assert.match(gc.out, /^IPv4 TCP global +deleted 1, alive 1, skipped 0, refreshed 0$/m);
  assert.match(gc.out, /^SNAT entries deleted with them: 0; took \d+\.\d ms$/m);

  const after = await ctmap('ct', 'list', '--family', 'ipv4');
  assert.equal(after.out.trimEnd().split('\n').length, 1, after.out);
  assert.match(after.out, /:40001 /);
});
