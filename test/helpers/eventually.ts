/** Poll, never sleep: waits until `check` returns a truthy value or the deadline passes. */
export async function eventually<T>(check: () => T | Promise<T>, { timeout = 5000, interval = 10, what = 'condition' } = {}): Promise<T> {
  const deadline = Date.now() + timeout;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout}ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}
