/**
 * Loading the ctmapd protos. One proto-loader options constant is shared by the server,
 * the client and reflection so that every side sees messages the same way (snake_case
 * fields, 64-bit integers as decimal strings, enums as their names).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';
import * as descriptor from 'protobufjs/ext/descriptor';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { PROTO_ROOT } from '../config/paths';
import { CtmapError } from '../errors';

/** The proto-loader options of every load in ctmapd. */
export const PROTO_LOADER_OPTIONS: Readonly<protoLoader.Options> = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

/** Fully qualified names of the services ctmapd serves. */
export const CTMAPS_SERVICE = 'ctmap.v1.CTMaps';
export const HEALTH_SERVICE = 'grpc.health.v1.Health';

/** Directory holding ctmapd's own protos (`ctmap/v1/ctmap.proto`). */
export function protoRoot(): string {
  return PROTO_ROOT;
}

// The health proto ships with grpc-health-check as <root>/health/v1/health.proto; the
// reflection protos with @grpc/reflection as <root>/grpc/reflection/{v1,v1alpha}/....
const healthRoot = path.resolve(path.dirname(healthProtoPath), '../..');
const reflectionRoot = path.join(
  path.dirname(require.resolve('@grpc/reflection/package.json')),
  'build/proto',
);

const PROTO_FILES = [
  'ctmap/v1/ctmap.proto',
  'health/v1/health.proto',
  'grpc/reflection/v1/reflection.proto',
  'grpc/reflection/v1alpha/reflection.proto',
];

let cached: protoLoader.PackageDefinition | undefined;

/**
 * The package definition of everything ctmapd serves: ctmap.v1, grpc.health.v1 and both
 * reflection versions, so that reflection (reflectionPackageDefinition()) lists health and
 * itself next to CTMaps. Loaded once (synchronously) and cached; throws if a proto file is
 * missing or invalid.
 */
export function packageDefinition(): protoLoader.PackageDefinition {
  cached ??= protoLoader.loadSync(PROTO_FILES, {
    ...PROTO_LOADER_OPTIONS,
    includeDirs: [protoRoot(), healthRoot, reflectionRoot],
  });
  return cached;
}

let cachedRoot: protobuf.Root | undefined;

/**
 * The protos of packageDefinition() as one resolved protobufjs Root (keepCase field
 * names), for what needs the schema itself: decoding requests by the wire rules of the
 * reference implementation (request-decoding.ts). Loaded once and cached.
 */
export function servedRoot(): protobuf.Root {
  if (cachedRoot) return cachedRoot;
  const dirs = [protoRoot(), healthRoot, reflectionRoot];
  const root = new protobuf.Root();
  // As proto-loader resolves imports: relative to the include directories, in order.
  root.resolvePath = (_origin, target) => dirs.map((d) => path.join(d, target)).find((p) => fs.existsSync(p)) ?? target;
  root.loadSync(PROTO_FILES, { keepCase: true });
  root.resolveAll();
  cachedRoot = root;
  return root;
}

let cachedReflection: protoLoader.PackageDefinition | undefined;

/**
 * packageDefinition() for the reflection service, with ctmap.proto's descriptor completed
 * (see annotate()) so that `grpcurl describe` prints the comment of every RPC and field
 * and shows `optional` fields as such. Cached; throws like packageDefinition().
 */
export function reflectionPackageDefinition(): protoLoader.PackageDefinition {
  if (cachedReflection) return cachedReflection;
  const def = packageDefinition();
  const files = Object.values(def).find((v) => 'fileDescriptorProtos' in v)?.fileDescriptorProtos as Buffer[] | undefined;
  if (!files) return def;
  const commented = files.map((buf) => {
    const file = descriptor.FileDescriptorProto.decode(buf) as descriptor.IFileDescriptorProto & protobuf.Message;
    const renamed = nameMapEntriesAsProtoc(file);
    if (file.package !== 'ctmap.v1') return renamed ? Buffer.from(descriptor.FileDescriptorProto.encode(file).finish()) : buf;
    annotate(file, commentedRoot());
    return Buffer.from(descriptor.FileDescriptorProto.encode(file).finish());
  });
  const withComments: protoLoader.PackageDefinition = {};
  for (const [name, v] of Object.entries(def)) {
    withComments[name] = 'fileDescriptorProtos' in v ? ({ ...v, fileDescriptorProtos: commented } as typeof v) : v;
  }
  cachedReflection = withComments;
  return withComments;
}

/**
 * Gives every map entry message the name protoc gives it, in place; returns whether any
 * changed. protobufjs writes the entry of `map<K, V> statuses` as a nested message
 * `Statuses` with map_entry set, where the reference implementation requires
 * `StatusesEntry` (the field name in CamelCase + "Entry") and refuses the whole file
 * otherwise ("map_entry should not be set explicitly"), so grpcurl and every client built
 * from reflection failed on grpc.health.v1 (its HealthListResponse has such a map).
 */
