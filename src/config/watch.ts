/**
 * Reload on file change. Editors save by writing a new file and renaming it over the old one,
 * which ends a watch on the file itself; so the directory is watched and events are filtered by
 * name, and a burst of events (write, rename, chmod) becomes one reload after `debounce` ms.
 */
import { watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../observe/logger.ts';

/** Calls `onChange` once per burst of changes to `file`; returns the function that stops watching. */
export function watchConfigFile(file: string, debounce: number, onChange: () => void, logger: Logger): () => void {
  const dir = path.dirname(path.resolve(file));
  const name = path.basename(file);
  let timer: NodeJS.Timeout | null = null;
  let watcher: FSWatcher | null = null;
  try {
    watcher = watch(dir, { persistent: false }, (_event, changed) => {
      // Some platforms do not say which file changed: then any change in the directory counts.
      if (changed !== null && changed !== name) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => {
        timer = null;
        onChange();
      }, debounce);
      timer.unref();
    });
    watcher.on('error', (err) => logger.error({ err: err.message, file }, `watching ${file} failed; reload with SIGHUP or POST /reload`));
  } catch (err) {
    logger.error({ err: (err as Error).message, file }, `cannot watch ${file}; reload with SIGHUP or POST /reload`);
  }
  return () => {
    if (timer) clearTimeout(timer);
    watcher?.close();
  };
}
