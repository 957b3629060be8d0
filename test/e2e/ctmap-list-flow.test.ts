/**
 * `ctmap ct list` and a stdout that does not keep up: the CLI stops reading the daemon's
 * stream while more than 8 MiB of its text waits to be written (jsonl and text alike),
 * goes on once the text is written, and with jsonl fills its buffers again only after
 * they have been written. Run
 * in-process (src/cli/main.ts run()) with an Io that plays stdout: it queues what it is
 * given and "writes" it (copies it, as the kernel would, and calls back) when the test says.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Io } from '../../src/cli/datapath';
import { run } from '../../src/cli/main';
import { ctNow } from '../../src/maps/clock';
import { startCliDaemon } from '../helpers/ctmap-cli';
import { call } from '../helpers/grpc';

const ENTRIES = 80_000;
const QUEUE_LIMIT = 8 << 20;

/** A stdout that holds everything until flush(): what it has taken, and the callbacks to run. */
class HeldStdout implements Io {
  readonly queue: Array<{ bytes: Buffer; written?: () => void }> = [];
  /** Copies of the bytes at the time they were written, in order. */
  readonly written: Buffer[] = [];
  /** Every distinct buffer a Buffer was handed in. */
  readonly buffers = new Set<ArrayBufferLike>();
  calls = 0;
  stderr = '';

  out(text: string | Buffer, written?: () => void): unknown {
    this.calls++;
    const bytes = typeof text === 'string' ? Buffer.from(text) : text;
    if (typeof text !== 'string') this.buffers.add(text.buffer);
    this.queue.push({ bytes, written });
    return this.outQueued() <= 16 << 10;
  }

  err(text: string): void {
    this.stderr += text;
  }

  outQueued(): number {
    return this.queue.reduce((n, q) => n + q.bytes.length, 0);
  }

  flush(): void {
    for (const q of this.queue.splice(0)) {
      this.written.push(Buffer.from(q.bytes));
      q.written?.();
    }
  }
}

/** Runs `ct list -o <format>` against a stdout written only when the test says; checks the pause, then everything. */
async function heldList(socket: string, format: 'jsonl' | 'text'): Promise<{ io: HeldStdout; lines: string[] }> {
  const io = new HeldStdout();
  let done = false;
  const listed = run(['ct', 'list', '-o', format, '--server', `unix:${socket}`], {}, io).then((code) => {
    done = true;
    return code;
  });

  // Nothing is written: the CLI must stop at the limit, give or take one batch.
  const deadline = Date.now() + 30_000;
  const inTime = (what: string) => assert.ok(Date.now() < deadline, `${format}: ${what} within 30 s (${io.calls} writes so far; stderr: ${io.stderr})`);
  let calls = -1;
  while (io.calls !== calls || io.calls === 0) {
    inTime('the output settles');
    calls = io.calls;
    await sleep(400);
  }
  assert.equal(done, false, `${format}: the whole dump was taken with nothing written (${io.outQueued()} bytes queued)`);
  assert.ok(io.outQueued() > QUEUE_LIMIT, `${format}: it stopped at ${io.outQueued()} bytes queued, before the limit`);
  assert.ok(io.outQueued() < QUEUE_LIMIT + (4 << 20), `${format}: it went on to ${io.outQueued()} bytes queued, more than a batch past the limit`);

  // Written as they come from now on: it resumes and finishes.
  while (!done) {
    inTime('the list ends');
    io.flush();
    await sleep(5);
  }
  io.flush();
  assert.equal(await listed, 0, io.stderr);
  return { io, lines: Buffer.concat(io.written).toString('utf8').split('\n').filter((l) => l.length > 0) };
}

test('ct list: pauses while 8 MiB wait for stdout and resumes once written; jsonl reuses only written buffers', async (t) => {
  const { socket, ct } = await startCliDaemon(t, 'flow', ['--bpf-ct-global-tcp-max', '131072']);
  const lifetime = Math.floor(ctNow()) + 1000;
  const map = { family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP', cluster_id: 0 };
  for (let base = 0; base < ENTRIES; base += 4000) {
    const records = Array.from({ length: 4000 }, (_, j) => {
      const i = base + j;
      return { map, key: { daddr: `192.0.2.${i % 250}`, saddr: '198.51.100.7', sport: 1024 + Math.floor(i / 250), dport: 443, nexthdr: 6, flags: 0 }, entry: { lifetime, packets: String(i), bytes: '1' } };
    });
    assert.equal((await call(ct, 'Update', { records })).written, records.length);
  }

  await t.test('jsonl', async () => {
    const { io, lines } = await heldList(socket, 'jsonl');
    // Every record once, each line whole: no buffer was filled again before it was written.
    assert.equal(lines.length, ENTRIES);
    const keys = new Set(lines.map((l) => {
      const r = JSON.parse(l) as { key: { daddr: string; sport: number } };
      return `${r.key.daddr}:${r.key.sport}`;
    }));
    assert.equal(keys.size, ENTRIES);
    assert.ok(io.buffers.size < io.calls - 1, `${io.calls} writes from ${io.buffers.size} buffers: written buffers were reused`);
  });

  await t.test('text', async () => {
    const { lines } = await heldList(socket, 'text');
    assert.equal(lines.length, ENTRIES);
    const flows = new Set(lines.map((l) => {
      const m = /^TCP OUT (192\.0\.2\.\d+:\d+) -> 198\.51\.100\.7:443 /.exec(l);
      assert.ok(m, `a line in Cilium's format: ${l}`);
      return m[1];
    }));
    assert.equal(flows.size, ENTRIES);
  });
});
