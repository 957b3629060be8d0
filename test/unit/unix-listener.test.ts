/**
 * The daemon's own unix socket listener (issue 12, item 3): connections are handed to
 * grpc-js, and a call's peer is the connecting process's pid, uid and gid (SO_PEERCRED)
 * instead of grpc-js's "unknown"; mode and group as asked; group names from /etc/group.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { services } from '../../src/api/proto';
import { listenUnix, resolveGroup } from '../../src/server/unix-listener';
import { call, tempDir } from '../helpers/grpc';

describe('listenUnix', () => {
  it('serves through grpc-js with the peer named by SO_PEERCRED, with the mode and group asked for', async (t) => {
    const { dir } = tempDir(t);
    const socket = path.join(dir, 'sub', 'x.sock');
    const server = new grpc.Server();
    const peers: string[] = [];
    server.addService(services().CTMaps.service, {
      ActiveMaps: (c: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        peers.push(c.getPeer());
        cb(null, { maps: [] });
      },
    });
    const gid = process.getgid!();
    const l = await listenUnix(server, { socket, mode: 0o640, gid, credentials: grpc.ServerCredentials.createInsecure(), log: pino({ level: 'silent' }) });
    t.after(() => server.forceShutdown());
    assert.equal(l.address, `unix:${socket}`);
    const st = fs.statSync(socket);
    assert.deepEqual([st.isSocket(), st.mode & 0o777, st.gid], [true, 0o640, gid]);

    const client = new (services().CTMaps)(l.address, grpc.credentials.createInsecure());
    await call(client, 'ActiveMaps', {});
    client.close();
    assert.deepEqual(peers, [`unix:pid=${process.pid},uid=${process.getuid!()},gid=${process.getgid!()}`]);

    // A second listener on a path something answers on is refused; the live socket stays.
    await assert.rejects(listenUnix(server, { socket, mode: 0o640, credentials: grpc.ServerCredentials.createInsecure(), log: pino({ level: 'silent' }) }), /another server is listening/);
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await l.close();
    assert.equal(fs.existsSync(socket), false);
  });

  it('resolves group names from the group file', (t) => {
    const { dir } = tempDir(t);
    const file = path.join(dir, 'group');
    fs.writeFileSync(file, 'root:x:0:\nmonitoring:x:991:alice,bob\n');
    assert.equal(resolveGroup('monitoring', '--socket-readonly-group', file), 991);
    assert.equal(resolveGroup(7, '--socket-readonly-group', file), 7);
    assert.throws(() => resolveGroup('nobody-here', '--socket-readonly-group', file), /--socket-readonly-group: no group "nobody-here"/);
  });
});
