/**
 * Byte layouts and enum values of bpf/ct_events.h: the records the datapath writes into
 * the ctmapd_ct_events ring and the fill-up steps the daemon writes for it. The ring
 * reader's decoder (src/datapath/ring-decoder.ts) reads records only through these, and
 * test/kernel/btf-layout.test.ts checks every size, offset and enum value against BTF.
 */
import type { StructLayout } from '../../layout';

/** enum ct_events_mode (CT_EVENTS_<key>): --ct-events as the programs see it. */
export const CtEventsModeCode = Object.freeze({ NONE: 0, SIGNALS: 1, ALL: 2 } as const);

/** enum ct_event_type (CT_EVENT_<key>). */
export const CtEventTypeCode = Object.freeze({ FILL_UP: 1, NEW: 2, CLOSE: 3 } as const);

/** enum ct_event_reason (CT_REASON_<key>). */
export const CtEventReasonCode = Object.freeze({
  NONE: 0,
  INSERT_FAILED: 1,
  PRESSURE: 2,
  CREATED: 3,
  FIN: 4,
  RST: 5,
  SOCKET_CLOSE: 6,
} as const);

/** enum ct_event_map (CT_EVENT_MAP_<key>). */
export const CtEventMapCode = Object.freeze({ TCP: 0, ANY: 1 } as const);

/** struct ct_event_header (16 bytes): every record starts with it. */
export const CT_EVENT_HEADER: StructLayout = {
  cName: 'ct_event_header',
  size: 16,
  fields: {
    type: { offset: 0, size: 1 },
    family: { offset: 1, size: 1 },
    map: { offset: 2, size: 1 },
    reason: { offset: 3, size: 1 },
    cluster_id: { offset: 4, size: 4 },
    lost: { offset: 8, size: 4 },
    now: { offset: 12, size: 4 },
  },
};

/** struct ct_event (112 bytes): NEW and CLOSE, the header then the key (40-byte union) and entry. */
export const CT_EVENT: StructLayout = {
  cName: 'ct_event',
  size: 112,
  fields: {
    hdr: { offset: 0, size: 16 },
    key: { offset: 16, size: 40 },
    entry: { offset: 56, size: 56 },
  },
};

/** struct ct_pressure_config (16 bytes): the ctmapd_ct_pressure ARRAY's one value. */
export const CT_PRESSURE_CONFIG: StructLayout = {
  cName: 'ct_pressure_config',
  size: 16,
  fields: {
    step_mask_tcp4: { offset: 0, size: 4 },
    step_mask_any4: { offset: 4, size: 4 },
    step_mask_tcp6: { offset: 8, size: 4 },
    step_mask_any6: { offset: 12, size: 4 },
  },
};
