/**
 * The request-target as routes see it and as upstreams get it. Paths are normalised before
 * route matching — percent-encoded `.` and `/` decoded, duplicate slashes merged, dot segments
 * removed (RFC 3986 section 5.2.4) — and the normalised path is the one forwarded, so a rule on
 * `/admin` cannot be walked around as `/./admin`, `//admin` or `/%2e/admin`.
 */

/** A parsed request-target: path (normalised) and the query as sent, or why it is refused. */
export type RequestTarget = { path: string; query: string; authority: string | null } | { error: string };

/** Characters whose presence means the path needs work; most paths have none and pass as is. */
const needsWork = /%|\/\/|\/\.|\\/;

/** Parses origin-form (`/a?b`) and absolute-form (`http://host/a?b`) targets. */
export function parseRequestTarget(url: string): RequestTarget {
  let authority: string | null = null;
  let rest = url;
  if (url.charCodeAt(0) !== 47 /* / */) {
    const m = /^https?:\/\/([^/?#]+)(.*)$/i.exec(url);
    if (!m) return { error: 'request-target must be a path ("/...") or an absolute http URL' };
    authority = m[1];
    rest = m[2] === '' ? '/' : m[2];
    if (rest.charCodeAt(0) !== 47 && rest.charCodeAt(0) !== 63) return { error: 'malformed absolute request-target' };
    if (rest.charCodeAt(0) === 63) rest = `/${rest}`;
  }
  const q = rest.indexOf('?');
  const rawPath = q === -1 ? rest : rest.slice(0, q);
  const query = q === -1 ? '' : rest.slice(q);
  if (rawPath.includes('#')) return { error: 'fragment in request-target' };
  if (!needsWork.test(rawPath)) return { path: rawPath, query, authority };
  const path = normalizePath(rawPath);
  return path === null ? { error: 'malformed percent-encoding in path' } : { path, query, authority };
}

/** Decodes %2E and %2F (any case), merges slashes, resolves dot segments; null for bad %-escapes. */
export function normalizePath(path: string): string | null {
  if (/%(?![0-9A-Fa-f]{2})/.test(path)) return null;
  // Only `.` and `/` are decoded: they change which route matches. Other escapes pass through unchanged.
  const decoded = path.replace(/%2[eE]/g, '.').replace(/%2[fF]/g, '/').replace(/%5[cC]|\\/g, '/');
  const out: string[] = [];
  for (const segment of decoded.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') out.pop();
    else out.push(segment);
  }
  const trailing = decoded.endsWith('/') || decoded.endsWith('/.') || decoded.endsWith('/..');
  const joined = `/${out.join('/')}`;
  return trailing && joined !== '/' ? `${joined}/` : joined;
}
