/**
 * The gRPC boundary: the only place where a CtmapError code becomes a gRPC status, and the
 * handler wrappers every service uses. grpc-js does not await async handlers, so the
 * wrappers turn a rejection into a status, answer exactly once, and give each call one
 * AbortSignal that fires on client cancel, deadline or server shutdown.
 */
import * as grpc from '@grpc/grpc-js';
import { CtmapError, MAX_DETAILS_BYTES, capBytes, type ErrorCode } from '../errors';
import type { Logger } from 'pino';
import { accessOf, callerOf } from './access';

/** CtmapError code -> gRPC status code. */
export const GRPC_STATUS: Readonly<Record<ErrorCode, grpc.status>> = Object.freeze({
  'invalid-argument': grpc.status.INVALID_ARGUMENT,
  'not-found': grpc.status.NOT_FOUND,
  'already-exists': grpc.status.ALREADY_EXISTS,
  'resource-exhausted': grpc.status.RESOURCE_EXHAUSTED,
  'failed-precondition': grpc.status.FAILED_PRECONDITION,
  'permission-denied': grpc.status.PERMISSION_DENIED,
  unavailable: grpc.status.UNAVAILABLE,
  'deadline-exceeded': grpc.status.DEADLINE_EXCEEDED,
  internal: grpc.status.INTERNAL,
});

/** What the client sees of an error. */
export interface GrpcStatus {
  readonly code: grpc.status;
  readonly details: string;
}

export { MAX_DETAILS_BYTES };

/**
 * Maps anything thrown to the status sent to the client. The message of a CtmapError is
 * sent as details (it is written for clients: "<field>: <problem>"), except for `internal`,
 * which always says "internal error": its message and cause may hold paths, errnos or
 * stack details that are for the log only. Details are cut to MAX_DETAILS_BYTES: messages
 * quote request values shortly (quote() in src/errors.ts), and this is the backstop for
 * one that does not, since clients refuse oversized status metadata (issue 12, defect 9).
 */
export function toGrpcStatus(err: unknown): GrpcStatus {
  const e = CtmapError.from(err);
  if (e.code === 'internal') return { code: grpc.status.INTERNAL, details: 'internal error' };
  return { code: GRPC_STATUS[e.code], details: capBytes(e.message, MAX_DETAILS_BYTES) };
}


// Client-caused outcomes are routine (a NOT_FOUND lookup); they are logged at debug so a
// busy client cannot flood the log. Errors that point at the node or the daemon are not.
const LOG_LEVEL: Readonly<Record<ErrorCode, 'debug' | 'warn' | 'error'>> = {
  'invalid-argument': 'debug',
  'not-found': 'debug',
  'already-exists': 'debug',
  unavailable: 'debug',
  'deadline-exceeded': 'debug',
  'resource-exhausted': 'warn',
  'failed-precondition': 'warn',
  'permission-denied': 'warn',
  internal: 'error',
};

/** Abort reasons of CallContext.signal; `signal.reason` is one of these. */
export const ABORT = Object.freeze({
  shutdown: new CtmapError('unavailable', 'server is shutting down'),
  cancelled: new CtmapError('unavailable', 'call cancelled by the client'),
  // Issue 12, defect 11: grpc-js's own timer and this one race for the same instant; when
  // this one wins, its status is what the client gets.
  deadline: new CtmapError('deadline-exceeded', 'deadline exceeded'),
});

/** Per-call context handed to every handler. */
export interface CallContext {
  /** Aborts (reason: one of ABORT) on client cancel, deadline or server shutdown. Pass it
   *  into batch loops and rxjs pipelines; stop work when it fires. */
  readonly signal: AbortSignal;
  /** Child logger with `method` and `peer` (and `caller` on TLS). */
  readonly log: Logger;
  /**
   * Adds fields to the call's audit line: the maps touched and the counts. Every call of
   * a write RPC (access.ts) logs exactly one, at info, when it ends: method, peer, caller
   * (access.ts callerOf: the certificate subject on TLS, else the peer), outcome ("OK"
   * or the status sent) and these fields; those of later calls win. No effect on reads.
   */
  audit(fields: Record<string, unknown>): void;
}

/** The sending side of a server stream, with flow control. */
export interface StreamWriter<T> {
  /**
   * Sends `msg`. Resolves at once while the transport keeps up; otherwise only after the
   * client has drained the backlog ('drain'), so a producer that awaits every write holds
   * at most one stream buffer of messages. Rejects with `signal.reason` once the call is
   * aborted. Await each write before the next: a write while one is waiting rejects.
   */
  write(msg: T): Promise<void>;
}

export type UnaryHandler<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;
export type StreamHandler<Req, Res> = (req: Req, writer: StreamWriter<Res>, ctx: CallContext) => Promise<void>;

/**
 * Wraps an async unary handler for grpc-js. The callback is called exactly once: with the
 * handler's result, or with toGrpcStatus(error). Success is logged at debug, failure with
 * the error and its cause (see LOG_LEVEL). `name` labels the log lines ("CTMaps/Lookup").
 * `shutdown` is the server-wide signal: once aborted, calls fail with UNAVAILABLE.
 */
export function unary<Req, Res>(
  log: Logger,
  name: string,
  handler: UnaryHandler<Req, Res>,
  shutdown?: AbortSignal,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const started = Date.now();
    const { ctx, release } = callContext(log, name, call, shutdown);
    let answered = false;
    const answer: grpc.sendUnaryData<Res> = (err, value) => {
      if (answered) return;
      answered = true;
      release(err ?? undefined);
      callback(err, value);
    };
    if (shutdown?.aborted) return fail(ctx, ABORT.shutdown, (status) => answer(status));
    void (async () => handler(call.request, ctx))().then(
      (res) => {
        ctx.log.debug({ ms: Date.now() - started }, 'ok');
        answer(null, res);
      },
      (err: unknown) => fail(ctx, err, (status) => answer(status)),
    );
  };
}

