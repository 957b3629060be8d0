/**
 * bin/ctmapd as a real process: starts with defaults on a private bpffs root, answers
 * health SERVING, lists its services through reflection (what grpcurl does), and stops
 * cleanly on SIGTERM keeping its pins. Also the command line's help and bad-flag exits.
 */
import { CTMAPD_BIN } from '../../src/config/paths';
import assert from 'node:assert/strict';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition, services } from '../../src/api/proto';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';
import { tempDir } from '../helpers/grpc';

const bin = CTMAPD_BIN;

async function healthStatus(address: string, service = ''): Promise<string> {
  const Health = services().Health;
  const client = new Health(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) =>
      (client as any).Check({ service }, { deadline: Date.now() + 1000 }, (err: Error | null, res: { status: string }) => (err ? reject(err) : resolve(res.status))),
    );
  } finally {
    client.close();
  }
}

async function waitServing(address: string, child: ChildProcess, timeoutMs = 15000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`ctmapd exited early with ${child.exitCode}`);
    if (await healthStatus(address).catch(() => '')) {
      if ((await healthStatus(address)) === 'SERVING') return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('ctmapd did not become SERVING in time');
}

/** grpcurl's `list`: ServerReflectionInfo with list_services. */
async function reflectionList(address: string, version: 'v1' | 'v1alpha'): Promise<string[]> {
  const root = grpc.loadPackageDefinition(packageDefinition()) as any;
  const Ctor = root.grpc.reflection[version].ServerReflection;
  const client = new Ctor(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => {
      const stream = client.ServerReflectionInfo();
      stream.on('data', (res: any) => {
        resolve(res.list_services_response.service.map((s: { name: string }) => s.name));
        stream.end();
      });
      stream.on('error', reject);
      stream.write({ list_services: '' });
    });
  } finally {
    client.close();
  }
}

test('bin/ctmapd: serving, reflection, socket mode, clean SIGTERM shutdown keeping pins', async (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  const tmp = tempDir(t);
  const socket = path.join(tmp.dir, 'run/ctmapd.sock');
  const child = spawn(process.execPath, [bin, '--bpf-root', bpf.root, '--socket', socket, '--bpf-ct-global-tcp-max', '65536', '--bpf-ct-global-any-max', '32768'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => child.exitCode === null && child.kill('SIGKILL'));
  let stdout = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stdout += d));

  const address = `unix:${socket}`;
  await waitServing(address, child);
  assert.equal(await healthStatus(address, 'ctmap.v1.CTMaps'), 'SERVING');
  assert.equal(fs.statSync(socket).mode & 0o777, 0o660, 'socket mode 0660');

  for (const version of ['v1', 'v1alpha'] as const) {
    const listed = await reflectionList(address, version);
    for (const s of ['ctmap.v1.CTMaps', 'grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection']) {
      assert.ok(listed.includes(s), `${version} reflection lists ${s}: ${listed.join(', ')}`);
    }
  }

  // The log says which backend runs and where the maps are.
  const lines = stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.ok(lines.some((l) => /map backend: kernel/.test(l.msg)), 'log names the kernel backend');
  assert.ok(lines.some((l) => l.msg === 'ctmapd serving' && l.maps.length === 4));

  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  assert.equal(await exited, 0, 'exit code 0 on SIGTERM');
  assert.ok(!fs.existsSync(socket), 'socket removed on shutdown');
  for (const name of ['cilium_ct4_global', 'cilium_ct_any4_global', 'cilium_ct6_global', 'cilium_ct_any6_global']) {
    assert.ok(fs.existsSync(path.join(bpf.root, 'tc/globals', name)), `${name} stays pinned`);
  }
  assert.match(stdout, /shutting down/);
});

test('bin/ctmapd --help and bad flags', () => {
  const help = spawnSync(process.execPath, [bin, '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  for (const flag of ['--backend', '--bpf-root', '--socket', '--listen', '--bpf-ct-global-tcp-max', '--log-level']) assert.ok(help.stdout.includes(flag), `help mentions ${flag}`);

  const bad = spawnSync(process.execPath, [bin, '--bpf-ct-global-tcp-max', '12'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /bpf-ct-global-tcp-max/);

  const backend = spawnSync(process.execPath, [bin, '--backend', 'floppy'], { encoding: 'utf8' });
  assert.equal(backend.status, 2);
  assert.match(backend.stderr, /backend/);
});
