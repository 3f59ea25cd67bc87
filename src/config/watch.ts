/**
 * Reload on file change. Editors save by writing a new file and renaming it over the old one,
 * which ends a watch on the file itself; Kubernetes updates a mounted ConfigMap by swapping a
 * `..data` symlink next to it, so no event names the file at all. So the directory is watched
 * (and, for a symlink, the directory of its target too); events naming the file, its target
 * or a `..`-prefixed entry (Kubernetes' `..data`) are hints, and the file's content decides: a
 * reload happens only when the bytes changed. A burst of events (write, rename, chmod) becomes
 * one check `debounce` ms after the last, and never later than 4 x `debounce` after the first,
 * so a busy neighbour cannot put it off.
 */
import { createHash } from 'node:crypto';
import { readFileSync, realpathSync, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../observe/logger.ts';

function digest(file: string): string | null {
  try {
    return createHash('sha256').update(readFileSync(file)).digest('hex');
  } catch {
    return null; // gone for a moment (mid-rename) or unreadable: the next event looks again
  }
}

/** Calls `onChange` once per burst of changes to `file`'s content; returns the function that stops watching. */
export function watchConfigFile(file: string, debounce: number, onChange: () => void, logger: Logger): () => void {
  const absolute = path.resolve(file);
  let last = digest(absolute);
  let timer: NodeJS.Timeout | null = null;
  let firstHint = 0;
  const watchers: FSWatcher[] = [];
  const names = new Set([path.basename(absolute)]);
  const check = (): void => {
    timer = null;
    firstHint = 0;
    follow();
    const now = digest(absolute);
    if (now === null || now === last) return;
    last = now;
    onChange();
  };
  const hint = (_event: string, name: string | Buffer | null): void => {
    // Some platforms do not say which entry changed: then any event counts.
    if (name !== null) {
      const n = name.toString();
      if (!names.has(n) && !n.startsWith('..')) return;
    }
    const now = Date.now();
    if (firstHint === 0) firstHint = now;
    if (timer) clearTimeout(timer);
    timer = setTimeout(check, Math.max(0, Math.min(debounce, firstHint + 4 * debounce - now)));
    timer.unref();
  };
  const watched = new Set<string>();
  /** Watches the file's directory and its target's (again after each change: a link can be re-pointed). */
  const follow = (): void => {
    const dirs = [path.dirname(absolute)];
    try {
      const target = realpathSync(absolute);
      dirs.push(path.dirname(target));
      names.add(path.basename(target));
    } catch {
      // not there for a moment: its own directory is enough
    }
    for (const dir of dirs) {
      if (watched.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, hint);
        w.on('error', (err) => logger.error({ err: err.message, file }, `watching ${dir} failed; reload with SIGHUP or POST /reload`));
        watchers.push(w);
        watched.add(dir);
      } catch (err) {
        logger.error({ err: (err as Error).message, file }, `cannot watch ${dir}; reload with SIGHUP or POST /reload`);
      }
    }
  };
  follow();
  return () => {
    if (timer) clearTimeout(timer);
    for (const w of watchers) w.close();
  };
}
