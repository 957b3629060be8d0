/**
 * growPipeBuffer (src/sys/pipe.ts): a pipe's kernel buffer grows to what is asked (up to
 * the unprivileged cap, 1 MiB by default); anything that is not a pipe is left alone.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { growPipeBuffer } from '../../src/sys/pipe';
import { tempDir } from '../helpers/grpc';

test('a FIFO gets the buffer asked for; a regular file and a closed fd get undefined', { skip: process.platform !== 'linux' && 'Linux only (F_SETPIPE_SZ)' }, (t) => {
  const dir = tempDir(t);
  const fifo = path.join(dir.dir, 'fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  // O_RDWR: Linux opens a FIFO for both ends at once without waiting for a peer.
  const fd = fs.openSync(fifo, fs.constants.O_RDWR);
  t.after(() => fs.closeSync(fd));
  const cap = Number(fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8'));
  const want = Math.min(1 << 20, cap);
  assert.equal(growPipeBuffer(fd, want), want, 'the size in effect is returned');
  assert.equal(growPipeBuffer(fd, 128 << 10), 128 << 10, 'and it can shrink again');

  const file = path.join(dir.dir, 'file');
  fs.writeFileSync(file, '');
  const ffd = fs.openSync(file, 'r');
  t.after(() => fs.closeSync(ffd));
  assert.equal(growPipeBuffer(ffd, 1 << 20), undefined, 'not a pipe');
  assert.equal(growPipeBuffer(987_654, 1 << 20), undefined, 'no such fd: no throw');
});
