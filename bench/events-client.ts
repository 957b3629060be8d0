/**
 * The subscriber process of bench "events": reads one server stream of
 * CtLifecycleEventBatch messages (or the baseline's identical bytes) without decoding them
 * into objects, counting events and lost notices by walking the wire format, and prints
 * one JSON line {"events", "lost"} when `expected` events have been accounted for.
 *
 *   node dist/bench/events-client.js ADDRESS METHOD_PATH EXPECTED
 */
import * as grpc from '@grpc/grpc-js';

function varint(buf: Buffer, at: { pos: number }): number {
  let v = 0;
  let mul = 1;
  for (;;) {
    const b = buf[at.pos++];
    if (b === undefined) throw new Error('truncated varint');
    v += (b & 0x7f) * mul;
    if (b < 0x80) return v;
    mul *= 128;
  }
}

/** Events and lost counts of one CtLifecycleEventBatch message. */
function walk(buf: Buffer): { events: number; lost: number } {
  let events = 0;
  let lost = 0;
  const at = { pos: 0 };
  while (at.pos < buf.length) {
    const tag = varint(buf, at);
    if (tag !== 0x0a) throw new Error(`unexpected batch field tag ${tag}`);
    const end = varint(buf, at) + at.pos;
    let notice = -1;
    // Fields of one CtLifecycleEvent: only the lost notice (6) is looked into.
    while (at.pos < end) {
      const t = varint(buf, at);
      if ((t & 7) === 0) varint(buf, at);
      else if ((t & 7) === 2) {
        const len = varint(buf, at);
        if (t >> 3 === 6) {
          const inner = { pos: at.pos };
          if (buf[inner.pos++] === 0x08) notice = varint(buf, inner);
        }
        at.pos += len;
      } else throw new Error(`unexpected wire type ${t & 7}`);
    }
    if (notice >= 0) lost += notice;
    else events++;
  }
  return { events, lost };
}

const [address, method, expectedRaw] = process.argv.slice(2);
const expected = Number(expectedRaw);
const client = new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 << 20 });
const call = client.makeServerStreamRequest(method, (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0));
let events = 0;
let lost = 0;
call.on('data', (m: Buffer) => {
  const r = walk(m);
  events += r.events;
  lost += r.lost;
  if (events + lost >= expected) {
    process.stdout.write(`${JSON.stringify({ events, lost })}\n`);
    events = 0;
    lost = 0;
  }
});
call.on('error', (err: grpc.ServiceError) => {
  if (err.code !== grpc.status.CANCELLED) {
    process.stderr.write(`events-client: ${err.message}\n`);
    process.exitCode = 1;
  }
  client.close();
});
call.on('end', () => client.close());
