// The CT lifecycle event bus (issue 13, item 3): sequence numbers per family, order, exact
// loss counts per subscriber, source losses in order, filters, and nothing built when
// nobody listens.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CtBusItem, CtEventBus, CtEventSubscription } from '../../src/maps/ctmap/events/bus';
import type { CtEventInput, CtEventKind, CtEventReason } from '../../src/maps/ctmap/events/types';
import type { Family } from '../../src/maps/addr';

/** An event whose key's first byte tells them apart (`tag`), of the given family. */
function ev(family: Family, tag: number, kind: CtEventKind = 'destroy', reason: CtEventReason = 'gc-expired'): CtEventInput {
  const key = Buffer.alloc(family === 'ipv4' ? 14 : 38);
  key[0] = tag;
  return { kind, reason, ref: { family, kind: 'tcp', clusterId: 0 }, key, entry: Buffer.alloc(56) };
}

/** Everything the subscription holds, after closing it. */
async function drain(sub: CtEventSubscription, maxEvents?: number): Promise<CtBusItem[]> {
  sub.close();
  const out: CtBusItem[] = [];
  for (let i = await sub.take(maxEvents); i; i = await sub.take(maxEvents)) out.push(i);
  return out;
}

/** Items as compact text: "4:1,2,3" for events of ipv4 with those tags, "lost subscriber ipv4 2". */
function summary(items: CtBusItem[]): string[] {
  return items.map((i) =>
    i.kind === 'events' ? `${i.family === 'ipv4' ? 4 : 6}:${i.events.map((e) => `${e.key[0]}#${e.sequence}`).join(',')}` : `lost ${i.at} ${i.family ?? '-'} ${i.count}`,
  );
}

test('every event gets the next sequence number of its family; batches keep publish order per family', async () => {
  const bus = new CtEventBus();
  const sub = bus.subscribe();
  bus.publish([ev('ipv4', 1), ev('ipv6', 2), ev('ipv4', 3)]);
  bus.publish([ev('ipv6', 4)]);
  bus.publish([ev('ipv4', 5)]);
  assert.equal(bus.lastSequence('ipv4'), 3);
  assert.equal(bus.lastSequence('ipv6'), 2);
  // take() with a bound of 1 event at a time shows the per-event order.
  assert.deepEqual(summary(await drain(sub, 1)), ['4:1#1', '4:3#2', '6:2#1', '6:4#2', '4:5#3']);
});

test('consecutive batches of one family are joined up to maxEvents, and a long one is split', async () => {
  const bus = new CtEventBus();
  const sub = bus.subscribe();
  bus.publish([ev('ipv4', 1), ev('ipv4', 2)]);
  bus.publish([ev('ipv4', 3)]);
  bus.publish([ev('ipv6', 4)]);
  bus.publish([ev('ipv4', 5), ev('ipv4', 6), ev('ipv4', 7)]);
  assert.deepEqual(summary(await drain(sub, 2)), ['4:1#1,2#2', '4:3#3', '6:4#1', '4:5#4,6#5', '4:7#6']);
});

test('a subscriber that falls behind is told exactly how many it lost, at the gap, and the sequence shows where it resumes', async () => {
  const bus = new CtEventBus();
  const slow = bus.subscribe({ buffer: 3 });
  const fast = bus.subscribe({ buffer: 100 });
  bus.publish([ev('ipv4', 1), ev('ipv4', 2)]);
  bus.publish([ev('ipv4', 3), ev('ipv4', 4), ev('ipv4', 5)]); // slow: 3 fits, 4 and 5 lost
  bus.publish([ev('ipv6', 6)]); // slow: lost (full)
  const first = await slow.take(10); // frees 3 slots
  assert.deepEqual(summary([first!]), ['4:1#1,2#2,3#3']);
  bus.publish([ev('ipv4', 7)]);
  assert.equal(slow.totalLost, 3);
  assert.deepEqual(summary(await drain(slow, 10)), ['lost subscriber ipv4 2', 'lost subscriber ipv6 1', '4:7#6']);
  // The other subscriber lost nothing: losses are per subscriber.
  assert.equal(fast.totalLost, 0);
  assert.deepEqual(summary(await drain(fast, 10)), ['4:1#1,2#2,3#3,4#4,5#5', '6:6#1', '4:7#6']);
});

test('loss counts stay exact over many publishes to a stalled subscriber, in a bounded number of notices', async () => {
  const bus = new CtEventBus();
  const sub = bus.subscribe({ buffer: 10 });
  let published = 0;
  for (let i = 0; i < 1000; i++) {
    const n = (i % 7) + 1;
    bus.publish(Array.from({ length: n }, () => ev('ipv4', 9)));
    published += n;
  }
  const items = await drain(sub);
  const delivered = items.filter((i) => i.kind === 'events').reduce((n, i) => n + (i.kind === 'events' ? i.events.length : 0), 0);
  const lost = items.filter((i) => i.kind === 'lost').reduce((n, i) => n + (i.kind === 'lost' ? i.count : 0), 0);
  assert.equal(delivered, 10);
  assert.equal(lost, published - 10);
  assert.equal(sub.totalLost, published - 10);
  assert.equal(items.filter((i) => i.kind === 'lost').length, 1, 'consecutive losses add up into one notice');
  assert.equal(bus.lastSequence('ipv4'), published);
});

