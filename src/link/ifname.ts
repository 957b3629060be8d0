/**
 * Interface names <-> indexes (libc if_nametoindex / if_indextoname), in the network
 * namespace of the calling thread.
 */
import { native } from '../sys/native';

/** if_nametoindex in this thread's network namespace; undefined for no such device. */
export function ifNameToIndex(name: string): number | undefined {
  if (name.length === 0 || name.length > 15 || name.includes('\0')) return undefined;
  const index = native.ifNameToIndex(name);
  return index === 0 ? undefined : index;
}

/** if_indextoname in this thread's network namespace; undefined for no such device. */
export function ifIndexToName(index: number): string | undefined {
  // IF_NAMESIZE; the returned string is a copy of what libc wrote into buf.
  const name = native.ifIndexToName(index, Buffer.alloc(16));
  return name === null ? undefined : name;
}
