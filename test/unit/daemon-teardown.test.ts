/**
 * The daemon's one teardown stack (memory backend, in process): stop() and a start that
 * fails late drain the same stack, in the order ctmapd needs (serving ends before what a
 * call uses; the NAT coupling before the NAT maps; the per-cluster maps before the tables).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { CtmapError } from '../../src/errors';
import { parseConfig } from '../../src/config/config';
import { startDaemon } from '../../src/daemon/daemon';
import { LogSink, tempDir } from '../helpers/grpc';

/** Stack steps below the server, in drain order (the maps and what uses them). */
const MAP_STEPS = ['membership', 'datapath side maps', 'cluster maps', 'gc events', 'ct event bus', 'nat coupling', 'gc engine', 'gc deleter', 'nat maps', 'ct maps', 'map lifecycle', 'bpf-root lock'];

function start(socket: string, flags: string[]) {
  const logs = new LogSink();
  const config = parseConfig(['--socket', socket, '--backend', 'memory', ...flags], {});
  return { logs, daemon: startDaemon(config, pino({ level: 'debug' }, logs)) };
}

const steps = (logs: LogSink) => logs.lines.filter((l) => l.msg === 'teardown step').map((l) => l.step);

test('stop() drains the stack: serving first, then sources, scheduler, metrics server, maps', async (t) => {
  const dir = tempDir(t);
  const mesh = path.join(dir.dir, 'clustermesh');
  fs.mkdirSync(mesh);
  const socket = path.join(dir.dir, 'ctmapd.sock');
  const { logs, daemon } = start(socket, ['--bpf-root', `/memory-teardown-${process.pid}`, '--metrics-listen', '127.0.0.1:0', '--clustermesh-config', mesh]);
  const d = await daemon;
  assert.deepEqual(steps(logs), []);
  await d.stop(1000);
  assert.deepEqual(steps(logs), ['serving', 'clustermesh source', 'gc scheduler', 'metrics server', 'grpc server', ...MAP_STEPS]);
  assert.ok(d.datapath.closed, 'the side maps are closed');
  assert.ok(!fs.existsSync(socket), 'the socket is removed');
  await d.stop(1000);
  assert.equal(steps(logs).length, 5 + MAP_STEPS.length, 'a second stop() runs nothing again');
});

test('a start failing at the metrics server drains what it started; the next start gets the socket and pins', async (t) => {
  const dir = tempDir(t);
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.after(() => taken.close());
  const port = (taken.address() as net.AddressInfo).port;
  const socket = path.join(dir.dir, 'ctmapd.sock');
  const root = `/memory-teardown-fail-${process.pid}`;

  const failed = start(socket, ['--bpf-root', root, '--metrics-listen', `127.0.0.1:${port}`]);
  await assert.rejects(failed.daemon, (e: CtmapError) => e.code === 'failed-precondition' && /EADDRINUSE/.test(e.message));
  assert.deepEqual(steps(failed.logs), ['grpc server', ...MAP_STEPS]);
  assert.ok(!fs.existsSync(socket), 'the socket is removed');

  const again = start(socket, ['--bpf-root', root]);
  const d = await again.daemon;
  t.after(() => d.stop(1000));
  assert.ok(d.tables.active().length > 0);
});
