/**
 * SNAT value codec, byte-exact with struct ipv4_nat_entry (40 B) and struct ipv6_nat_entry
 * (56 B) of bpf/ctmap.h (ctmap-facts §4). Every offset comes from layout.ts, which
 * test/kernel/btf-layout.test.ts checks against the compiled object's BTF.
 *
 * NAT keys are CT tuples: use encodeKey/decodeKey/validateKey of ../ctmap/codec.
 *
 * created and needs_ct are host-order u64; to_saddr is network-order bytes; to_sport is
 * big-endian in the map and a host number here. Padding is written as zeros.
 */
import { invalidArgument, quote } from '../../errors';
import { Family, addressFamily, formatAddress, writeAddress } from '../addr';
import { checkUint } from '../ctmap/codec';
import type { StructLayout } from '../layout';
import { NAT_ENTRY4, NAT_ENTRY6 } from './layout';

/** The value of one SNAT entry (proto NatEntry). */
export interface NatEntry {
  /** to_saddr: the translated address (OUT entries) or the original one (IN entries). */
  addr: string;
  /** to_sport in host order. */
  port: number;
  /** CT clock second the mapping was created. */
  created: bigint;
  /** needs_ct != 0. Encoded as 1 when true. */
  needsCt: boolean;
}

/** The value layout of the NAT map of `family` (struct ipv4_nat_entry / ipv6_nat_entry). */
export function natEntryLayout(family: Family): StructLayout {
  return family === 'ipv4' ? NAT_ENTRY4 : NAT_ENTRY6;
}

/**
 * `created` of the value at buf[off..] as a number (u64, exact below 2^53: CT clock
 * seconds), for hot paths that must not decode a whole entry. Same offset in both families.
 */
export function natEntryCreated(buf: Buffer, off: number): number {
  const at = off + NAT_ENTRY4.fields.created.offset;
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 0x1_0000_0000;
}

/** Value size of the NAT map of `family`: 40 (v4) or 56 (v6). */
export function natValueSize(family: Family): number {
  return natEntryLayout(family).size;
}

/**
 * Checks a NAT value from a request for a map of `family`. Throws INVALID_ARGUMENT naming
 * `<field>.addr` (not an address, or of the other family), `<field>.port` (not in
 * 0..65535) or `<field>.created` (not a u64), the proto field names of NatEntry.
 */
export function validateNatEntry(family: Family, entry: Partial<NatEntry> | undefined | null, field: string): void {
  if (!entry) throw invalidArgument(field, 'is required');
  const af = addressFamily(entry.addr ?? '');
  if (!af) throw invalidArgument(`${field}.addr`, `not an IP address: ${quote(entry.addr)}`);
  if (af !== family) throw invalidArgument(`${field}.addr`, `${af} address in the ${family} NAT map`);
  checkUint(entry.port ?? 0, 0xffff, `${field}.port`);
  const created = entry.created ?? 0n;
  if (typeof created !== 'bigint' || created < 0n || created > 0xffffffffffffffffn) {
    throw invalidArgument(`${field}.created`, 'must fit in 64 bits unsigned');
  }
}

/** Writes a validated entry of `family` at buf[off..off+natValueSize(family)), padding zeroed. */
export function encodeNatEntry(family: Family, e: NatEntry, buf: Buffer, off = 0): void {
  const L = natEntryLayout(family);
  const F = L.fields;
  buf.fill(0, off, off + L.size);
  buf.writeBigUInt64LE(e.created, off + F.created.offset);
  buf.writeBigUInt64LE(e.needsCt ? 1n : 0n, off + F.needs_ct.offset);
  writeAddress(family, e.addr, buf, off + F.to_saddr.offset);
  buf.writeUInt16BE(e.port, off + F.to_sport.offset);
}

/** Reads the value of `family` at buf[off..]; any non-zero needs_ct reads as true. */
export function decodeNatEntry(family: Family, buf: Buffer, off = 0): NatEntry {
  const F = natEntryLayout(family).fields;
  return {
    addr: formatAddress(family, buf, off + F.to_saddr.offset),
    port: buf.readUInt16BE(off + F.to_sport.offset),
    created: buf.readBigUInt64LE(off + F.created.offset),
    needsCt: buf.readBigUInt64LE(off + F.needs_ct.offset) !== 0n,
  };
}

/** Offset and size of to_saddr in a value of `family`, for raw-byte readers that skip decoding. */
export function natAddrField(family: Family): { offset: number; size: number } {
  return natEntryLayout(family).fields.to_saddr;
}
