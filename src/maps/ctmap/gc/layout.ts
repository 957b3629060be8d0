/**
 * Byte layouts of the in-kernel GC program's interface (bpf/ct_gc.h): the records area it
 * shares with ./kernel-deleter.ts through mmap, and its BPF_PROG_TEST_RUN ctx.
 * test/kernel/btf-layout.test.ts checks every size and offset here against the BTF of the
 * object compiled from that header, and DeleteMode / DeleteStatus (./types.ts) against its
 * enums ct_gc_mode / ct_gc_status.
 */
import type { StructLayout } from '../../layout';
import { CT_ENTRY, CT_KEY6 } from '../layout';

/** CT_GC_MAX_RECS: records per program run. */
export const CT_GC_MAX_RECS = 4096;

const KEYS_SIZE = CT_GC_MAX_RECS * CT_KEY6.size;

/**
 * struct ct_gc_area (96 pages): keys packed with the target map's key size as stride
 * (room for CT_GC_MAX_RECS of the larger, 38 bytes), then one mode byte (DeleteMode) and
 * one status byte (DeleteStatus) per record, then the deleted entries' values.
 */
export const CT_GC_AREA: StructLayout = {
  cName: 'ct_gc_area',
  size: CT_GC_MAX_RECS * (CT_KEY6.size + 2 + CT_ENTRY.size),
  fields: {
    keys: { offset: 0, size: KEYS_SIZE },
    mode: { offset: KEYS_SIZE, size: CT_GC_MAX_RECS },
    status: { offset: KEYS_SIZE + CT_GC_MAX_RECS, size: CT_GC_MAX_RECS },
    values: { offset: KEYS_SIZE + 2 * CT_GC_MAX_RECS, size: CT_GC_MAX_RECS * CT_ENTRY.size },
  },
};

/**
 * Members of struct ct_gc_args in C order, each 4 bytes: count, time and slot in; the
 * counts and the first failed delete's errno (first_err, negative) out.
 */
export const CT_GC_ARGS_MEMBERS = ['count', 'time', 'slot', 'deleted', 'missing', 'refreshed', 'failed', 'first_err'] as const;

/** struct ct_gc_args (32 bytes), the program's ctx. */
export const CT_GC_ARGS: StructLayout = {
  cName: 'ct_gc_args',
  size: CT_GC_ARGS_MEMBERS.length * 4,
  fields: Object.fromEntries(CT_GC_ARGS_MEMBERS.map((name, i) => [name, { offset: i * 4, size: 4 }])),
};
