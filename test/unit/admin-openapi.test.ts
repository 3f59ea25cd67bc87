/**
 * The admin API's OpenAPI document: well-formed OpenAPI 3.1 (every $ref resolves, every
 * operation has an operationId and responses), and true to the server. A real admin listener
 * answers every documented path and method, and every route the server has is documented.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { openApiDocument } from '../../src/admin/openapi.ts';
import { version } from '../../src/version.ts';
import { writeFileSync } from 'node:fs';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { makeTestCa } from '../helpers/tls.ts';

type Json = Record<string, any>;
type Auth = 'open' | 'read' | 'write';

/**
 * The routes src/admin/server.ts answers: buildRoutes() (`open: true` is "open", `write: true`
 * is "write", the rest "read"), and the dashboard page that handle() serves at / and /dashboard/.
 * This list must follow server.ts: a route added there is added here, and then must be documented.
 */
const serverRoutes: { method: string; path: string; auth: Auth }[] = [
  { method: 'GET', path: '/health', auth: 'open' },
  { method: 'GET', path: '/ready', auth: 'open' },
  { method: 'GET', path: '/status', auth: 'read' },
  { method: 'GET', path: '/backends', auth: 'read' },
  { method: 'POST', path: '/backends', auth: 'write' },
  { method: 'DELETE', path: '/backends', auth: 'write' },
  { method: 'PATCH', path: '/backends', auth: 'write' },
  { method: 'POST', path: '/backends/drain', auth: 'write' },
  { method: 'POST', path: '/backends/undrain', auth: 'write' },
  { method: 'POST', path: '/backends/enable', auth: 'write' },
  { method: 'POST', path: '/backends/disable', auth: 'write' },
  { method: 'GET', path: '/config', auth: 'read' },
  { method: 'POST', path: '/config/validate', auth: 'read' },
  { method: 'GET', path: '/certificates', auth: 'read' },
  { method: 'POST', path: '/certificates/reload', auth: 'write' },
  { method: 'POST', path: '/certificates/renew', auth: 'write' },
  { method: 'POST', path: '/reload', auth: 'write' },
  { method: 'GET', path: '/metrics', auth: 'read' },
  { method: 'GET', path: '/events', auth: 'read' },
  { method: 'GET', path: '/live', auth: 'read' },
  { method: 'GET', path: '/openapi.json', auth: 'open' },
  { method: 'GET', path: '/', auth: 'open' },
  { method: 'GET', path: '/dashboard/', auth: 'open' },
];

const httpMethods = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const token = 'x'.repeat(24);

/** Every operation of the document: path, upper-case method and the operation object. */
function operations(doc: Json): { path: string; method: string; op: Json }[] {
  const ops: { path: string; method: string; op: Json }[] = [];
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const method of httpMethods) if (item[method] !== undefined) ops.push({ path, method: method.toUpperCase(), op: item[method] });
  }
  return ops;
}

/** Every `$ref` value anywhere in `value`, with where it was found. */
function refs(value: unknown, at = '#', found: { ref: string; at: string }[] = []): { ref: string; at: string }[] {
  if (Array.isArray(value)) value.forEach((v, i) => refs(v, `${at}/${i}`, found));
  else if (value !== null && typeof value === 'object') {
    for (const [key, v] of Object.entries(value)) {
      if (key === '$ref' && typeof v === 'string') found.push({ ref: v, at });
      else refs(v, `${at}/${key}`, found);
    }
  }
  return found;
}

/** The value a local JSON pointer (`#/components/schemas/X`) points at, or undefined. */
function resolve(doc: Json, pointer: string): unknown {
  if (!pointer.startsWith('#/')) return undefined;
  let node: unknown = doc;
  for (const raw of pointer.slice(2).split('/')) {
    const key = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    if (node === null || typeof node !== 'object' || !Object.hasOwn(node, key)) return undefined;
    node = (node as Json)[key];
  }
  return node;
}

