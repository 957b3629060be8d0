/**
 * IP address text <-> network-order bytes, without allocation on the write path.
 * Formatting follows RFC 5952 (lowercase, longest zero run compressed) so that dumps match
 * what `ip`, Go's netip and Cilium print.
 */
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 'ipv4' | 'ipv6';

/** Family of an address string, or undefined when it is not a valid IP address. */
export function addressFamily(text: string): Family | undefined {
  if (isIPv4(text)) return 'ipv4';
  if (isIPv6(text) && !text.includes('%')) return 'ipv6';
  return undefined;
}

/** Writes a valid IPv4 address (dotted quad) at buf[off..off+4). */
export function writeIPv4(text: string, buf: Buffer, off: number): void {
  const parts = text.split('.');
  for (let i = 0; i < 4; i++) buf[off + i] = Number(parts[i]);
}

/** Writes a valid IPv6 address (any RFC 4291 text form, incl. embedded IPv4) at buf[off..off+16). */
export function writeIPv6(text: string, buf: Buffer, off: number): void {
  buf.fill(0, off, off + 16);
  let head = text;
  let tail = '';
  const gap = text.indexOf('::');
  if (gap >= 0) {
    head = text.slice(0, gap);
    tail = text.slice(gap + 2);
  }
  const groups = (s: string): number[] => {
    if (s === '') return [];
    const out: number[] = [];
    for (const g of s.split(':')) {
      if (g.includes('.')) {
        const b = g.split('.').map(Number);
        out.push((b[0] << 8) | b[1], (b[2] << 8) | b[3]);
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const h = groups(head);
  const t = groups(tail);
  h.forEach((g, i) => buf.writeUInt16BE(g, off + i * 2));
  t.forEach((g, i) => buf.writeUInt16BE(g, off + 16 - (t.length - i) * 2));
}

export function formatIPv4(buf: Buffer, off: number): string {
  return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
}

export function formatIPv6(buf: Buffer, off: number): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(buf.readUInt16BE(off + i * 2));
  // IPv4-mapped addresses print with a dotted tail, as Go and glibc do.
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${formatIPv4(buf, off + 12)}`;
  }
  let bestStart = -1;
  let bestLen = 1; // a single zero group is not compressed (RFC 5952 §4.2.2)
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: number[]): string => a.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

export function formatAddress(family: Family, buf: Buffer, off: number): string {
  return family === 'ipv4' ? formatIPv4(buf, off) : formatIPv6(buf, off);
}

export function writeAddress(family: Family, text: string, buf: Buffer, off: number): void {
  if (family === 'ipv4') writeIPv4(text, buf, off);
  else writeIPv6(text, buf, off);
}

/** Parses a valid address of either family into a new buffer (4 or 16 bytes). */
export function addressBytes(text: string): { family: Family; bytes: Buffer } | undefined {
  const family = addressFamily(text);
  if (!family) return undefined;
  const bytes = Buffer.alloc(family === 'ipv4' ? 4 : 16);
  writeAddress(family, text, bytes, 0);
  return { family, bytes };
}
