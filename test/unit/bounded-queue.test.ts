import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BoundedQueue, QueueItem } from '../../src/server/bounded-queue';

async function drain<T>(q: BoundedQueue<T>): Promise<Array<QueueItem<T>>> {
  q.close();
  const out: Array<QueueItem<T>> = [];
  for (let i = await q.take(); i; i = await q.take()) out.push(i);
  return out;
}

test('drops beyond capacity and reports the loss exactly where the gap is', async () => {
  const q = new BoundedQueue<number>(3);
  for (let i = 1; i <= 5; i++) q.push(i); // 4, 5 dropped
  assert.deepEqual(await q.take(), { kind: 'item', value: 1 });
  q.push(6); // room again: 6 follows a gap of 2
  q.push(7); // full again: dropped
  assert.equal(q.totalLost, 3);
  assert.deepEqual(await drain(q), [
    { kind: 'item', value: 2 },
    { kind: 'item', value: 3 },
    { kind: 'lost', count: 2 },
    { kind: 'item', value: 6 },
    { kind: 'lost', count: 1 },
  ]);
});

test('drop counts items it was not given as lost, like pushes onto a full queue', async () => {
  const q = new BoundedQueue<number>(3);
  q.push(1);
  assert.equal(q.room, 2);
  q.push(2);
  q.push(3);
  assert.equal(q.room, 0);
  q.drop(1000);
  q.drop(0);
  assert.equal(q.totalLost, 1000);
  assert.equal(await q.waitForRoom(1, 1000), false, 'behind: not waited for');
  q.push(4); // still full: one more lost
  assert.deepEqual(await drain(q), [
    { kind: 'item', value: 1 },
    { kind: 'item', value: 2 },
    { kind: 'item', value: 3 },
    { kind: 'lost', count: 1001 },
  ]);
});

test('never holds more than its capacity', () => {
  const q = new BoundedQueue<number>(100);
  for (let i = 0; i < 100000; i++) q.push(i);
  assert.equal(q.size, 100);
  assert.equal(q.totalLost, 99900);
});

test('waitForRoom waits for a consumer that makes progress, gives up on a stalled one', async () => {
  const q = new BoundedQueue<number>(4);
  for (let i = 0; i < 4; i++) q.push(i);
  const consumer = (async () => {
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 20));
      await q.take();
    }
  })();
  assert.equal(await q.waitForRoom(3, 200), true, 'room made by a slow but steady consumer');
  assert.ok(q.size <= 1);
  await consumer;
  for (let i = 0; i < 3; i++) q.push(i);
  const t0 = Date.now();
  assert.equal(await q.waitForRoom(2, 50), false, 'stalled consumer: gave up');
  assert.ok(Date.now() - t0 < 500);
});

test('issue 12 item 8: once a consumer has lost items, waitForRoom does not wait for it until it has drained', async () => {
  const q = new BoundedQueue<number>(4);
  for (let i = 0; i < 6; i++) q.push(i); // 2 dropped: it fell behind
  for (let round = 0; round < 5; round++) {
    const t0 = Date.now();
    assert.equal(await q.waitForRoom(2, 1000), false, 'gave up at once: it is behind');
    assert.ok(Date.now() - t0 < 100, `round ${round}: did not wait (${Date.now() - t0} ms)`);
  }
  // Taking some is not enough: still behind until it has caught up.
  assert.deepEqual(await q.take(), { kind: 'item', value: 0 });
  assert.equal(await q.waitForRoom(4, 1000), false);
  // Drained, the lost count included: nothing was lost silently, and passes wait again.
  const rest: Array<QueueItem<number>> = [];
  while (q.size > 0) rest.push((await q.take())!);
  rest.push((await q.take())!);
  assert.deepEqual(rest, [{ kind: 'item', value: 1 }, { kind: 'item', value: 2 }, { kind: 'item', value: 3 }, { kind: 'lost', count: 2 }]);
  for (let i = 0; i < 4; i++) q.push(i);
  const waiting = q.waitForRoom(2, 1000);
  let settled: boolean | undefined;
  void waiting.then((v) => (settled = v));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(settled, undefined, 'waits for a consumer that has caught up');
  await q.take();
  await q.take();
  assert.equal(await waiting, true);
});

test('issue 12 item 8: a wait that gave up on a stalled consumer is not repeated until it has drained', async () => {
  const q = new BoundedQueue<number>(4);
  for (let i = 0; i < 4; i++) q.push(i); // full, nothing lost yet
  assert.equal(await q.waitForRoom(2, 30), false, 'stalled: gave up after the stall period');
  const t0 = Date.now();
  assert.equal(await q.waitForRoom(2, 1000), false);
  assert.ok(Date.now() - t0 < 100, 'the next wait returns at once');
  for (let i = 0; i < 4; i++) await q.take();
  q.push(9);
  q.push(9);
  q.push(9);
  const waiting = q.waitForRoom(2, 1000);
  await q.take();
  assert.equal(await waiting, true, 'caught up: waited for again');
});
