/**
 * Logging: pino, one JSON object per line by default. Errors always go under `err`, with
 * their `cause` chain serialised as nested objects (CtmapError keeps the errno-level cause
 * there), so the cause is in the log even though it is never sent to a client.
 */
import pino from 'pino';
import type { LogFormat, LogLevel } from '../config/config';

export type Logger = pino.Logger;

/** Where log lines go: anything with write(line). pino.destination(1) by default. */
export type LogDestination = pino.DestinationStream;

/**
 * A root logger at `level` writing to `destination` (stdout, synchronously, by default so
 * nothing is lost on exit). `pretty` renders each record as one human-readable line
 * without extra dependencies; use it for a terminal, not for log shipping.
 */
export function createLogger(level: LogLevel, destination?: LogDestination, format: LogFormat = 'json'): Logger {
  const dest = destination ?? pino.destination(1);
  return pino(
    {
      level,
      timestamp: pino.stdTimeFunctions.isoTime,
      serializers: { err: pino.stdSerializers.errWithCause },
    },
    format === 'pretty' ? prettyStream(dest) : dest,
  );
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const HIDDEN = new Set(['level', 'time', 'msg', 'pid', 'hostname']);

function prettyStream(dest: LogDestination): LogDestination {
  return { write: (line: string) => dest.write(prettyLine(line)) };
}

/** `<time> <LEVEL> <msg> key=value ...`, then an error's stack indented below. */
function prettyLine(line: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line; // not ours to reformat
  }
  const parts = [String(rec.time ?? ''), LEVEL_NAMES[rec.level as number] ?? String(rec.level), String(rec.msg ?? '')];
  let stack = '';
  for (const [k, v] of Object.entries(rec)) {
    if (HIDDEN.has(k)) continue;
    if (k === 'err' && v !== null && typeof v === 'object') {
      const e = v as { message?: unknown; stack?: unknown };
      parts.push(`err=${JSON.stringify(e.message ?? '')}`);
      if (typeof e.stack === 'string') stack = `\n    ${e.stack.replace(/\n/g, '\n    ')}`;
      continue;
    }
    parts.push(`${k}=${JSON.stringify(v) ?? String(v)}`);
  }
  return `${parts.join(' ')}${stack}\n`;
}
