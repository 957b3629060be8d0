/**
 * CT key and entry codecs, byte-exact with Cilium's struct ipv{4,6}_ct_tuple and struct
 * ct_entry (ctmap-facts §2-3; offsets in layout.ts, checked against BTF by
 * test/kernel/btf-layout.test.ts).
 *
 * The key's fields are the raw BPF fields by their names: Cilium stores addresses swapped
 * relative to the packet (daddr holds the flow's source), ports not (issue #5848). Ports,
 * rev_nat and nat_port are big-endian in the map and host numbers here.
 */
import { invalidArgument, quote } from '../../errors';
import { Family, addressFamily, formatAddress, writeAddress } from '../addr';
import { CT_ENTRY, CT_ENTRY_BACKEND_ID_OFFSET, CT_ENTRY_FLAG_NAMES, CT_KEY4, CT_KEY6 } from './layout';
import { StructLayout } from '../layout';

export interface CtKey {
  daddr: string;
  saddr: string;
  dport: number;
  sport: number;
  nexthdr: number;
  flags: number;
}

export interface CtEntry {
  packets: bigint;
  bytes: bigint;
  lifetime: number;
  flags: number;
  revNat: number;
  natPort: number;
  txFlagsSeen: number;
  rxFlagsSeen: number;
  sourceSecurityId: number;
  lastTxReport: number;
  lastRxReport: number;
  /** Service entries: union0 bytes 8..16 (little-endian u64). */
  backendId: bigint;
  /** The 16 raw bytes of the union (nat_addr for egress entries, {reserved, backend_id} for services). */
  union0: Buffer;
}

export const CT_ENTRY_SIZE = CT_ENTRY.size;

export function keyLayout(family: Family): StructLayout {
  return family === 'ipv4' ? CT_KEY4 : CT_KEY6;
}

export function keySize(family: Family): number {
  return keyLayout(family).size;
}

const K4 = CT_KEY4.fields;
const K6 = CT_KEY6.fields;
const E = CT_ENTRY.fields;

/**
 * Checks a key from a request and returns its family. Throws INVALID_ARGUMENT naming
 * `<field>.<member>` for a malformed address, mixed families, or an out-of-range number.
 */
export function validateKey(key: CtKey | undefined | null, field: string): Family {
  if (!key) throw invalidArgument(field, 'is required');
  const df = addressFamily(key.daddr ?? '');
  if (!df) throw invalidArgument(`${field}.daddr`, `not an IP address: ${quote(key.daddr)}`);
  const sf = addressFamily(key.saddr ?? '');
  if (!sf) throw invalidArgument(`${field}.saddr`, `not an IP address: ${quote(key.saddr)}`);
  if (df !== sf) throw invalidArgument(`${field}.saddr`, `address family ${sf} differs from daddr's ${df}`);
  checkUint(key.dport, 0xffff, `${field}.dport`);
  checkUint(key.sport, 0xffff, `${field}.sport`);
  checkUint(key.nexthdr, 0xff, `${field}.nexthdr`);
  checkUint(key.flags, 0xff, `${field}.flags`);
  return df;
}

export function checkUint(value: unknown, max: number, field: string): void {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > max) throw invalidArgument(field, `must be an integer in 0..${max}, got ${quote(value)}`);
}

/** Checks an entry from a request (numeric ranges, union0 length). */
export function validateEntry(entry: Partial<CtEntry> | undefined | null, field: string): void {
  if (!entry) throw invalidArgument(field, 'is required');
  checkUint(entry.lifetime ?? 0, 0xffffffff, `${field}.lifetime`);
  checkUint(entry.flags ?? 0, 0xffff, `${field}.flags`);
  checkUint(entry.revNat ?? 0, 0xffff, `${field}.rev_nat`);
  checkUint(entry.natPort ?? 0, 0xffff, `${field}.nat_port`);
  checkUint(entry.txFlagsSeen ?? 0, 0xff, `${field}.tx_flags_seen`);
  checkUint(entry.rxFlagsSeen ?? 0, 0xff, `${field}.rx_flags_seen`);
  checkUint(entry.sourceSecurityId ?? 0, 0xffffffff, `${field}.source_security_id`);
  checkUint(entry.lastTxReport ?? 0, 0xffffffff, `${field}.last_tx_report`);
  checkUint(entry.lastRxReport ?? 0, 0xffffffff, `${field}.last_rx_report`);
  checkU64(entry.packets ?? 0n, `${field}.packets`);
  checkU64(entry.bytes ?? 0n, `${field}.bytes`);
  checkU64(entry.backendId ?? 0n, `${field}.backend_id`);
  const u = entry.union0;
  if (u && u.length !== 0 && u.length !== 16) throw invalidArgument(`${field}.union0`, `must be empty or 16 bytes, got ${u.length}`);
}

