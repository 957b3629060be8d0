/**
 * The one error type of ctmapd. Every layer throws a CtmapError (or a subclass) with a
 * code; the gRPC boundary (src/server/call-boundary.ts) is the only place that turns the code into
 * a gRPC status. The `cause` is logged there, never sent to the client.
 */

export type ErrorCode =
  | 'invalid-argument' // malformed input; `field` names the offending request field
  | 'not-found' // absent key, map or cluster
  | 'already-exists'
  | 'resource-exhausted' // map full
  | 'failed-precondition' // the kernel or backend cannot do this operation
  | 'permission-denied'
  | 'unavailable' // shutting down
  | 'deadline-exceeded' // the call's deadline passed (the server's own timer saw it first)
  | 'internal';

export class CtmapError extends Error {
  override name = 'CtmapError';

  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; field?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.field = options?.field;
  }

  /** Request field the error is about (INVALID_ARGUMENT), e.g. "records[3].key.dport". */
  readonly field?: string;

  /** Normalises anything caught into a CtmapError; unknown errors become `internal`. */
  static from(err: unknown): CtmapError {
    if (err instanceof CtmapError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new CtmapError('internal', message, { cause: err });
  }
}

/**
 * A command line that cannot run (exitCode 2; `field` = the flag, e.g. "--dev") or a
 * request for help (exitCode 0; the message is the help text for stdout). The daemon's
 * flags and the ctmap CLI both throw it; their entry points print and exit.
 */
export class UsageError extends CtmapError {
  override name = 'UsageError';
  constructor(
    message: string,
    readonly exitCode: 0 | 2,
    flag?: string,
  ) {
    super('invalid-argument', message, { field: flag });
  }
}

/** INVALID_ARGUMENT naming the field: "<field>: <problem>". */
export function invalidArgument(field: string, problem: string): CtmapError {
  return new CtmapError('invalid-argument', `${field}: ${problem}`, { field });
}

/**
 * `value` as an error message quotes it: the JSON of its first `max` characters, and when
 * that is not all of it, "…" and how long the whole was (`"badxxx…" (9000 characters)`).
 * Messages go back to clients as status details, which travel as size-limited metadata,
 * so a value from a request is never echoed whole (issue 12, defect 9). Non-strings are
 * shown as their JSON (or String()), cut the same way.
 */
export function quote(value: unknown, max = 64): string {
  if (typeof value === 'string') {
    return value.length <= max ? JSON.stringify(value) : `${JSON.stringify(value.slice(0, max))}… (${value.length} characters)`;
  }
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    // a bigint or a cycle
  }
  text ??= String(value);
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} characters)`;
}

export function notFound(message: string): CtmapError {
  return new CtmapError('not-found', message);
}

/** Most UTF-8 bytes of status details sent; longer ones are cut (capBytes). */
export const MAX_DETAILS_BYTES = 1024;

/**
 * `text` cut to at most `maxBytes` UTF-8 bytes at a character boundary, with "…" at the
 * end when cut: the backstop that keeps a status message within what a default client
 * accepts as metadata (issue 12, defect 9).
 */
export function capBytes(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text) <= maxBytes) return text;
  const mark = '…';
  let room = maxBytes - Buffer.byteLength(mark);
  let end = 0;
  for (const ch of text) {
    room -= Buffer.byteLength(ch);
    if (room < 0) break;
    end += ch.length;
  }
  return text.slice(0, end) + mark;
}