test('the document is OpenAPI 3.1 with the package version and a bearer scheme', () => {
  const doc = openApiDocument() as Json;
  assert.match(doc.openapi, /^3\.1\.\d+$/);
  assert.equal(typeof doc.info.title, 'string');
  assert.equal(doc.info.version, version);
  assert.ok(Object.keys(doc.paths).length > 0);
  for (const path of Object.keys(doc.paths)) assert.match(path, /^\//, `path ${path} starts with /`);
  assert.deepEqual(doc.components.securitySchemes.bearer, { ...doc.components.securitySchemes.bearer, type: 'http', scheme: 'bearer' });
  // The document is served as JSON: nothing in it may be lost by JSON.stringify.
  assert.deepEqual(JSON.parse(JSON.stringify(doc)), doc);
});

test('every $ref resolves inside the document', () => {
  const doc = openApiDocument() as Json;
  const found = refs(doc);
  assert.ok(found.length > 20, 'the document uses components through $ref');
  for (const { ref, at } of found) assert.notEqual(resolve(doc, ref), undefined, `${ref} (at ${at}) resolves`);
  // Each schema, response and parameter in components is used somewhere (apart from MethodNotAllowed, which any route can answer).
  const used = new Set(found.map((f) => f.ref));
  for (const kind of ['schemas', 'responses', 'parameters']) {
    for (const name of Object.keys(doc.components[kind])) {
      if (kind === 'responses' && name === 'MethodNotAllowed') continue;
      assert.ok(used.has(`#/components/${kind}/${name}`), `components.${kind}.${name} is used`);
    }
  }
});

test('every operation has a unique operationId and described responses', () => {
  const doc = openApiDocument() as Json;
  const ids = new Set<string>();
  for (const { path, method, op } of operations(doc)) {
    const where = `${method} ${path}`;
    assert.equal(typeof op.operationId, 'string', `${where} has an operationId`);
    assert.ok(!ids.has(op.operationId), `${where}: operationId ${op.operationId} is unique`);
    ids.add(op.operationId);
    assert.equal(typeof op.summary, 'string', `${where} has a summary`);
    assert.ok(op.responses && Object.keys(op.responses).length > 0, `${where} has responses`);
    for (const [code, r] of Object.entries(op.responses as Json)) {
      assert.match(code, /^([1-5]\d\d|[1-5]XX|default)$/, `${where}: response key ${code}`);
      const answer = (r.$ref ? resolve(doc, r.$ref) : r) as Json;
      assert.equal(typeof answer.description, 'string', `${where} ${code} has a description`);
    }
    assert.ok(Array.isArray(op.security), `${where} says whether it needs the token`);
    if (op.security.length > 0) assert.ok('401' in op.responses, `${where} may need the token, so it documents 401`);
  }
});

test('every route the server answers is documented, with the token rule server.ts applies', () => {
  const doc = openApiDocument() as Json;
  for (const route of serverRoutes) {
    const op = doc.paths[route.path]?.[route.method.toLowerCase()];
    assert.ok(op !== undefined, `${route.method} ${route.path} is documented`);
    const expected = { open: [], read: [{}, { bearer: [] }], write: [{ bearer: [] }] }[route.auth];
    assert.deepEqual(op.security, expected, `${route.method} ${route.path} is documented as ${route.auth}`);
  }
  const listed = new Set(serverRoutes.map((r) => `${r.method} ${r.path}`));
  for (const { path, method } of operations(doc)) assert.ok(listed.has(`${method} ${path}`), `${method} ${path} is in serverRoutes (so server.ts has it)`);
});

interface Answer {
  status: number;
  contentType: string;
  body: string;
}

/** One request; an event stream is cut once its headers are in. */
function send(url: string, method: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    // Content-Length always: Node's client sends a DELETE body without any framing otherwise.
    const framing = body === undefined ? {} : { 'content-length': String(Buffer.byteLength(body)) };
    const req = http.request(url, { method, headers: { ...headers, ...framing }, agent: false }, (res) => {
      const contentType = String(res.headers['content-type'] ?? '');
      if (contentType.startsWith('text/event-stream')) {
        res.destroy();
        return resolve({ status: res.statusCode!, contentType, body: '' });
      }
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, contentType, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** True when the server has no such route, or not with this method. */
function unanswered(a: Answer): boolean {
  if (a.status === 405) return true;
  return a.status === 404 && a.contentType.startsWith('application/json') && /^no admin route /.test(JSON.parse(a.body).error ?? '');
}

test('a real admin listener answers every documented path and method', async (t) => {
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const { balancer } = await startBalancer(t, { pools: { web: { upstreams: [backend.url] } }, admin: { host: '127.0.0.1', port: 0, token } });
  const admin = balancer.adminAddress()!.url;
  const doc = openApiDocument() as Json;
  const auth = { authorization: `Bearer ${token}` };

  for (const { path, method, op } of operations(doc)) {
    const where = `${method} ${path}`;
    // An empty JSON object: enough to reach the handler, too little to change anything.
    const body = op.requestBody !== undefined ? '{}' : undefined;
    const headers = body === undefined ? auth : { ...auth, 'content-type': 'application/json' };
    const a = await send(admin + path, method, headers, body);
    assert.ok(!unanswered(a), `${where} exists on the server (got ${a.status} ${a.body.trim()})`);
    assert.ok(String(a.status) in op.responses, `${where}: the status it gave (${a.status} ${a.body.trim()}) is documented`);
    if (a.status >= 400 && a.contentType.startsWith('application/json')) assert.equal(typeof JSON.parse(a.body).error, 'string', `${where}: an error is {"error": ...}`);

    // Without the token: writes are refused; open routes and loopback reads are not.
    const anonymous = await send(admin + path, method, body === undefined ? {} : { 'content-type': 'application/json' }, body);
    if (op.security.length === 1) assert.equal(anonymous.status, 401, `${where} without the token`);
    else assert.notEqual(anonymous.status, 401, `${where} without the token on loopback`);
  }

  // Each documented path takes no method beyond the documented ones.
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const method of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']) {
      if (item[method.toLowerCase()] !== undefined) continue;
      const a = await send(admin + path, method, { ...auth, 'content-type': 'application/json' }, '{}');
      assert.ok(unanswered(a), `${method} ${path} is not documented, so the server must not answer it (got ${a.status} ${a.body.trim()})`);
    }
  }

  // The served document is this document.
  const served = await send(`${admin}/openapi.json`, 'GET', {});
  assert.equal(served.status, 200);
  assert.deepEqual(JSON.parse(served.body), JSON.parse(JSON.stringify(doc)));

  // A path that is no route says so (what unanswered() relies on).
  assert.ok(unanswered(await send(`${admin}/no-such-route`, 'GET', auth)));
});

/** The keys of `value` that `schema` (an object schema of the document) does not list, and the required ones `value` lacks. */
function schemaDrift(schema: Json, value: Json): { undocumented: string[]; missing: string[] } {
  const documented = Object.keys(schema.properties ?? {});
  return { undocumented: Object.keys(value).filter((k) => !documented.includes(k)), missing: (schema.required ?? []).filter((k: string) => !(k in value)) };
}

test('the certificate answers of a balancer with an https listener have the documented shapes', async (t) => {
  const ca = await makeTestCa(t);
  const site = await ca.issue('site');
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const { balancer } = await startBalancer(t, {
    listeners: [{ name: 'secure', host: '127.0.0.1', port: 0, protocol: 'https', tls: { certificates: [{ cert: site.certPath, key: site.keyPath }], watch: false } }],
    pools: { web: { upstreams: [backend.url] } },
    admin: { host: '127.0.0.1', port: 0, token },
  });
  const admin = balancer.adminAddress()!.url;
  const doc = openApiDocument() as Json;
  const schemas = doc.components.schemas as Json;
  const auth = { authorization: `Bearer ${token}` };

  const status = JSON.parse((await send(`${admin}/status`, 'GET', auth)).body) as Json;
  assert.deepEqual(schemaDrift(schemas.StatusResponse, status), { undocumented: [], missing: [] }, 'GET /status');
  assert.equal(status.certificates.length, 1);
  assert.deepEqual(schemaDrift(schemas.CertificateStatus, status.certificates[0]), { undocumented: [], missing: [] }, 'a certificate of /status');
  assert.equal(status.certificates[0].serial, site.serial);
  const listed = JSON.parse((await send(`${admin}/certificates`, 'GET', auth)).body);
  assert.deepEqual(listed, status.certificates);

  const reloaded = await send(`${admin}/certificates/reload`, 'POST', auth);
  assert.equal(reloaded.status, 200);
  const body = JSON.parse(reloaded.body) as Json;
  assert.deepEqual(schemaDrift(schemas.CertificateReloadResponse, body), { undocumented: [], missing: [] });
  assert.deepEqual(schemaDrift(schemas.CertificateReloadResult, body.listeners[0]), { undocumented: [], missing: [] });

  // A key file that is no longer a key: 422, documented, with the file named.
  writeFileSync(site.keyPath, 'not a key\n');
  const refused = await send(`${admin}/certificates/reload`, 'POST', auth);
  assert.equal(refused.status, 422);
  assert.ok('422' in doc.paths['/certificates/reload'].post.responses);
  const failed = JSON.parse(refused.body) as Json;
  assert.equal(failed.ok, false);
  assert.deepEqual(schemaDrift(schemas.CertificateReloadResult, failed.listeners[0]), { undocumented: [], missing: [] });
  assert.ok(failed.listeners[0].failed.some((f: Json) => f.file === site.keyPath), refused.body);
  assert.deepEqual(schemaDrift(schemas.CertificateStatus, JSON.parse((await send(`${admin}/certificates`, 'GET', auth)).body)[0]), { undocumented: [], missing: [] });

  // Renewal of a domain no listener orders: the documented 404.
  const renew = await send(`${admin}/certificates/renew`, 'POST', { ...auth, 'content-type': 'application/json' }, '{"domain": "example.org"}');
  assert.equal(renew.status, 404);
  assert.ok('404' in doc.paths['/certificates/renew'].post.responses);
});
