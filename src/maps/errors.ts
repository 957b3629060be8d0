/**
 * The map layer's error vocabulary: what a BpfMap of either backend throws, as the kernel
 * would say it. Both backends (and everything above them) throw and test these, so the
 * memory backend answers exactly like the kernel without loading libbpf:
 * - BpfSyscallError keeps the errno (ENOENT -> not-found, EEXIST -> already-exists,
 *   E2BIG/ENOSPC/ENOMEM -> resource-exhausted, EPERM/EACCES -> permission-denied,
 *   EINVAL/EOPNOTSUPP -> failed-precondition);
 * - BatchError is a batch write or delete that failed part way, with how many entries
 *   were done before it;
 * - isErrno(err, Errno.X) tells them apart.
 * The classes themselves live in the native layer (src/sys/errors.ts), which throws them.
 */
export { BatchError, BpfSyscallError, Errno, isErrno } from '../sys/errors';
