/**
 * `ctmap events`: watches CTEvents.WatchBatched on the daemon and prints each CT
 * lifecycle event (or lost notice) as it arrives, as JSON lines or text. Text lines are
 * `seq=N KIND reason [cluster N] ` followed by the entry as `ctmap ct list` prints it.
 */
import { ctEventsClient } from '../api/clients';
import { CtLifecycleEventBatchMsg, CtLifecycleEventMsg, KIND_NAME, kindOfName, reasonOfName } from '../api/events-proto';
import type { CliCommand } from './args';
import { connection, followStream } from './client';
import { dumpFilterOf, recordLine } from './ct';
import type { Io } from './datapath';

type EventsCommand = Extract<CliCommand, { kind: 'events' }>;

/** One event or notice as a JSON line: kinds, reasons and families by their short names. */
export function eventJson(e: CtLifecycleEventMsg): string {
  if (e.lost) {
    return JSON.stringify({ lost: Number(e.lost.count), at: e.lost.at.replace('CT_EVENT_LOSS_POINT_', '').toLowerCase(), family: familyName(e.lost.family) ?? null });
  }
  return JSON.stringify({
    sequence: Number(e.sequence),
    kind: kindOfName(e.kind) ?? e.kind,
    reason: reasonOfName(e.reason) ?? e.reason,
    family: familyName(e.family),
    map: e.record?.map ?? null,
    key: e.record?.key ?? null,
    entry: e.record?.entry ?? null,
  });
}

/** One event or notice as a text line (see the module comment). */
export function eventText(e: CtLifecycleEventMsg): string {
  if (e.lost) {
    const where = e.lost.at === 'CT_EVENT_LOSS_POINT_SOURCE' ? 'before the daemon (datapath ring full)' : 'by this subscriber (it fell behind)';
    return `LOST ${e.lost.count} ${familyName(e.lost.family) ?? 'ipv4/ipv6'} events ${where}\n`;
  }
  const kind = (kindOfName(e.kind) ?? e.kind).toUpperCase();
  const cluster = e.record?.map?.cluster_id ? ` cluster ${e.record.map.cluster_id}` : '';
  let entry = '';
  try {
    entry = recordLine(e.record).trimEnd();
  } catch {
    entry = JSON.stringify(e.record);
  }
  return `seq=${e.sequence} ${kind} ${reasonOfName(e.reason) ?? e.reason}${cluster} ${entry}\n`;
}

function familyName(f: string | undefined): string | undefined {
  return f === 'FAMILY_IPV4' ? 'ipv4' : f === 'FAMILY_IPV6' ? 'ipv6' : undefined;
}

/**
 * Watches until `cmd.count` events were printed (resolves 0), the daemon ends the stream
 * (resolves 0) or the call fails (rejects with CliRpcError). SIGINT ends it with 0.
 */
export function watchEvents(cmd: EventsCommand, io: Io): Promise<number> {
  const client = ctEventsClient(...connection(cmd.server));
  const req = {
    family: cmd.family === 'ipv4' ? 'FAMILY_IPV4' : cmd.family === 'ipv6' ? 'FAMILY_IPV6' : 'FAMILY_UNSPECIFIED',
    kinds: cmd.kinds.map((k) => KIND_NAME[k]),
    filter: dumpFilterOf(cmd.filter, false),
  };
  const format = cmd.output === 'json' ? (e: CtLifecycleEventMsg) => `${eventJson(e)}\n` : eventText;
  let printed = 0;
  return followStream(client.WatchBatched(req), 'CTEvents.WatchBatched', cmd.server, (batch: CtLifecycleEventBatchMsg) => {
    let text = '';
    for (const e of batch.events) {
      text += format(e);
      if (!e.lost && cmd.count !== undefined && ++printed >= cmd.count) break;
    }
    io.out(text);
    return cmd.count !== undefined && printed >= cmd.count;
  }).finally(() => client.close());
}


