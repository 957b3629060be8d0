/**
 * Issue 2's CTMaps flow on the embedded memory backend: the same gRPC behaviour as the
 * kernel backend (test/kernel/daemon-flow.test.ts), no privileges needed.
 */
import { test } from 'node:test';
import { runCtFlow, runDeleteAndFlush } from '../helpers/ct-flow';
import { ctClient, startTestDaemon, tempDir } from '../helpers/grpc';

test('memory backend: CTMaps flow over gRPC', async (t) => {
  const sock = tempDir(t);
  const d = await startTestDaemon(sock.dir, ['--backend', 'memory', '--bpf-root', `/memory-test/${process.pid}`, '--bpf-ct-global-tcp-max', '65536', '--bpf-ct-global-any-max', '32768']);
  t.after(() => d.stop());
  const client = ctClient(d.address);
  t.after(() => client.close());
  const records = await runCtFlow(client, 'memory');
  await runDeleteAndFlush(client, records);
});
