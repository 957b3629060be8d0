/**
 * `ctmap health` (the container probe, deploy/ctmapd-daemonset.yaml) against real servers
 * on unix sockets in a temp dir: an in-process daemon on the memory backend (SERVING ->
 * exit 0; an unknown service, a stopped daemon -> exit 1), a gRPC server whose health is
 * still NOT_SERVING (exit 1), and a socket that accepts and never answers (exit 1 once
 * --timeout has passed, so that a probe cannot hang).
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { run } from '../../src/cli/main';
import { startServer } from '../../src/server/server';
import { LogSink, startTestDaemon, tempDir } from '../helpers/grpc';

function sink() {
  const o = { out: '', err: '' };
  return { o, io: { out: (s: string) => (o.out += s), err: (s: string) => (o.err += s) } };
}

async function health(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  const { o, io } = sink();
  const code = await run(['health', ...argv], env, io);
  return { code, ...o };
}

test('ctmap health: exit 0 only while the daemon is SERVING', async (t) => {
  const { dir } = tempDir(t);
  const d = await startTestDaemon(dir, ['--backend', 'memory', '--bpf-root', `/memory-health-${process.pid}`, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096']);
  let stopped = false;
  t.after(() => (stopped ? undefined : d.stop()));
  const socket = d.address.replace(/^unix:/, '');

  assert.deepEqual(await health(['--socket', socket]), { code: 0, out: 'ctmapd: SERVING\n', err: '' });
  // The daemon's environment variable finds the socket, as in the DaemonSet.
  assert.equal((await health([], { CTMAPD_SOCKET: socket })).code, 0);
  assert.deepEqual(await health(['--socket', socket, '--service', 'ctmap.v1.CTMaps']), { code: 0, out: 'ctmap.v1.CTMaps: SERVING\n', err: '' });

  const unknown = await health(['--socket', socket, '--service', 'no.such.Service']);
  assert.equal(unknown.code, 1);
  assert.match(unknown.err, /^ctmap: grpc\.health\.v1\.Health\/Check: NOT_FOUND/);

  await d.stop();
  stopped = true;
  const gone = await health(['--socket', socket]);
  assert.equal(gone.code, 1);
  assert.match(gone.err, /UNAVAILABLE: .*is ctmapd running with --socket /);
});

test('ctmap health: exit 1 with NOT_SERVING while the maps are not open yet', async (t) => {
  const { dir } = tempDir(t);
  const socket = path.join(dir, 'starting.sock');
  const handle = await startServer({ config: { socket }, log: pino({ level: 'silent' }, new LogSink()), services: [] });
  t.after(() => handle.shutdown(1000));

  assert.deepEqual(await health(['--socket', socket]), { code: 1, out: 'ctmapd: NOT_SERVING\n', err: '' });
  handle.markServing();
  assert.equal((await health(['--socket', socket])).code, 0);
  handle.markNotServing();
  assert.deepEqual(await health(['--socket', socket]), { code: 1, out: 'ctmapd: NOT_SERVING\n', err: '' });
});

test('ctmap health: a socket that never answers fails after --timeout', async (t) => {
  const { dir } = tempDir(t);
  const socket = path.join(dir, 'mute.sock');
  const conns: net.Socket[] = [];
  const mute = net.createServer((c) => conns.push(c)); // accepts, never speaks HTTP/2
  await new Promise<void>((resolve) => mute.listen(socket, resolve));
  t.after(() => {
    for (const c of conns) c.destroy();
    mute.close();
  });

  const started = Date.now();
  const r = await health(['--socket', socket, '--timeout', '0.3']);
  const took = Date.now() - started;
  assert.equal(r.code, 1);
  assert.match(r.err, /^ctmap: grpc\.health\.v1\.Health\/Check: DEADLINE_EXCEEDED/);
  assert.ok(took >= 250 && took < 5000, `gave up after ${took} ms`);
});
