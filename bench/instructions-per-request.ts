/**
 * Instructions per proxied request, counted by valgrind (repeatable where wall-clock figures on a
 * shared 2-core machine are not). Runs a balancer from the tree given and N keep-alive GETs over
 * 8 connections in one process, against a backend you start on 127.0.0.1:39001:
 *
 *   node -e "require('http').createServer((q,s)=>s.end('hello world')).listen(39001,'127.0.0.1')" &
 *   for n in 0 2000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
 *     node_modules/node/bin/node --single-threaded bench/instructions-per-request.ts "$PWD" $n 2>&1 | grep Collected; done
 *
 * (Collected at 2000 - Collected at 0) / 2000 is the cost of one request, client side included
 * (the same for every tree, so two trees compare as a ratio). Pass another checkout's path as
 * the first argument (`git worktree add /tmp/old <rev>`) to compare with it.
 */
import http from 'node:http';

const [dir, count] = process.argv.slice(2);
const n = Number(count ?? 0);
const { createBalancer } = (await import(`${dir ?? '..'}/src/index.ts`)) as typeof import('../src/index.ts');
const balancer = createBalancer({
  listeners: [{ host: '127.0.0.1', port: 0 }],
  pools: { backend: { upstreams: ['http://127.0.0.1:39001'] } },
  log: { level: 'info', format: 'json', access_log: true },
});
const [address] = await balancer.start();
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
let sent = 0;
await new Promise<void>((resolve) => {
  let open = 8;
  const next = (): void => {
    if (sent >= n) {
      if (--open === 0) resolve();
      return;
    }
    sent++;
    http.get({ port: address.port, host: '127.0.0.1', agent }, (res) => {
      res.resume();
      res.on('end', next);
    });
  };
  for (let c = 0; c < 8; c++) next();
});
await balancer.close(100);
process.exit(0);