function nameMapEntriesAsProtoc(file: descriptor.IFileDescriptorProto): boolean {
  let changed = false;
  const visit = (message: descriptor.IDescriptorProto, scope: string): void => {
    const name = `${scope}.${message.name}`;
    for (const nested of message.nestedType ?? []) {
      if (!nested.options?.mapEntry) continue;
      const field = (message.field ?? []).find((f) => f.typeName === nested.name || f.typeName === `${name}.${nested.name}`);
      if (!field?.name) continue;
      const want = `${field.name.replace(/(?:^|_)([a-z0-9])/g, (_m, c: string) => c.toUpperCase())}Entry`;
      if (nested.name === want) continue;
      // protoc resolves a relative type name from the message's scope, so both forms stay valid.
      field.typeName = field.typeName!.startsWith('.') ? `${name}.${want}` : want;
      nested.name = want;
      changed = true;
    }
    for (const nested of message.nestedType ?? []) visit(nested, name);
  };
  for (const message of file.messageType ?? []) visit(message, file.package ? `.${file.package}` : '');
  return changed;
}

/** ctmap.proto parsed by protobufjs with `//` comments kept on every reflection object. */
function commentedRoot(): protobuf.Root {
  return new protobuf.Root().loadSync(path.join(protoRoot(), PROTO_FILES[0]!), { keepCase: true, alternateCommentMode: true });
}

interface Location {
  path: number[];
  span: number[];
  leadingComments: string;
}

/**
 * Adds what protobufjs leaves out of a file descriptor it writes:
 * - source_code_info with one location per commented declaration (the comments). Paths
 *   are descriptor.proto field numbers and indexes (4 message_type, 2 field, 3 nested_type,
 *   4 enum_type, 5 enum_type, 2 value, 6 service, 2 method). Spans are placeholders (line
 *   numbers are not known here); consumers require three elements.
 * - proto3_optional on `optional` fields: protobufjs sets it under a key its encoder
 *   ignores, and without it the synthetic `_field` oneofs look like real ones.
 */
function annotate(file: descriptor.IFileDescriptorProto & { sourceCodeInfo?: unknown }, root: protobuf.Root): void {
  const out: Location[] = [];
  const add = (where: number[], comment: string | null | undefined) => {
    if (!comment) return;
    // protoc's form: each line keeps its leading space and ends in a newline.
    out.push({ path: where, span: [0, 0, 0], leadingComments: comment.split('\n').map((l) => ` ${l}\n`).join('') });
  };
  const enumeration = (e: descriptor.IEnumDescriptorProto, scope: string, where: number[]) => {
    const t = root.lookupEnum(`${scope}.${e.name}`);
    add(where, t.comment);
    e.value?.forEach((v, i) => add([...where, 2, i], t.comments[v.name ?? '']));
  };
  const message = (m: descriptor.IDescriptorProto, scope: string, where: number[]) => {
    const name = `${scope}.${m.name}`;
    const t = root.lookupType(name);
    add(where, t.comment);
    m.field?.forEach((f, i) => {
      const field = t.fields[f.name ?? ''];
      add([...where, 2, i], field?.comment);
      if (field?.options?.['proto3_optional'] === true) (f as { proto3Optional?: boolean }).proto3Optional = true;
    });
    m.nestedType?.forEach((n, i) => message(n, name, [...where, 3, i]));
    m.enumType?.forEach((e, i) => enumeration(e, name, [...where, 4, i]));
  };
  const pkg = `.${file.package}`;
  file.messageType?.forEach((m, i) => message(m, pkg, [4, i]));
  file.enumType?.forEach((e, i) => enumeration(e, pkg, [5, i]));
  file.service?.forEach((s, i) => {
    const svc = root.lookupService(`${pkg}.${s.name}`);
    add([6, i], svc.comment);
    s.method?.forEach((m, j) => add([6, i, 2, j], svc.methods[m.name ?? '']?.comment));
  });
  file.sourceCodeInfo = { location: out };
}

/** Client constructors (each with `.service`, its ServiceDefinition) of the served APIs. */
export interface CtmapGrpc {
  readonly CTMaps: grpc.ServiceClientConstructor;
  readonly GCRunner: grpc.ServiceClientConstructor;
  readonly NATMaps: grpc.ServiceClientConstructor;
  readonly ClusterCTMaps: grpc.ServiceClientConstructor;
  readonly CTEvents: grpc.ServiceClientConstructor;
  readonly Health: grpc.ServiceClientConstructor;
}

/**
 * The loaded service constructors: `services().CTMaps.service` is the definition to add
 * to a grpc.Server; `new (services().CTMaps)(address, creds)` is a client.
 */
export function services(): CtmapGrpc {
  if (cachedServices) return cachedServices;
  const root = grpc.loadPackageDefinition(packageDefinition());
  cachedServices = {
    CTMaps: lookup(root, CTMAPS_SERVICE),
    GCRunner: lookup(root, 'ctmap.v1.GCRunner'),
    NATMaps: lookup(root, 'ctmap.v1.NATMaps'),
    ClusterCTMaps: lookup(root, 'ctmap.v1.ClusterCTMaps'),
    CTEvents: lookup(root, 'ctmap.v1.CTEvents'),
    Health: lookup(root, HEALTH_SERVICE),
  };
  return cachedServices;
}

let cachedServices: CtmapGrpc | undefined;

function lookup(root: grpc.GrpcObject, fqn: string): grpc.ServiceClientConstructor {
  let node: unknown = root;
  for (const part of fqn.split('.')) node = (node as grpc.GrpcObject)[part];
  if (typeof node !== 'function' || !('service' in node)) {
    throw new CtmapError('internal', `proto: service ${fqn} not in the package definition`);
  }
  return node as grpc.ServiceClientConstructor;
}
