/** "did you mean ...?" for mistyped keys and names. */

/** Edit distance counting a swap of two neighbouring letters as one edit (optimal string alignment: `hots` is one from `host`). */
export function editDistance(a: string, b: string): number {
  let before: number[] = [];
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) row[j] = Math.min(row[j], before[j - 2] + 1);
    }
    before = prev;
    prev = row;
  }
  return prev[b.length];
}

/** Letters two words share at their start. */
function sharedPrefix(a: string, b: string): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

/** The closest candidate, if it is close enough to be a likely typo. */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  // `-` and `_` count as the same letter: `least_conn` and `least-conn` are one typo apart from nothing.
  const normal = (s: string): string => s.toLowerCase().replace(/-/g, '_');
  const lower = normal(word);
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(lower, normal(c));
    // Equally close: the one that starts like the word (`hots` is `host`, not `hsts`).
    if (d < bestDistance || (d === bestDistance && best !== undefined && sharedPrefix(lower, normal(c)) > sharedPrefix(lower, normal(best)))) {
      best = c;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}
