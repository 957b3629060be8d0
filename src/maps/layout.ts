/**
 * How a C struct of bpf/ lies in memory, for the codecs that read and write it by offset.
 * Every StructLayout a module exports is compared with the BTF of the compiled object by
 * test/kernel/btf-layout.test.ts (Cilium's pkg/alignchecker habit), so a layout written
 * here cannot drift from its C header.
 */

export interface FieldLayout {
  readonly offset: number;
  readonly size: number;
}

export interface StructLayout {
  /** The C struct name in bpf/ctmap.h. */
  readonly cName: string;
  readonly size: number;
  /** C member name -> offset/size. */
  readonly fields: Readonly<Record<string, FieldLayout>>;
}
