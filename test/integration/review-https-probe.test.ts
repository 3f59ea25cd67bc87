import { test } from 'node:test';
import tls from 'node:tls';
import { makeTestCa } from '../helpers/tls.ts';
import { startBackend, startBalancer } from '../helpers/servers.ts';

test('probe', async (t) => {
  const ca = await makeTestCa(t);
  const server = await ca.issue('server');
  const backend = await startBackend(t, (_req, res) => res.end('ok'));
  const lb = await startBalancer(t, {
    listeners: [{ host: '127.0.0.1', port: 0, protocol: 'https', name: 'plain', limits: { headers_timeout: '2s' }, tls: { handshake_timeout: '1s', certificates: [{ cert: server.certPath, key: server.keyPath }] } }],
    pools: { web: { upstreams: [backend.url] } },
  } as never);
  const port = lb.port;
  const open = () => lb.balancer.status().listeners[0].open_connections;
  for (const [label, act] of [
    ['end with request', (s: tls.TLSSocket) => s.end('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['write request', (s: tls.TLSSocket) => s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')],
    ['end', (s: tls.TLSSocket) => s.end()],
    ['destroy', (s: tls.TLSSocket) => s.destroy()],
    ['end tls1.2', (s: tls.TLSSocket) => s.end()],
  ] as const) {
    const got = await new Promise<string>((resolve) => {
      let data = '';
      const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, servername: 'localhost', ...(label.includes('1.2') ? { maxVersion: 'TLSv1.2' as const } : {}) }, () => act(s));
      s.on('data', (d) => (data += d));
      s.on('close', () => resolve(data.split('\r\n')[0]));
      s.on('error', (e) => resolve('error ' + e.message));
      setTimeout(() => { resolve('no close in 3s: ' + data.split('\r\n')[0]); s.destroy(); }, 3000);
    });
    await new Promise((r) => setTimeout(r, 300));
    console.error(label, '->', got, '| open', open());
  }
});
