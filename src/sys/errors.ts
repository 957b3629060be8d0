import { CtmapError, ErrorCode } from '../errors';

/** errno values the map layer distinguishes (x86_64 / generic Linux numbering). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  ENOSPC: 28,
  EOPNOTSUPP: 95,
  ENOTSUPP: 524, // kernel-internal "not supported", leaks out of some bpf() commands
} as const;

const errnoNames = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));

/**
 * A failed bpf() operation. Keeps the errno (cilium/ebpf habit: sentinels that keep the
 * errno) and maps it to a CtmapError code:
 * ENOENT -> not-found, EEXIST -> already-exists, E2BIG/ENOSPC/ENOMEM -> resource-exhausted,
 * EPERM/EACCES -> permission-denied, EOPNOTSUPP/ENOTSUPP -> failed-precondition.
 */
export class BpfSyscallError extends CtmapError {
  override name = 'BpfSyscallError';

  constructor(
    readonly op: string,
    readonly errno: number,
    hint?: string,
  ) {
    super(codeForErrno(errno), `${op}: ${errnoNames.get(errno) ?? `errno ${errno}`}${hint ? ` (${hint})` : ''}`);
  }
}

function codeForErrno(errno: number): ErrorCode {
  switch (errno) {
    case Errno.ENOENT:
      return 'not-found';
    case Errno.EEXIST:
      return 'already-exists';
    case Errno.E2BIG:
    case Errno.ENOSPC:
    case Errno.ENOMEM:
      return 'resource-exhausted';
    case Errno.EPERM:
    case Errno.EACCES:
      return 'permission-denied';
    case Errno.EOPNOTSUPP:
    case Errno.ENOTSUPP:
    // Request input is validated before it reaches bpf(); an EINVAL from the kernel means
    // the map or kernel cannot do what was asked (wrong map type, unsupported flag).
    case Errno.EINVAL:
      return 'failed-precondition';
    default:
      return 'internal';
  }
}

export function isErrno(err: unknown, errno: number): boolean {
  return err instanceof BpfSyscallError && err.errno === errno;
}

/**
 * A batch write that failed part way: `processed` entries were done before the failure.
 * Lives here (not in index.ts) so the memory backend can throw the same class without
 * importing the koffi bindings.
 */
export class BatchError extends BpfSyscallError {
  override name = 'BatchError';
  constructor(op: string, errno: number, readonly processed: number) {
    super(op, errno, `after ${processed} entries`);
  }
}

/**
 * The one errno check of the native layer: libbpf >= 1.0 returns -errno from its
 * int-returning calls. Returns `ret` when it is not negative, else throws
 * BpfSyscallError(op, -ret, hint).
 */
export function check(op: string, ret: number, hint?: string): number {
  if (ret < 0) throw new BpfSyscallError(op, -ret, hint);
  return ret;
}
