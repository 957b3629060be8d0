/**
 * The TS codecs address the records of bpf/ only through the StructLayouts; this test proves
 * those offsets equal what clang laid out for bpf/'s headers (ctmap.h: CT and NAT; ct_gc.h:
 * the GC program's ctx and area), read back from the BTF of bpf/.output/ctmap_layout.bpf.o
 * and of the program objects the daemon loads (as Cilium's pkg/alignchecker does for its Go
 * types), and that the TS mode and status values equal the header's enums. Needs bpftool
 * and a built object (`make -C bpf`); it fails rather than skips without them, since an
 * unchecked layout is exactly the bug it exists to catch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { bpfObjectPath, repoPath } from '../../src/config/paths';
import * as ctLayout from '../../src/maps/ctmap/layout';
import * as eventsLayout from '../../src/maps/ctmap/events/layout';
import * as gcLayout from '../../src/maps/ctmap/gc/layout';
import { DeleteMode, DeleteStatus } from '../../src/maps/ctmap/gc/types';
import type { StructLayout } from '../../src/maps/layout';
import * as natLayout from '../../src/maps/nat/layout';
import { definesStruct, enumValuesFromBtf, structLayoutFromBtf } from '../helpers/btf';

/** The layout carrier: every struct and enum of the headers is in its BTF. */
const OBJ = bpfObjectPath('ctmap_layout.bpf.o');
/** The objects the daemon loads: each struct they define must match as well. */
const PROGRAM_OBJECTS = ['ct_gc.bpf.o', 'ct_datapath.bpf.o', 'ct_fate.bpf.o'].map(bpfObjectPath);
const BPF_DIR = repoPath('bpf');
/** Every header of bpf/: the single C source of truth for what the daemon reads. */
const HEADERS = fs.readdirSync(BPF_DIR).filter((f) => f.endsWith('.h')).sort();

function isStructLayout(v: unknown): v is StructLayout {
  const o = v as Partial<StructLayout> | null;
  return (
    typeof o === 'object' && o !== null && typeof o.cName === 'string' &&
    typeof o.size === 'number' && typeof o.fields === 'object'
  );
}

/** Every exported layout, so one added later is checked without touching this test. */
const LAYOUTS = [...Object.values(ctLayout), ...Object.values(eventsLayout), ...Object.values(natLayout), ...Object.values(gcLayout)].filter(isStructLayout);

/**
 * The TS value objects of the headers' enums, by C enum name; a C constant is the TS key
 * with the enum's prefix (CT_GC_EXPIRED_BEFORE is DeleteMode.EXPIRED_BEFORE).
 */
const ENUMS: Record<string, { prefix: string; values: Readonly<Record<string, number>> }> = {
  ct_gc_mode: { prefix: 'CT_GC_', values: DeleteMode },
  ct_gc_status: { prefix: 'CT_GC_', values: DeleteStatus },
  ct_events_mode: { prefix: 'CT_EVENTS_', values: eventsLayout.CtEventsModeCode },
  ct_event_type: { prefix: 'CT_EVENT_', values: eventsLayout.CtEventTypeCode },
  ct_event_reason: { prefix: 'CT_REASON_', values: eventsLayout.CtEventReasonCode },
  ct_event_map: { prefix: 'CT_EVENT_MAP_', values: eventsLayout.CtEventMapCode },
};

/** Declarations of `kind` ("struct" or "enum") in the headers of bpf/. */
function declared(kind: 'struct' | 'enum'): string[] {
  const re = new RegExp(`^${kind} (\\w+) \\{`, 'gm');
  return HEADERS.flatMap((h) => [...fs.readFileSync(path.join(BPF_DIR, h), 'utf8').matchAll(re)].map((m) => m[1])).sort();
}

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
    'ct_event',
    'ct_event_header',
    'ct_events_cpu',
    'ct_fate_stats',
    'ct_gc_area',
    'ct_gc_args',
    'ipv4_ct_tuple',
    'ipv4_nat_entry',
    'ipv6_ct_tuple',
    'ipv6_nat_entry',
    'ct_pressure_config',
  ].sort());
});

test('every struct in bpf/*.h has a TS layout', () => {
  // A struct added to a header without a layout would go unchecked.
  assert.ok(HEADERS.includes('ctmap.h') && HEADERS.includes('ct_gc.h') && HEADERS.includes('ct_events.h'), `headers found: ${HEADERS.join(', ')}`);
  assert.deepEqual(declared('struct'), LAYOUTS.map((l) => l.cName).sort());
});

for (const layout of LAYOUTS) {
  test(`struct ${layout.cName} matches BTF`, () => {
    const objects = [OBJ, ...PROGRAM_OBJECTS.filter((o) => definesStruct(o, layout.cName))];
    for (const obj of objects) {
      const where = `${layout.cName} in ${path.basename(obj)}`;
      const btf = structLayoutFromBtf(obj, layout.cName);
      assert.equal(btf.size, layout.size, `sizeof(struct ${where})`);
      for (const [name, want] of Object.entries(layout.fields)) {
        const got = btf.fields[name];
        assert.ok(got, `struct ${where} has no member ${name} in BTF`);
        assert.deepEqual({ offset: got.offset, size: got.size }, { offset: want.offset, size: want.size }, `${where}: ${name}`);
      }
      // Padding may be left out (the codecs write into zeroed buffers); any other member not.
      const unmapped = Object.keys(btf.fields).filter((name) => !(name in layout.fields) && !/^pad\d*$/.test(name));
      assert.deepEqual(unmapped, [], `${where}: members without a TS field`);
    }
  });
}

test('every enum in bpf/*.h has TS values', () => {
  assert.deepEqual(declared('enum'), Object.keys(ENUMS).sort());
});

for (const [cName, { prefix, values }] of Object.entries(ENUMS)) {
  test(`enum ${cName} matches BTF`, () => {
    const want = Object.fromEntries(Object.entries(values).map(([k, v]) => [prefix + k, v]));
    assert.deepEqual(enumValuesFromBtf(OBJ, cName), want);
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