/**
 * Wraps an async server-streaming handler for grpc-js. The handler writes through a
 * StreamWriter (flow control, see there); when it resolves the call ends with OK, when it
 * rejects the call ends with toGrpcStatus(error) after the messages already written.
 * Logging and `shutdown` as for unary().
 */
export function serverStream<Req, Res>(
  log: Logger,
  name: string,
  handler: StreamHandler<Req, Res>,
  shutdown?: AbortSignal,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const started = Date.now();
    const { ctx, release } = callContext(log, name, call, shutdown);
    const end = (status?: GrpcStatus) => {
      release(status);
      if (status === undefined) call.end();
      // grpc-js turns an 'error' event into the trailing status and ends the call; the
      // messages queued before it are still sent. destroy() would drop the status.
      else call.emit('error', status);
    };
    if (shutdown?.aborted) return fail(ctx, ABORT.shutdown, end);
    const { writer, sent } = flowControlled(call, ctx.signal);
    void (async () => handler(call.request, writer, ctx))().then(
      () => {
        ctx.log.debug({ ms: Date.now() - started, sent: sent() }, 'ok');
        end();
      },
      (err: unknown) => fail(ctx, err, end),
    );
  };
}

/** Logs a failed call and reports its status through `send`. */
function fail(ctx: CallContext, err: unknown, send: (status: GrpcStatus) => void): void {
  const reason: unknown = ctx.signal.reason;
  if (ctx.signal.aborted && (reason === ABORT.cancelled || reason === ABORT.deadline)) {
    // The client is gone, or the deadline passed: grpc-js may have sent DEADLINE_EXCEEDED
    // already (then this is dropped), or this timer fired first and this status is sent.
    ctx.log.debug({ reason: (reason as Error).message }, 'ended early');
    send(toGrpcStatus(reason));
    return;
  }
  const e = CtmapError.from(err);
  ctx.log[LOG_LEVEL[e.code]]({ err: e, code: e.code }, 'failed');
  send(toGrpcStatus(e));
}

type AnyServerCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>;

/**
 * Builds the call's context. The signal links client cancel ('cancelled'), the deadline
 * and the server-wide shutdown signal; release() detaches from all three so the shared
 * shutdown signal does not collect one listener per finished call, and writes the audit
 * line of a write RPC with the status the call ends with (none: OK).
 */
function callContext(
  base: Logger,
  name: string,
  call: AnyServerCall,
  shutdown: AbortSignal | undefined,
): { ctx: CallContext; release: (status?: Partial<GrpcStatus> | null) => void } {
  const ac = new AbortController();
  const onCancel = () => ac.abort(ABORT.cancelled);
  const onShutdown = () => ac.abort(ABORT.shutdown);
  call.on('cancelled', onCancel);
  if (call.cancelled) onCancel();
  if (shutdown?.aborted) onShutdown();
  else shutdown?.addEventListener('abort', onShutdown, { once: true });

  // grpc-js sends DEADLINE_EXCEEDED itself but tells the handler only via a later
  // 'cancelled'; a timer of our own stops the work on time.
  const d = call.getDeadline();
  const deadlineMs = d instanceof Date ? d.getTime() : d;
  let timer: NodeJS.Timeout | undefined;
  if (Number.isFinite(deadlineMs)) {
    timer = setTimeout(() => ac.abort(ABORT.deadline), Math.max(0, deadlineMs - Date.now()));
  }

  const caller = callerOf(call);
  const log = base.child({ method: name, peer: call.getPeer(), ...(caller.verified ? { caller: caller.identity } : {}) });
  // Issue 12: who changed what, one line per mutating call, whatever its outcome.
  const audited: Record<string, unknown> | undefined = accessOf(call.getPath()) === 'write' ? {} : undefined;
  const release = (status?: Partial<GrpcStatus> | null) => {
    call.removeListener('cancelled', onCancel);
    shutdown?.removeEventListener('abort', onShutdown);
    clearTimeout(timer);
    const outcome = status?.code === undefined || status.code === grpc.status.OK ? 'OK' : grpc.status[status.code];
    // On TLS the child logger already carries `caller`; a second one would repeat the key.
    if (audited) log.info({ ...audited, ...(caller.verified ? {} : { caller: caller.identity }), outcome }, 'audit');
  };
  const audit = (fields: Record<string, unknown>) => void (audited && Object.assign(audited, fields));
  return { ctx: { signal: ac.signal, log, audit }, release };
}

function flowControlled<Res>(
  call: grpc.ServerWritableStream<unknown, Res>,
  signal: AbortSignal,
): { writer: StreamWriter<Res>; sent: () => number } {
  let sent = 0;
  let waiting = false;
  const writer: StreamWriter<Res> = {
    write(msg) {
      if (signal.aborted) return Promise.reject(signal.reason);
      if (waiting) return Promise.reject(new CtmapError('internal', 'stream write while the previous write waits for drain'));
      sent++;
      if (call.write(msg)) return Promise.resolve();
      waiting = true;
      return new Promise<void>((resolve, reject) => {
        const settle = () => {
          waiting = false;
          call.removeListener('drain', onDrain);
          signal.removeEventListener('abort', onAbort);
        };
        const onDrain = () => {
          settle();
          resolve();
        };
        const onAbort = () => {
          settle();
          reject(signal.reason);
        };
        call.on('drain', onDrain);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    },
  };
  return { writer, sent: () => sent };
}
