/**
 * The one place that knows where ctmapd's own files are: the repository (or installed
 * package) root, found by walking up from this module to the package.json named "ctmapd",
 * so the answer is the same from src/ under ts-node and from dist/src/ after a build.
 * Everything that needs the protos, the BPF objects or bin/ asks here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

function findRepoRoot(start: string): string {
  for (let dir = start; ; dir = path.dirname(dir)) {
    const manifest = path.join(dir, 'package.json');
    try {
      if ((JSON.parse(fs.readFileSync(manifest, 'utf8')) as { name?: string }).name === 'ctmapd') return dir;
    } catch {
      // no (readable) package.json here: keep walking up
    }
    if (path.dirname(dir) === dir) throw new Error(`ctmapd: no package.json named ctmapd above ${start}`);
  }
}

/** The repository root: the directory holding ctmapd's package.json. */
export const REPO_ROOT = findRepoRoot(__dirname);

/** A path inside the repository, e.g. repoPath('bpf/.output/ct_gc.bpf.o'). */
export function repoPath(...parts: string[]): string {
  return path.join(REPO_ROOT, ...parts);
}

/** Where `make -C bpf` puts a BPF object: bpf/.output/<name>. */
export function bpfObjectPath(name: string): string {
  return repoPath('bpf', '.output', name);
}

/** ctmapd's own protos (`ctmap/v1/ctmap.proto` under it). */
export const PROTO_ROOT = repoPath('proto');

/** bin/ctmap, which the daemon and the CLI re-execute (inside a network namespace). */
export const CTMAP_BIN = repoPath('bin', 'ctmap');

/** bin/ctmapd, the daemon's entry point. */
export const CTMAPD_BIN = repoPath('bin', 'ctmapd');
