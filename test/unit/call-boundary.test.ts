import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { CtmapError, invalidArgument, type ErrorCode } from '../../src/errors';
import { createLogger } from '../../src/daemon/logger';
import { ABORT, GRPC_STATUS, MAX_DETAILS_BYTES, toGrpcStatus, unary, type CallContext } from '../../src/server/call-boundary';

/** A logger writing parsed records into `lines`, so tests assert on what was logged. */
function memoryLogger() {
  const lines: Array<Record<string, any>> = [];
  const log = createLogger('trace', { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

/** Just enough of a grpc-js unary call for the wrapper. */
function fakeCall(request: unknown, deadline: number = Infinity) {
  return Object.assign(new EventEmitter(), {
    request,
    cancelled: false,
    getPeer: () => 'unix:test',
    getDeadline: () => deadline,
    getPath: () => '/test.Fake/Call',
    getAuthContext: () => ({}),
  }) as unknown as grpc.ServerUnaryCall<unknown, unknown> & EventEmitter;
}

/** Runs a unary wrapper once and resolves with what reached the callback, and how often. */
function invoke(handler: grpc.handleUnaryCall<unknown, unknown>, call = fakeCall({})) {
  return new Promise<{ err: grpc.ServerErrorResponse | null; value: unknown; calls: () => number }>((resolve) => {
    let calls = 0;
    handler(call, (err, value) => {
      calls++;
      // Let a (wrong) second callback arrive before the test looks at the count.
      setImmediate(() => resolve({ err: err as grpc.ServerErrorResponse | null, value, calls: () => calls }));
    });
  });
}

describe('toGrpcStatus', () => {
  const expected: Record<ErrorCode, grpc.status> = {
    'invalid-argument': grpc.status.INVALID_ARGUMENT,
    'not-found': grpc.status.NOT_FOUND,
    'already-exists': grpc.status.ALREADY_EXISTS,
    'resource-exhausted': grpc.status.RESOURCE_EXHAUSTED,
    'failed-precondition': grpc.status.FAILED_PRECONDITION,
    'permission-denied': grpc.status.PERMISSION_DENIED,
    unavailable: grpc.status.UNAVAILABLE,
    'deadline-exceeded': grpc.status.DEADLINE_EXCEEDED,
    internal: grpc.status.INTERNAL,
  };

  it('maps every error code', () => {
    assert.deepEqual({ ...GRPC_STATUS }, expected);
    for (const [code, status] of Object.entries(expected) as Array<[ErrorCode, grpc.status]>) {
      const s = toGrpcStatus(new CtmapError(code, `some ${code} problem`));
      assert.equal(s.code, status, code);
      if (code !== 'internal') assert.equal(s.details, `some ${code} problem`);
    }
  });

  it('sends the field of an invalid argument', () => {
    assert.deepEqual(toGrpcStatus(invalidArgument('records[3].key.dport', 'must be 0..65535')), {
      code: grpc.status.INVALID_ARGUMENT,
      details: 'records[3].key.dport: must be 0..65535',
    });
  });

  it('cuts details longer than MAX_DETAILS_BYTES at a character boundary (issue 12, defect 9)', () => {
    for (const unit of ['x', 'é', '€', '😀']) {
      const { details } = toGrpcStatus(new CtmapError('not-found', `key: ${unit.repeat(5000)}`));
      assert.ok(Buffer.byteLength(details) <= MAX_DETAILS_BYTES, `${unit}: ${Buffer.byteLength(details)} bytes`);
      assert.ok(Buffer.byteLength(details) > MAX_DETAILS_BYTES - 8, `${unit}: cut too short`);
      assert.ok(details.startsWith(`key: ${unit}`) && details.endsWith(`${unit}…`), `${unit}: ${details.slice(-10)}`);
    }
    const short = 'key: not an IP address: "x"';
    assert.equal(toGrpcStatus(new CtmapError('invalid-argument', short)).details, short);
  });

  it('never sends the message or cause of an internal error', () => {
    const cause = new Error('EFAULT at /sys/fs/bpf/tc/globals/secret');
    for (const err of [new CtmapError('internal', 'bpf: EFAULT /sys/fs/bpf', { cause }), cause, 'a thrown string', undefined]) {
      assert.deepEqual(toGrpcStatus(err), { code: grpc.status.INTERNAL, details: 'internal error' });
    }
  });
});

describe('unary', () => {
  it('answers once with the result and logs success at debug', async () => {
    const { log, lines } = memoryLogger();
    let seen: CallContext | undefined;
    const h = unary(log, 'CTMaps/Count', async (req: { n: number }, ctx) => {
      seen = ctx;
      return { doubled: req.n * 2 };
    });
    const r = await invoke(h as grpc.handleUnaryCall<unknown, unknown>, fakeCall({ n: 21 }));
    assert.equal(r.err, null);
    assert.deepEqual(r.value, { doubled: 42 });
    assert.equal(r.calls(), 1);
    assert.equal(seen?.signal.aborted, false);
    const ok = lines.find((l) => l.msg === 'ok');
    assert.equal(ok?.level, 20);
    assert.equal(ok?.method, 'CTMaps/Count');
    assert.equal(ok?.peer, 'unix:test');
  });

  it('maps a rejection to its status and logs the error with its cause', async () => {
    const { log, lines } = memoryLogger();
    const h = unary(log, 'CTMaps/Lookup', async () => {
      throw new CtmapError('internal', 'map lookup: bad fd', { cause: new Error('EBADF: the secret cause') });
    });
    const r = await invoke(h);
    assert.equal(r.calls(), 1);
    assert.equal(r.err?.code, grpc.status.INTERNAL);
    assert.equal(r.err?.details, 'internal error');
    assert.ok(!JSON.stringify(r.err).includes('secret'));
    const failed = lines.find((l) => l.msg === 'failed');
    assert.equal(failed?.level, 50);
    assert.equal(failed?.err.message, 'map lookup: bad fd');
    assert.equal(failed?.err.cause.message, 'EBADF: the secret cause');
  });

  it('turns a synchronous throw of a non-async handler into a status', async () => {
    const { log } = memoryLogger();
    const h = unary(log, 'X/Y', (() => {
      throw new TypeError('boom');
    }) as unknown as () => Promise<unknown>);
    const r = await invoke(h);
    assert.equal(r.err?.code, grpc.status.INTERNAL);
    assert.equal(r.calls(), 1);
  });

  it('aborts ctx.signal on client cancel, deadline and shutdown', async () => {
    const { log } = memoryLogger();
    const waitForAbort = async (_req: unknown, ctx: CallContext) => {
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
      throw ctx.signal.reason;
    };

    const cancelled = fakeCall({});
    const p1 = invoke(unary(log, 'X/Cancel', waitForAbort), cancelled);
    cancelled.emit('cancelled', 'cancelled');
    assert.equal((await p1).err?.details, ABORT.cancelled.message);

    const p2 = invoke(unary(log, 'X/Deadline', waitForAbort), fakeCall({}, Date.now() + 20));
    const r2 = await p2;
    assert.equal(r2.err?.details, ABORT.deadline.message);
    // Issue 12, defect 11: the boundary's own deadline timer answers DEADLINE_EXCEEDED.
    assert.equal(r2.err?.code, grpc.status.DEADLINE_EXCEEDED);

    const shutdown = new AbortController();
    const p3 = invoke(unary(log, 'X/Shutdown', waitForAbort, shutdown.signal));
    shutdown.abort();
    const r3 = await p3;
    assert.equal(r3.err?.code, grpc.status.UNAVAILABLE);
    assert.equal(r3.err?.details, ABORT.shutdown.message);

    // Once shut down, new calls are refused without running the handler.
    let ran = false;
    const r4 = await invoke(unary(log, 'X/Late', async () => void (ran = true), shutdown.signal));
    assert.equal(r4.err?.code, grpc.status.UNAVAILABLE);
    assert.equal(ran, false);
  });
});