function checkU64(v: bigint, field: string): void {
  if (v < 0n || v > 0xffffffffffffffffn) throw invalidArgument(field, 'must fit in 64 bits unsigned');
}

/** Writes a validated key of `family` at buf[off..off+keySize). */
export function encodeKey(family: Family, key: CtKey, buf: Buffer, off = 0): void {
  const L = family === 'ipv4' ? K4 : K6;
  writeAddress(family, key.daddr, buf, off + L.daddr.offset);
  writeAddress(family, key.saddr, buf, off + L.saddr.offset);
  buf.writeUInt16BE(key.dport, off + L.dport.offset);
  buf.writeUInt16BE(key.sport, off + L.sport.offset);
  buf[off + L.nexthdr.offset] = key.nexthdr;
  buf[off + L.flags.offset] = key.flags;
}

export function decodeKey(family: Family, buf: Buffer, off = 0): CtKey {
  const L = family === 'ipv4' ? K4 : K6;
  return {
    daddr: formatAddress(family, buf, off + L.daddr.offset),
    saddr: formatAddress(family, buf, off + L.saddr.offset),
    dport: buf.readUInt16BE(off + L.dport.offset),
    sport: buf.readUInt16BE(off + L.sport.offset),
    nexthdr: buf[off + L.nexthdr.offset],
    flags: buf[off + L.flags.offset],
  };
}

/**
 * Writes an entry at buf[off..off+56). union0 is taken as given (16 bytes, or zeros);
 * a non-zero backendId then overrides union0's bytes 8..16, since it is the service view
 * of the same bytes.
 */
export function encodeEntry(e: Partial<CtEntry>, buf: Buffer, off = 0): void {
  buf.fill(0, off, off + CT_ENTRY.size);
  if (e.union0 && e.union0.length === 16) e.union0.copy(buf, off + E.union0.offset);
  if (e.backendId) buf.writeBigUInt64LE(e.backendId, off + E.union0.offset + CT_ENTRY_BACKEND_ID_OFFSET);
  buf.writeBigUInt64LE(e.packets ?? 0n, off + E.packets.offset);
  buf.writeBigUInt64LE(e.bytes ?? 0n, off + E.bytes.offset);
  buf.writeUInt32LE(e.lifetime ?? 0, off + E.lifetime.offset);
  buf.writeUInt16LE(e.flags ?? 0, off + E.flags.offset);
  buf.writeUInt16BE(e.revNat ?? 0, off + E.rev_nat_index.offset);
  buf.writeUInt16BE(e.natPort ?? 0, off + E.nat_port.offset);
  buf[off + E.tx_flags_seen.offset] = e.txFlagsSeen ?? 0;
  buf[off + E.rx_flags_seen.offset] = e.rxFlagsSeen ?? 0;
  buf.writeUInt32LE(e.sourceSecurityId ?? 0, off + E.src_sec_id.offset);
  buf.writeUInt32LE(e.lastTxReport ?? 0, off + E.last_tx_report.offset);
  buf.writeUInt32LE(e.lastRxReport ?? 0, off + E.last_rx_report.offset);
}

export function decodeEntry(buf: Buffer, off = 0): CtEntry {
  return {
    union0: Buffer.from(buf.subarray(off + E.union0.offset, off + E.union0.offset + 16)),
    backendId: buf.readBigUInt64LE(off + E.union0.offset + CT_ENTRY_BACKEND_ID_OFFSET),
    packets: buf.readBigUInt64LE(off + E.packets.offset),
    bytes: buf.readBigUInt64LE(off + E.bytes.offset),
    lifetime: buf.readUInt32LE(off + E.lifetime.offset),
    flags: buf.readUInt16LE(off + E.flags.offset),
    revNat: buf.readUInt16BE(off + E.rev_nat_index.offset),
    natPort: buf.readUInt16BE(off + E.nat_port.offset),
    txFlagsSeen: buf[off + E.tx_flags_seen.offset],
    rxFlagsSeen: buf[off + E.rx_flags_seen.offset],
    sourceSecurityId: buf.readUInt32LE(off + E.src_sec_id.offset),
    lastTxReport: buf.readUInt32LE(off + E.last_tx_report.offset),
    lastRxReport: buf.readUInt32LE(off + E.last_rx_report.offset),
  };
}

/** Raw field readers for hot paths (filters, formatters) that must not decode a whole entry. */
export function entryLifetime(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + E.lifetime.offset);
}

/** Names of the set bits of ct_entry.flags, in bit order. */
export function entryFlagNames(flags: number): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < CT_ENTRY_FLAG_NAMES.length; bit++) if (flags & (1 << bit)) names.push(CT_ENTRY_FLAG_NAMES[bit]);
  return names;
}
