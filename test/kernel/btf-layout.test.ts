/**
 * The TS codecs address CT and NAT records only through the StructLayouts; this test proves
 * those offsets equal what clang laid out for bpf/ctmap.h, read back from the BTF of
 * bpf/.output/ctmap_layout.bpf.o (as Cilium's pkg/alignchecker does for its Go types).
 * Needs bpftool and a built object (`make -C bpf`); it fails rather than skips without them,
 * since an unchecked layout is exactly the bug it exists to catch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import * as ctLayout from '../../src/maps/ctmap/layout';
import type { StructLayout } from '../../src/maps/layout';
import * as natLayout from '../../src/maps/nat/layout';
import { structLayoutFromBtf } from '../helpers/btf';

/** Compiled to dist/test/kernel/, three levels below the repo root. */
const REPO_ROOT = path.resolve(__dirname, '../../..');
const OBJ = path.join(REPO_ROOT, 'bpf/.output/ctmap_layout.bpf.o');
const HEADER = path.join(REPO_ROOT, 'bpf/ctmap.h');

function isStructLayout(v: unknown): v is StructLayout {
  const o = v as Partial<StructLayout> | null;
  return (
    typeof o === 'object' && o !== null && typeof o.cName === 'string' &&
    typeof o.size === 'number' && typeof o.fields === 'object'
  );
}

/** Every exported layout, so one added later is checked without touching this test. */
const LAYOUTS = [...Object.values(ctLayout), ...Object.values(natLayout)].filter(isStructLayout);

/** C bitfield member of each ct_entry flag; typed so a new TS flag needs an entry here. */
const FLAG_MEMBER: Record<(typeof ctLayout.CT_ENTRY_FLAG_NAMES)[number], string> = {
  RxClosing: 'rx_closing',
  TxClosing: 'tx_closing',
  Nat64: 'nat64',
  LBLoopback: 'lb_loopback',
  SeenNonSyn: 'seen_non_syn',
  NodePort: 'node_port',
  ProxyRedirect: 'proxy_redirect',
  DSRInternal: 'dsr_internal',
  FromL7LB: 'from_l7lb',
  Reserved1: 'reserved1',
  FromTunnel: 'from_tunnel',
};

test('every expected layout is exported', () => {
  const names = LAYOUTS.map((l) => l.cName).sort();
  assert.deepEqual(names, [
    'ct_datapath_config',
    'ct_datapath_stats',
    'ct_entry',
    'ipv4_ct_tuple',
    'ipv4_nat_entry',
    'ipv6_ct_tuple',
    'ipv6_nat_entry',
  ]);
});

test('every struct in bpf/ctmap.h has a TS layout', () => {
  // A struct added to the header without a layout would go unchecked.
  const declared = [...fs.readFileSync(HEADER, 'utf8').matchAll(/^struct (\w+) \{/gm)].map((m) => m[1]).sort();
  assert.deepEqual(declared, LAYOUTS.map((l) => l.cName).sort());
});

for (const layout of LAYOUTS) {
  test(`struct ${layout.cName} matches BTF`, () => {
    const btf = structLayoutFromBtf(OBJ, layout.cName);
    assert.equal(btf.size, layout.size, `sizeof(struct ${layout.cName})`);
    for (const [name, want] of Object.entries(layout.fields)) {
      const got = btf.fields[name];
      assert.ok(got, `struct ${layout.cName} has no member ${name} in BTF`);
      assert.deepEqual(
        { offset: got.offset, size: got.size },
        { offset: want.offset, size: want.size },
        `${layout.cName}.${name}`,
      );
    }
  });
}

test('ct_entry flag bits match the C bitfields', () => {
  const btf = structLayoutFromBtf(OBJ, ctLayout.CT_ENTRY.cName);
  const wordBits = ctLayout.CT_ENTRY.fields.flags.offset * 8;
  ctLayout.CT_ENTRY_FLAG_NAMES.forEach((flag, bit) => {
    const member = btf.bitfields[FLAG_MEMBER[flag]];
    assert.ok(member, `ct_entry has no bitfield ${FLAG_MEMBER[flag]} in BTF`);
    assert.deepEqual(member, { bitOffset: wordBits + bit, bitSize: 1 }, flag);
    assert.equal(ctLayout.CtEntryFlag[flag], 1 << bit, `CtEntryFlag.${flag}`);
  });
});
