/**
 * Reading Prometheus text exposition in tests: a sample's value by name and labels.
 */

/** Every sample of the exposition: name, labels and value. */
export function samples(text: string): { name: string; labels: Map<string, string>; value: number }[] {
  const out: { name: string; labels: Map<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) continue;
    const labels = new Map([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The samples of `name` whose labels include `labels`. */
export function matching(text: string, name: string, labels: Record<string, string> = {}): { labels: Map<string, string>; value: number }[] {
  return samples(text).filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels.get(k) === v));
}

/** The sum of the samples of `name` whose labels include `labels` (0 when there is none). */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  return matching(text, name, labels).reduce((sum, s) => sum + s.value, 0);
}
