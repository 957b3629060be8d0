/**
 * Owned file descriptors: every fd the native layer opens is an Fd, closed exactly once
 * (cilium/ebpf's habit), and counted so that tests can report a leak.
 */
import { BpfSyscallError, Errno } from './errors';
import { native } from './native';

let openFds = 0;

/** Number of fds opened through this module and not yet closed (leak checks in tests). */
export function openFdCount(): number {
  return openFds;
}

/** An owned file descriptor. close() is idempotent; using a closed Fd throws. */
export class Fd {
  #fd: number;

  constructor(fd: number, readonly what: string) {
    this.#fd = fd;
    openFds++;
  }

  get value(): number {
    if (this.#fd < 0) throw new BpfSyscallError(`${this.what}: use after close`, Errno.EBADF);
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  close(): void {
    if (this.#fd < 0) return;
    native.close(this.#fd);
    this.#fd = -1;
    openFds--;
  }
}
