/**
 * flock(2) on a directory, and who holds one: what makes one daemon the owner of a
 * bpf-root (src/maps/root-lock.ts, issue 12 item 4).
 *
 * flock, not fcntl: a POSIX or OFD write lock needs a file opened for writing, and a
 * directory cannot be; flock takes an exclusive lock on any open file, directories on
 * bpffs included (bpffs has no ->flock of its own, so the VFS's generic locks apply).
 * The lock belongs to the open file description: a second open() of the same directory,
 * in this process or another, cannot take it while the first is open, and the kernel drops
 * it when the last fd of that description closes, at the latest when the process dies.
 * The fd is opened close-on-exec (libuv always does), so children never hold it.
 */
import * as fs from 'node:fs';
import { BpfSyscallError, Errno } from './errors';
import { lastErrno, native } from './native';

const LOCK_EX = 2;
const LOCK_NB = 4;

/** An exclusive flock held on an open directory. release() is idempotent. */
export class DirLock {
  #fd: number;

  constructor(
    fd: number,
    readonly path: string,
  ) {
    this.#fd = fd;
  }

  get held(): boolean {
    return this.#fd >= 0;
  }

  /** Closes the directory, which drops the lock. */
  release(): void {
    if (this.#fd < 0) return;
    fs.closeSync(this.#fd);
    this.#fd = -1;
  }
}

/**
 * Opens the directory `dir` and takes an exclusive flock on it without waiting. Returns
 * the lock, or undefined when another open file description holds a flock on it (another
 * process, or another DirLock in this one). Throws what open(2) throws (ENOENT, ENOTDIR,
 * EACCES) and BpfSyscallError for any other flock failure.
 */
export function tryLockDir(dir: string): DirLock | undefined {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  if (native.flock(fd, LOCK_EX | LOCK_NB) === 0) return new DirLock(fd, dir);
  const errno = lastErrno();
  fs.closeSync(fd);
  if (errno === Errno.EAGAIN) return undefined; // EWOULDBLOCK
  throw new BpfSyscallError(`flock ${dir}`, errno);
}

// One line of /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 00:27:170834 0 EOF"; lines of
// blocked waiters have "->" after the number and are not matched.
const FLOCK_LINE = /^\d+:\s+FLOCK\s+\S+\s+WRITE\s+(\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s/;

/**
 * The pids holding an exclusive flock on the file or directory at `p`, from /proc/locks
 * (which names each lock's device and inode). Only holders visible in this process's pid
 * namespace are listed (the kernel leaves the others out), so an empty answer means
 * "held by no process this one can see". Returns [] when /proc/locks cannot be read.
 */
export function flockHolders(p: string): number[] {
  const st = fs.statSync(p, { bigint: true });
  // glibc's dev_t encoding (gnu_dev_major / gnu_dev_minor).
  const major = ((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn);
  const minor = (st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn);
  let text: string;
  try {
    text = fs.readFileSync('/proc/locks', 'latin1');
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const line of text.split('\n')) {
    const m = FLOCK_LINE.exec(line);
    if (m && BigInt(`0x${m[2]}`) === major && BigInt(`0x${m[3]}`) === minor && BigInt(m[4]) === st.ino) pids.push(Number(m[1]));
  }
  return pids;
}
