/**
 * SO_PEERCRED: who is on the other end of a unix socket (Linux). Node has no API for it,
 * so getsockopt(2) is bound in ./libc.ts, which loads libc alone (not libbpf.so.1, which
 * ./native.ts loads too): peer credentials are wanted where libbpf is absent as well (the
 * memory backend). Loaded lazily: where libc cannot be loaded, there are no credentials.
 */
import { endianness } from 'node:os';

/** The connecting process as the kernel recorded it at connect(2) (struct ucred). */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

const SOL_SOCKET = 1;
// asm-generic value; alpha, mips, parisc, powerpc and sparc number it differently.
const SO_PEERCRED = 17;
const GENERIC_ARCHES: ReadonlySet<string> = new Set(['x64', 'arm64', 'arm', 'ia32', 'riscv64', 'loong64', 's390x']);
const UCRED_SIZE = 12; // pid_t, uid_t, gid_t

let getsockopt: (typeof import('./libc'))['libcFunctions']['getsockopt'] | undefined;

/**
 * The peer credentials of the connected unix socket `fd`, or undefined where the platform
 * does not give them (not Linux, an architecture with another SO_PEERCRED, libc not
 * loadable, getsockopt failing). Never throws. One syscall.
 */
export function peerCredentials(fd: number): PeerCredentials | undefined {
  if (process.platform !== 'linux' || !GENERIC_ARCHES.has(process.arch)) return undefined;
  try {
    getsockopt ??= (require('./libc') as typeof import('./libc')).libcFunctions.getsockopt;
    const value = Buffer.alloc(UCRED_SIZE);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(UCRED_SIZE);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, value, len) !== 0) return undefined;
    const read = (off: number) => (endianness() === 'LE' ? value.readUInt32LE(off) : value.readUInt32BE(off));
    return { pid: read(0), uid: read(4), gid: read(8) };
  } catch {
    return undefined;
  }
}