test('source losses reach subscribers in order with the events, for their family or for every family when unknown', async () => {
  const bus = new CtEventBus();
  const all = bus.subscribe();
  const v6 = bus.subscribe({ families: ['ipv6'] });
  bus.publish([ev('ipv4', 1)]);
  bus.reportSourceLoss(5); // family unknown: everyone
  bus.publish([ev('ipv6', 2)]);
  bus.reportSourceLoss(3, 'ipv4'); // only ipv4 subscribers
  bus.reportSourceLoss(4, 'ipv4'); // adds up with the previous notice
  bus.publish([ev('ipv4', 3)]);
  assert.deepEqual(summary(await drain(all)), ['4:1#1', 'lost source - 5', '6:2#1', 'lost source ipv4 7', '4:3#2']);
  assert.deepEqual(summary(await drain(v6)), ['lost source - 5', '6:2#1']);
  assert.deepEqual(bus.sourceLost(), { ipv4: 7, ipv6: 0, unknown: 5 });
  // Source losses are not the subscriber's own losses, and take no sequence numbers.
  assert.equal(all.totalLost, 0);
  assert.equal(bus.lastSequence('ipv4'), 2);
});

test('a source loss is delivered to a full subscriber too', async () => {
  const bus = new CtEventBus();
  const sub = bus.subscribe({ buffer: 1 });
  bus.publish([ev('ipv4', 1), ev('ipv4', 2)]);
  bus.reportSourceLoss(9, 'ipv4');
  assert.deepEqual(summary(await drain(sub)), ['4:1#1', 'lost subscriber ipv4 1', 'lost source ipv4 9']);
});

test('filters: kinds and family; events filtered out are neither delivered nor lost, but keep their sequence numbers', async () => {
  const bus = new CtEventBus();
  const closes = bus.subscribe({ kinds: ['close'], families: ['ipv4'], buffer: 1 });
  bus.publish([ev('ipv4', 1, 'new', 'created'), ev('ipv4', 2, 'close', 'fin'), ev('ipv4', 3, 'destroy'), ev('ipv6', 4, 'close', 'rst')]);
  bus.publish([ev('ipv4', 5, 'close', 'rst'), ev('ipv4', 6, 'new', 'created')]);
  assert.equal(closes.totalLost, 1, 'only the close it had no room for');
  const items = await drain(closes);
  assert.deepEqual(summary(items), ['4:2#2', 'lost subscriber ipv4 1']);
  const first = items[0];
  assert.ok(first.kind === 'events');
  assert.equal(first.events[0].reason, 'fin');
});

test('with nobody listening nothing is built, but sequence numbers still count every event (publish and skip)', async () => {
  const bus = new CtEventBus();
  assert.equal(bus.observed, false);
  bus.publish([ev('ipv4', 1), ev('ipv4', 2)]);
  bus.skip('ipv4', 10);
  bus.reportSourceLoss(3);
  const sub = bus.subscribe();
  assert.equal(bus.observed, true);
  bus.publish([ev('ipv4', 3)]);
  assert.deepEqual(summary(await drain(sub)), ['4:3#13']);
  assert.equal(bus.observed, false, 'a closed subscription detaches');
});

test('take waits for the next publish; close ends waiting takes; a closed bus ends every subscription', async () => {
  const bus = new CtEventBus();
  const sub = bus.subscribe();
  const pending = sub.take();
  bus.publish([ev('ipv6', 1)]);
  assert.deepEqual(summary([(await pending)!]), ['6:1#1']);
  const waiting = sub.take();
  bus.close();
  assert.equal(await waiting, undefined);
  const late = bus.subscribe();
  assert.equal(await late.take(), undefined);
  bus.publish([ev('ipv4', 2)]);
  assert.equal(bus.lastSequence('ipv4'), 0, 'a closed bus ignores publishes');
});

test('waitForRoom waits for a subscriber that keeps taking, and gives up on one that stalls', async () => {
  const bus = new CtEventBus();
  const sub = bus.subscribe({ buffer: 4 });
  bus.publish([ev('ipv4', 1), ev('ipv4', 2), ev('ipv4', 3), ev('ipv4', 4)]);
  let roomSeen = false;
  const waiting = bus.waitForRoom(2, 10_000).then(() => (roomSeen = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(roomSeen, false, 'no room yet');
  await sub.take(2);
  await waiting;
  assert.equal(roomSeen, true);
  // Now nothing takes: the wait gives up after a stall period instead of hanging.
  bus.publish([ev('ipv4', 5), ev('ipv4', 6)]);
  await bus.waitForRoom(4, 20);
  // Behind from then on: no further waits until it drains.
  await bus.waitForRoom(4, 60_000);
  assert.equal(sub.totalLost, 0);
});

test('a buffer bound that is not a positive integer is refused', () => {
  const bus = new CtEventBus();
  assert.throws(() => bus.subscribe({ buffer: 0 }), /buffer/);
  assert.throws(() => bus.subscribe({ buffer: 1.5 }), /buffer/);
  assert.equal(bus.observed, false);
});
