/**
 * Hand-made protobuf wire bytes for tests of request decoding: fields with the wire type,
 * varint width and payload a test chooses (over-long varints, a known field number with
 * another wire type, groups), and the reference parser to compare with: protoc --decode,
 * when protoc is installed.
 */
import { execFileSync, spawnSync } from 'node:child_process';

export const WIRE = { VARINT: 0, I64: 1, LEN: 2, SGROUP: 3, EGROUP: 4, I32: 5 } as const;

/** A varint of `value` (two's complement for negatives), padded to `width` bytes when given. */
export function varint(value: number | bigint, width?: number): Buffer {
  let v = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  do {
    out.push(Number(v & 0x7fn));
    v >>= 7n;
  } while (v > 0n);
  while (width !== undefined && out.length < width) out.push(0);
  for (let i = 0; i < out.length - 1; i++) out[i] |= 0x80;
  return Buffer.from(out);
}

export function tag(field: number, wire: number, width?: number): Buffer {
  return varint((field << 3) | wire, width);
}

/** A varint field; `width` pads the value to that many bytes. */
export function vfield(field: number, value: number | bigint, width?: number): Buffer {
  return Buffer.concat([tag(field, WIRE.VARINT), varint(value, width)]);
}

/** A length-delimited field (string, bytes or message) of `parts`. */
export function lfield(field: number, ...parts: Array<Buffer | string>): Buffer {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
  return Buffer.concat([tag(field, WIRE.LEN), varint(body.length), body]);
}

export function fixed32(field: number, value: number): Buffer {
  const v = Buffer.alloc(4);
  v.writeUInt32LE(value >>> 0);
  return Buffer.concat([tag(field, WIRE.I32), v]);
}

export function fixed64(field: number, value: bigint): Buffer {
  const v = Buffer.alloc(8);
  v.writeBigUInt64LE(BigInt.asUintN(64, value));
  return Buffer.concat([tag(field, WIRE.I64), v]);
}

/** A group (wire types 3 and 4) around `body`. */
export function group(field: number, body: Buffer): Buffer {
  return Buffer.concat([tag(field, WIRE.SGROUP), body, tag(field, WIRE.EGROUP)]);
}

export const hasProtoc = (): boolean => spawnSync('protoc', ['--version']).status === 0;

/**
 * How the reference parser reads `bytes` as message `type` of `file` (protoc --decode):
 * its text format, or undefined when it refuses the bytes.
 */
export function protocDecode(includeDir: string, file: string, type: string, bytes: Uint8Array): string | undefined {
  try {
    return execFileSync('protoc', [`-I${includeDir}`, `--decode=${type}`, file], { input: bytes, stdio: ['pipe', 'pipe', 'ignore'] }).toString();
  } catch {
    return undefined;
  }
}

/** protoc's text format without the unknown fields (`7: 1`, `7 { ... }`), which a decoder drops. */
export function knownFieldsOnly(text: string): string {
  const out: string[] = [];
  let skipping = -1;
  for (const line of text.split('\n')) {
    const indent = line.length - line.trimStart().length;
    const t = line.trim();
    if (skipping >= 0) {
      if (t === '}' && indent === skipping) skipping = -1;
      continue;
    }
    if (/^\d+ \{$/.test(t)) skipping = indent;
    else if (!/^\d+: /.test(t)) out.push(line);
  }
  return out.join('\n');
}
