/**
 * A larger kernel buffer for a pipe (F_SETPIPE_SZ, Linux): `ctmap ct list -o jsonl | ...`
 * writes hundreds of MiB, and Node writes to a pipe synchronously on Linux, so with the
 * default 64 KiB buffer the CLI stops at every 64 KiB until the reader has taken it, and
 * converting the next batch and the reader's work take turns instead of overlapping
 * (1 Mi entries: 3.0-3.3 s through a 64 KiB pipe, 2.4-2.5 s through a 1 MiB one). Node has
 * no API for it; fcntl(2) is bound in ./libc.ts, loaded lazily and only by the commands
 * that write that much.
 */
import * as fs from 'node:fs';

const F_SETPIPE_SZ = 1031;

/**
 * Asks for a buffer of `bytes` on the pipe `fd` (the kernel rounds up to pages and caps it
 * at /proc/sys/fs/pipe-max-size for unprivileged callers). Returns the size now in effect,
 * or undefined when `fd` is not a pipe or the call fails: best effort, never throws.
 */
export function growPipeBuffer(fd: number, bytes: number): number | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    if (!fs.fstatSync(fd).isFIFO()) return undefined;
    const { fcntlInt } = (require('./libc') as typeof import('./libc')).libcFunctions;
    const size = fcntlInt(fd, F_SETPIPE_SZ, bytes);
    return size > 0 ? size : undefined;
  } catch {
    return undefined;
  }
}
