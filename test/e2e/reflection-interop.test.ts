/**
 * Server reflection as clients that are not ours see it (grpcurl's way of working): a
 * Python client on Debian's grpcio and the reference protobuf implementation, given only
 * the reflection protocol, fetches every served file descriptor through reflection v1 and
 * v1alpha, loads them into the reference descriptor pool, and calls Health.Check with a
 * request built from them; Debian's protoc then checks the same descriptors. Before the
 * map entry fix (src/api/proto.ts, nameMapEntriesAsProtoc) both refused
 * grpc.health.v1 ("map_entry should not be set explicitly").
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import * as path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../../src/config/paths';
import { startTestDaemon, tempDir } from '../helpers/grpc';

const PYTHON = '/usr/bin/python3'; // Debian's, where python3-grpcio is installed (not a pyenv shim)
const CLIENT = path.join(REPO_ROOT, 'test/interop/reflection_client.py');
const REFLECTION_PROTOS = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto');

test('every descriptor served by reflection v1 and v1alpha is accepted by the reference implementation, and a client built from them calls Health.Check', async (t) => {
  const python = spawnSync(PYTHON, ['-c', 'import grpc, google.protobuf'], { encoding: 'utf8' });
  assert.equal(python.status, 0, `Debian's python3-grpcio and python3-protobuf are required (scripts/install-deps.sh): ${python.stderr}`);
  const tmp = tempDir(t);
  const root = tempDir(t);
  const d = await startTestDaemon(tmp.dir, ['--backend', 'memory', '--bpf-root', root.dir, '--bpf-ct-global-tcp-max', '4096', '--bpf-ct-global-any-max', '4096']);
  t.after(() => d.stop());

  for (const version of ['v1', 'v1alpha'] as const) {
    // The reflection protocol itself, compiled by the reference compiler.
    const reflectionSet = path.join(tmp.dir, `reflection-${version}.pb`);
    const protoc = spawnSync('protoc', [`-I${REFLECTION_PROTOS}`, '--include_imports', `--descriptor_set_out=${reflectionSet}`, `grpc/reflection/${version}/reflection.proto`], { encoding: 'utf8' });
    assert.equal(protoc.status, 0, protoc.stderr);

    const served = path.join(tmp.dir, `served-${version}.pb`);
    // Asynchronously: the daemon answering it runs in this process's event loop.
    const run = await promisify(execFile)(PYTHON, [CLIENT, d.address, version, reflectionSet, served], { encoding: 'utf8', timeout: 60_000 }).catch(
      (err: Error & { stderr?: string }) => assert.fail(`reflection ${version}: ${err.stderr ?? err.message}`),
    );
    const out = JSON.parse(run.stdout) as { services: string[]; files: string[]; health: string };
    for (const s of ['ctmap.v1.CTMaps', 'ctmap.v1.GCRunner', 'ctmap.v1.NATMaps', 'ctmap.v1.ClusterCTMaps', 'grpc.health.v1.Health', `grpc.reflection.${version}.ServerReflection`]) {
      assert.ok(out.services.includes(s), `reflection ${version} does not list ${s}: ${out.services.join(', ')}`);
    }
    assert.equal(out.health, 'SERVING');

    // protoc builds each served file from the set alone: the check the issue names.
    for (const file of out.files) {
      const check = spawnSync('protoc', [`--descriptor_set_in=${served}`, '--descriptor_set_out=/dev/null', file], { encoding: 'utf8' });
      assert.equal(check.status, 0, `protoc refuses ${file} served by reflection ${version}: ${check.stderr}`);
    }
    assert.ok(out.files.length >= 3, `only ${out.files.join(', ')} served`);
  }
});
