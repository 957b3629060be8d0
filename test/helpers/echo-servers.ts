/**
 * The echo servers of the traffic scripts that run inside test namespaces
 * (netns-traffic.ts, fate-traffic.ts): on every address, a TCP server whose connections
 * `onConnection` handles, and a UDP server that echoes each datagram to its sender.
 * Prints "ready\n" once all of them listen, which the tests wait for.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';

export async function serveEcho(addresses: readonly string[], tcpPort: number, udpPort: number, onConnection: (sock: net.Socket) => void): Promise<void> {
  const listening: Promise<void>[] = [];
  for (const host of addresses) {
    const server = net.createServer({ allowHalfOpen: true }, onConnection);
    listening.push(new Promise((resolve) => server.listen(tcpPort, host, resolve)));
    const udp = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    udp.on('message', (m, rinfo) => udp.send(m, rinfo.port, rinfo.address));
    listening.push(new Promise((resolve) => udp.bind(udpPort, host, resolve)));
  }
  await Promise.all(listening);
  process.stdout.write('ready\n');
}
