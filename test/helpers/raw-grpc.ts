/**
 * A gRPC client on raw HTTP/2: sends the bytes it is given and reports exactly what the
 * server sent (messages, grpc-status, grpc-message). Unlike a grpc-js client it runs no
 * deadline timer of its own and encodes nothing, so tests see the server's own answer to
 * a deadline (grpc-timeout) or to hand-made wire bytes.
 */
import * as http2 from 'node:http2';
import * as net from 'node:net';

export interface RawReply {
  /** grpc-status; -1 when the stream closed without one. */
  readonly status: number;
  /** grpc-message, percent-decoded. */
  readonly message: string;
  /** The response messages (their protobuf bytes, without the 5-byte frame header). */
  readonly messages: Buffer[];
}

export interface RawCallOptions {
  /** Sent as grpc-timeout, e.g. "50m" (milliseconds). */
  readonly timeout?: string;
}

/**
 * One call of `path` ("/ctmap.v1.CTMaps/Lookup") on `address` ("unix:/path" or
 * "HOST:PORT") with `body` as the single request message. Resolves when the stream ends.
 */
export function rawCall(address: string, path: string, body: Uint8Array, opts: RawCallOptions = {}): Promise<RawReply> {
  const session = address.startsWith('unix:')
    ? http2.connect('http://localhost', { createConnection: () => net.connect(address.slice('unix:'.length)) })
    : http2.connect(`http://${address}`);
  return new Promise<RawReply>((resolve, reject) => {
    session.on('error', reject);
    const headers: http2.OutgoingHttpHeaders = {
      ':method': 'POST',
      ':path': path,
      'content-type': 'application/grpc',
      te: 'trailers',
    };
    if (opts.timeout) headers['grpc-timeout'] = opts.timeout;
    const stream = session.request(headers);
    let status = -1;
    let message = '';
    const take = (h: http2.IncomingHttpHeaders) => {
      if (h['grpc-status'] !== undefined) status = Number(h['grpc-status']);
      if (typeof h['grpc-message'] === 'string') message = decodeURIComponent(h['grpc-message']);
    };
    stream.on('response', take); // a trailers-only answer carries the status here
    stream.on('trailers', take);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('error', reject);
    stream.on('close', () => {
      session.close();
      resolve({ status, message, messages: unframe(Buffer.concat(chunks)) });
    });
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    frame.set(body, 5);
    stream.end(frame);
  });
}

function unframe(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let p = 0; p + 5 <= data.length; ) {
    const len = data.readUInt32BE(p + 1);
    out.push(data.subarray(p + 5, p + 5 + len));
    p += 5 + len;
  }
  return out;
}
