/**
 * Certificates that change under a running HTTPS listener (watch, SIGHUP-style reload, the admin
 * API), broken files that keep the old certificate, config errors that name file, line and key,
 * `fulcrum check`'s report, and client certificates (mTLS).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { makeTestCa, handshake, httpsGet, startHttpsSite } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';
import { startFulcrumProcess } from '../helpers/fulcrum-process.ts';
import { eventually } from '../helpers/eventually.ts';
import { createBalancer, loadConfigText, ConfigError } from '../../src/index.ts';

const ADMIN_TOKEN = 'test-token-0123456789abcdef';

const run = promisify(execFile);
const node = process.execPath;
const cli = path.resolve(import.meta.dirname, '../../bin/fulcrum.js');

test('a certificate replaced under load: 0 failed requests, new handshakes show the new serial', async (t) => {
  const { ca, site: first, lb } = await startHttpsSite(t);
  // Load: four clients, each a new connection (a new handshake) per request, until told to stop.
  let stop = false;
  let ok = 0;
  const failures: string[] = [];
  const serials = new Set<string>();
  const client = async (): Promise<void> => {
    while (!stop) {
      try {
        const r = await httpsGet(`https://127.0.0.1:${lb.port}/`, { ca: ca.ca.cert });
        serials.add((r.socket.getPeerCertificate() as { serialNumber: string }).serialNumber ?? '');
        if (r.status === 200) ok++;
        else failures.push(`status ${r.status}`);
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  };
  const load = Promise.all([client(), client(), client(), client()]);
  await eventually(() => ok >= 20, { what: 'load to start' });
  // Renewed in place, as certbot or an operator does: new files renamed over the old ones.
  const second = await ca.issue('site');
  assert.notEqual(second.serial, first.serial);
  await eventually(async () => (await handshake(lb.port)).serial === second.serial, { what: 'the new certificate in new handshakes', timeout: 5000 });
  const atSwap = ok;
  await eventually(() => ok >= atSwap + 20, { what: 'load after the swap' });
  stop = true;
  await load;
  assert.deepEqual(failures, []);
  assert.ok(serials.has(first.serial) && serials.has(second.serial), 'clients saw both certificates');
  const line = lb.logs.find((l) => l.includes('reloaded') && l.includes(second.serial));
  assert.ok(line, 'the reload is logged with the new serial');
});

test('a broken file keeps the old certificate and says why with its path; the admin API and a reload read files again', async (t) => {
  const { ca, site: first, lb } = await startHttpsSite(t, { tls: { watch: false }, config: { admin: { host: '127.0.0.1', port: 0, token: ADMIN_TOKEN } } });
  const admin = lb.balancer.adminAddress()!;
  // A key that belongs to another certificate: refused, the old pair stays, the log names the file.
  const other = await ca.issue('other');
  fs.writeFileSync(first.keyPath, other.key);
  const refused = await fetch(`${admin.url}/certificates/reload`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(refused.status, 422);
  const report = (await refused.json()) as { listeners: { failed: { file: string; reason: string }[] }[] };
  assert.equal(report.listeners[0].failed[0].file, first.keyPath);
  assert.match(report.listeners[0].failed[0].reason, /does not match the certificate/);
  assert.ok(lb.logs.some((l) => l.includes(first.keyPath) && l.includes('stays in use')));
  assert.equal((await handshake(lb.port)).serial, first.serial);
  const status = lb.balancer.status().certificates;
  assert.equal(status.length, 1);
  assert.match(status[0].error ?? '', /does not match/);
  // Garbage in the certificate file: the same.
  fs.writeFileSync(first.certPath, 'not a certificate\n');
  assert.equal(lb.balancer.reloadCertificates()[0].failed[0].file, first.certPath);
  assert.equal((await handshake(lb.port)).serial, first.serial);
  // A good pair again: taken by the next reload (what SIGHUP does), serial in the answer.
  const renewed = await ca.issue('site');
  const result = lb.balancer.reloadCertificates();
  assert.deepEqual(result[0].failed, []);
  assert.equal(result[0].changed[0].serial, renewed.serial);
  assert.equal((await handshake(lb.port)).serial, renewed.serial);
  assert.equal(lb.balancer.status().certificates[0].error, null);
});

test('certificate problems at start and on reload name the file, line and key; the reload is refused and the old certificate stays', async (t) => {
  const ca = await makeTestCa(t);
  const good = await ca.issue('site');
  const other = await ca.issue('other');
  const dir = ca.dir;
  const yaml = (cert: string, key: string): string =>
    `listeners:\n  - host: 127.0.0.1\n    port: 0\n    protocol: https\n    tls:\n      watch: false\n      certificates:\n        - cert: ${cert}\n          key: ${key}\npools:\n  web:\n    upstreams: [http://127.0.0.1:1]\n`;
  const file = path.join(dir, 'fulcrum.yaml');
  // Missing file.
  fs.writeFileSync(file, yaml('missing.crt', good.keyPath));
  assert.throws(
    () => createBalancer(loadConfigText(fs.readFileSync(file, 'utf8'), file)),
    (err: ConfigError) => err instanceof ConfigError && /fulcrum\.yaml:8:\d+: listeners\[0\]\.tls\.certificates\[0\]\.cert: .*missing\.crt: cannot read: no such file/.test(err.message),
  );
  // A key of another certificate: the key line.
  fs.writeFileSync(file, yaml(good.certPath, other.keyPath));
  assert.throws(() => createBalancer(loadConfigText(fs.readFileSync(file, 'utf8'), file)), /fulcrum\.yaml:9:\d+: listeners\[0\]\.tls\.certificates\[0\]\.key: .*other\.key: the private key does not match/);
  // https without tls, tls on http, hsts on http.
  assert.throws(() => loadConfigText('listeners:\n  - protocol: https\npools:\n  web:\n    upstreams: [http://127.0.0.1:1]\n', 'a.yaml'), /a\.yaml:2:\d+: listeners\[0\]\.protocol: an https listener needs `tls`/);
  assert.throws(() => loadConfigText(`listeners:\n  - tls:\n      certificates: [{cert: ${good.certPath}}]\npools:\n  web:\n    upstreams: [http://127.0.0.1:1]\n`, 'b.yaml'), /b\.yaml:2:\d+: listeners\[0\]\.tls: tls is for https listeners/);
  // Two defaults, a subject header Fulcrum writes itself, a preload HSTS without its requirements.
  const listener = (tls: string, extra = ''): string => `listeners:\n  - protocol: https\n${extra}    tls:\n${tls}pools:\n  web:\n    upstreams: [http://127.0.0.1:1]\n`;
  assert.throws(() => loadConfigText(listener(`      certificates:\n        - {cert: a.pem, default: true}\n        - {cert: b.pem, default: true}\n`), 'c.yaml'), /c\.yaml:\d+:\d+: listeners\[0\]\.tls\.certificates\[1\]\.default: certificates\[0\] is already the default/);
  assert.throws(() => loadConfigText(listener(`      certificates: [{cert: a.pem}]\n      client_auth: {ca: ca.pem, subject_header: X_Forwarded_For}\n`), 'd.yaml'), /listeners\[0\]\.tls\.client_auth\.subject_header: X_Forwarded_For is a header Fulcrum sets or reads itself/);
  assert.throws(() => loadConfigText(listener(`      certificates: [{cert: a.pem}]\n`, `    hsts: {max_age: 30d, preload: true}\n`), 'e.yaml'), /listeners\[0\]\.hsts\.preload: the browsers' preload list needs include_subdomains: true and max_age of a year/);
  // A running balancer: a reload to a broken file is refused and the running certificate stays.
  fs.writeFileSync(file, yaml(good.certPath, good.keyPath));
  const loaded = loadConfigText(fs.readFileSync(file, 'utf8'), file);
  const balancer = createBalancer(loaded, { configFile: file });
  t.after(() => balancer.close(100));
  const [address] = await balancer.start();
  fs.writeFileSync(file, yaml(good.certPath, other.keyPath));
  await assert.rejects(balancer.reloadFile('signal'), /fulcrum\.yaml:9:\d+: listeners\[0\]\.tls\.certificates\[0\]\.key/);
  assert.equal((await handshake(address.port)).serial, good.serial);
});

test('fulcrum check reports names, dates, expiry, key mismatch and chain order', async (t) => {
  const ca = await makeTestCa(t);
  const fine = await ca.issue('fine', { names: ['fine.test', '*.fine.test'], days: 90 });
  const soon = await ca.issue('soon', { names: ['soon.test'], days: 10 });
  const expired = await ca.issue('expired', { names: ['old.test'], notBefore: new Date(Date.now() - 40 * 86_400_000), notAfter: new Date(Date.now() - 86_400_000) });
  // Chain in the wrong order: CA first, then the leaf.
  const reversed = path.join(ca.dir, 'reversed.pem');
  fs.writeFileSync(reversed, ca.ca.cert + fine.cert + fine.key);
  const chained = path.join(ca.dir, 'chained.pem');
  fs.writeFileSync(chained, fine.cert + ca.ca.cert);
  const config = (certs: string): string => `listeners:\n  - port: 0\n    protocol: https\n    tls:\n      certificates:\n${certs}pools:\n  web:\n    upstreams: [http://127.0.0.1:1]\n`;
  const ok = path.join(ca.dir, 'ok.yaml');
  fs.writeFileSync(ok, config(`        - cert: ${chained}\n          key: ${fine.keyPath}\n        - cert: ${soon.bothPath}\n`));
  const good = await run(node, [cli, 'check', ok]);
  assert.match(good.stdout, /certificates\[0\] \(.*chained\.pem\): covers fine\.test, \*\.fine\.test; serial [0-9A-F]+; valid .* \(8\d days left\)/);
  assert.match(good.stdout, /certificates\[1\] .*warning: expires in 9 days/);
  assert.match(good.stdout, /ok\.yaml: ok/);
  const bad = path.join(ca.dir, 'bad.yaml');
  fs.writeFileSync(bad, config(`        - cert: ${expired.bothPath}\n        - cert: ${reversed}\n`));
  const failed = await run(node, [cli, 'check', bad]).then(
    () => assert.fail('check must fail'),
    (err: { code: number; stderr: string }) => err,
  );
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /certificates\[0\] .*error: expired on/);
  // The leaf is not first: the key matches the second certificate.
  assert.match(failed.stderr, /bad\.yaml:\d+:\d+: listeners\[0\]\.tls\.certificates\[1\]\.cert: .*reversed\.pem: the private key belongs to certificate 2 .* put the server's certificate first/);
});

test('client certificates: required refuses clients without a verified one and counts them; the verified subject goes upstream', async (t) => {
  const ca = await makeTestCa(t);
  const server = await ca.issue('server');
  const alice = await ca.issue('alice', { names: [], commonName: 'alice', organization: 'Example', usage: 'client' });
  const stranger = await ca.selfSigned('stranger', { names: [], commonName: 'mallory', usage: 'client' });
  const backend = await startBackend(t, (req, res) => res.end(String(req.headers['x-client-subject'] ?? '(none)')));
  const tlsSettings = (mode: string) => ({ certificates: [{ cert: server.certPath, key: server.keyPath }], client_auth: { mode, ca: ca.caPath, subject_header: 'X-Client-Subject' } });
  const lb = await startBalancer(t, {
    listeners: [
      { host: '127.0.0.1', port: 0, protocol: 'https', name: 'required', tls: tlsSettings('required') },
      { host: '127.0.0.1', port: 0, protocol: 'https', name: 'optional', tls: tlsSettings('optional') },
    ],
    pools: { web: { upstreams: [backend.url] } },
  } as never);
  const [required, optional] = lb.balancer.addresses();
  const call = (port: number, options: https.RequestOptions = {}) => httpsGet(`https://127.0.0.1:${port}/`, { ca: ca.ca.cert, headers: { 'x-client-subject': 'CN=forged' }, ...options });
  assert.equal((await call(required.port, { cert: alice.cert, key: alice.key })).body, 'CN=alice,O=Example');
  await assert.rejects(call(required.port));
  await assert.rejects(call(required.port, { cert: stranger.cert, key: stranger.key }));
  // Optional: no certificate passes without the header (and the client's own is removed).
  assert.equal((await call(optional.port)).body, '(none)');
  assert.equal((await call(optional.port, { cert: stranger.cert, key: stranger.key })).body, '(none)');
  assert.equal((await call(optional.port, { cert: alice.cert, key: alice.key })).body, 'CN=alice,O=Example');
  const scrape = await lb.balancer.metrics.scrape();
  assert.match(scrape.body, /lb_tls_handshake_failures_total\{listener="required",reason="client_certificate"\} 2/);
  assert.equal(backend.requests.length, 4);
});

test('SIGHUP to a running fulcrum reads renewed certificate files (watch off); open connections keep theirs', async (t) => {
  const ca = await makeTestCa(t);
  const first = await ca.issue('site');
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const proc = await startFulcrumProcess(
    t,
    `listeners:\n  - host: 127.0.0.1\n    port: 0\n    protocol: https\n    tls:\n      watch: false\n      certificates:\n        - cert: ${first.certPath}\n          key: ${first.keyPath}\npools:\n  web:\n    upstreams: [${backend.url}]\n`,
  );
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: ca.ca.cert });
  t.after(() => agent.destroy());
  const before = await httpsGet(`${proc.url}/`, { agent });
  assert.equal((before.socket.getPeerCertificate() as { serialNumber: string }).serialNumber, first.serial);
  const renewed = await ca.issue('site');
  proc.child.kill('SIGHUP');
  await eventually(async () => (await handshake(proc.port)).serial === renewed.serial, { what: 'SIGHUP to load the renewed certificate' });
  // The kept-alive connection made before still works, on the certificate it was made with.
  const after = await httpsGet(`${proc.url}/`, { agent });
  assert.equal(after.status, 200);
  assert.equal(after.socket, before.socket);
  assert.equal((after.socket.getPeerCertificate() as { serialNumber: string }).serialNumber, first.serial);
  assert.match(proc.output(), new RegExp(`reloaded \\(serial ${renewed.serial}\\)`));
});
