/**
 * Byte layouts of Cilium's SNAT values (ctmap-facts §4). Keys are the CT tuples
 * (CT_KEY4 / CT_KEY6). Checked against bpf/ctmap.h by test/kernel/btf-layout.test.ts.
 * Padding members are left out: the codecs write into zeroed buffers.
 */
import type { StructLayout } from '../layout';

/** struct ipv4_nat_entry (40 bytes). */
export const NAT_ENTRY4: StructLayout = {
  cName: 'ipv4_nat_entry',
  size: 40,
  fields: {
    created: { offset: 0, size: 8 },
    needs_ct: { offset: 8, size: 8 },
    to_saddr: { offset: 32, size: 4 },
    /** big-endian */
    to_sport: { offset: 36, size: 2 },
  },
};

/** struct ipv6_nat_entry (56 bytes). */
export const NAT_ENTRY6: StructLayout = {
  cName: 'ipv6_nat_entry',
  size: 56,
  fields: {
    created: { offset: 0, size: 8 },
    needs_ct: { offset: 8, size: 8 },
    to_saddr: { offset: 32, size: 16 },
    /** big-endian */
    to_sport: { offset: 48, size: 2 },
  },
};
