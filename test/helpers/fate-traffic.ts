/**
 * Traffic for the fate-sharing e2e tests (test/e2e/fate-*.test.ts), run as its own
 * process inside a network namespace (`ip netns exec NS node fate-traffic.js <json>`):
 *
 *   {"mode":"serve", "addresses":[...], "tcpPort":P, "udpPort":Q}
 *     TCP and UDP echo servers that never close a connection themselves: a client's FIN
 *     leaves the connection half-open, so the datapath alone never sees both sides close
 *     and the entry keeps its long lifetime, unless the client's socket shares its fate.
 *     Prints "ready\n" once all listen; runs until killed.
 *   {"mode":"client", "kind":"tcp-fin"|"tcp-rst"|"udp"|"tcp-hold", "host":H, "port":P}
 *     one flow: sends 16 bytes, waits for the echo, prints {"localPort":N}, then
 *     tcp-fin: close() (a FIN); tcp-rst: an RST (SO_LINGER 0 + close); udp: close();
 *     tcp-hold: nothing, the socket stays open until the process is killed (kill -9).
 *     Prints "closed\n" when the socket is closed, and exits.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { serveEcho } from './echo-servers';

function serve(addresses: string[], tcpPort: number, udpPort: number): Promise<void> {
  return serveEcho(addresses, tcpPort, udpPort, (sock) => {
    sock.on('data', (d) => sock.write(d));
    sock.on('error', () => undefined); // a client's reset
  });
}

const MESSAGE = Buffer.alloc(16, 'f');

function tcpClient(kind: string, host: string, port: number): void {
  const sock = net.connect({ host, port });
  let echoed = 0;
  sock.on('data', (d) => {
    echoed += d.length;
    if (echoed < MESSAGE.length) return;
    process.stdout.write(`${JSON.stringify({ localPort: sock.localPort })}\n`);
    if (kind === 'tcp-fin') sock.destroy(); // close(2) with nothing unsent: a FIN
    else if (kind === 'tcp-rst') sock.resetAndDestroy();
    // tcp-hold: keep it open until killed
  });
  sock.on('connect', () => sock.write(MESSAGE));
  sock.on('error', (err) => {
    process.stderr.write(`fate-traffic: ${err.message}\n`);
    process.exit(1);
  });
  sock.on('close', () => {
    process.stdout.write('closed\n');
    process.exit(0);
  });
}

function udpClient(host: string, port: number): void {
  const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  sock.connect(port, host, () => sock.send(MESSAGE));
  sock.on('message', () => {
    process.stdout.write(`${JSON.stringify({ localPort: sock.address().port })}\n`);
    sock.close(() => {
      process.stdout.write('closed\n');
      process.exit(0);
    });
  });
  sock.on('error', (err) => {
    process.stderr.write(`fate-traffic: ${err.message}\n`);
    process.exit(1);
  });
}

if (require.main === module) {
  const cfg = JSON.parse(process.argv[2]);
  if (cfg.mode === 'serve') {
    serve(cfg.addresses, cfg.tcpPort, cfg.udpPort).catch((err) => {
      process.stderr.write(`fate-traffic: ${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(1);
    });
  } else if (cfg.kind === 'udp') {
    udpClient(cfg.host, cfg.port);
  } else {
    tcpClient(cfg.kind, cfg.host, cfg.port);
  }
}
