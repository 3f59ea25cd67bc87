/**
 * The admin API's OpenAPI 3.1 document, served at `/openapi.json`. It describes what
 * `server.ts` answers and the shapes in `types.ts`; `test/unit/admin-openapi.test.ts` checks
 * that every documented route exists on a real admin listener and that every route is documented.
 */
import { version } from '../version.ts';

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const response = (name: string) => ({ $ref: `#/components/responses/${name}` });

/** Reads: open on loopback (listener and caller), the token otherwise. */
const readSecurity = [{}, { bearer: [] }];
/** Writes: the token always. */
const writeSecurity = [{ bearer: [] }];
/** Probes and this document: never a token. */
const openSecurity: unknown[] = [];

const backendExample = {
  url: 'http://localhost:8085',
  id: 'localhost:8085',
  pool: 'web',
  alive: true,
  healthy: true,
  current_connections: 0,
  requests: 0,
  failures: 0,
  weight: 1,
  health: 'healthy',
  enabled: true,
  draining: false,
  ejected: false,
  ejections: 0,
  circuit: 'closed',
  panic: false,
  runtime_only: true,
};

const certificateExample = {
  listener: 'https',
  source: '/etc/fulcrum/example.com.crt + /etc/fulcrum/example.com.key',
  names: ['example.com', 'www.example.com'],
  serial: '1F3A9C0B77D2E4A85C6B0E1D9F2A4C31',
  not_before: '2025-01-01T00:00:00.000Z',
  not_after: '2025-04-01T00:00:00.000Z',
  days_left: 80,
  warning_days: 21,
  is_default: true,
  error: null,
};

/** The seeds' `/status` (seed 004) with Fulcrum's fields beside it. */
const statusExample = {
  total_backends: 3,
  active_backends: 2,
  backends: [
    { ...backendExample, url: 'http://localhost:8082', id: 'localhost:8082', alive: true, current_connections: 5, requests: 1204, runtime_only: false },
    { ...backendExample, url: 'http://localhost:8083', id: 'localhost:8083', alive: false, current_connections: 0, requests: 310, failures: 7, health: 'unhealthy', runtime_only: false },
    { ...backendExample, url: 'http://localhost:8084', id: 'localhost:8084', alive: true, current_connections: 3, requests: 1187, runtime_only: false },
  ],
  pools: [{ name: 'web', protocol: 'http1', policy: 'round-robin', upstreams: 3, available: 2, backup: null }],
  listeners: [
    { name: '0.0.0.0:8080', protocol: 'http', url: 'http://0.0.0.0:8080', open_connections: 12, refused_connections: 0, http2_sessions: 0, http2_streams: 0 },
    { name: 'https', protocol: 'https', url: 'https://0.0.0.0:8443', open_connections: 4, refused_connections: 0, http2_sessions: 3, http2_streams: 7 },
  ],
  certificates: [certificateExample],
  acme: [],
  config_file: '/etc/fulcrum/fulcrum.yaml',
  config_loaded_at: '2025-01-10T09:30:00.000Z',
  persisted: false,
  runtime_changes: [],
  restart_needed: [],
  uptime_seconds: 3600,
  version,
};

const liveBackendExample = {
  pool: 'web',
  id: 'localhost:8082',
  rps: 41,
  error_rate: 0,
  p50_ms: 2.1,
  p99_ms: 9.5,
  in_flight: 1,
  tunnels_open: 0,
  alive: true,
  health: 'healthy',
  enabled: true,
  draining: false,
  ejected: false,
  ejections: 0,
  circuit: 'closed',
  panic: false,
  weight: 1,
  requests: 1204,
};

const liveExample = {
  t: 1736501400000,
  rps: 41,
  error_rate: 0,
  p50_ms: 2.1,
  p99_ms: 9.5,
  rate_limited_per_s: 0,
  rate_limited_total: 3,
  requests_total: 2701,
  in_flight: 1,
  tunnels_open: 0,
  backends: [liveBackendExample],
};

/** A JSON body naming one upstream (the backend state writes). */
const backendRefBody = {
  required: true,
  description: 'The upstream. Other known fields (`weight`, `max_connections`, `enabled`, `draining`) are accepted and ignored; unknown fields are a 400.',
  content: { 'application/json': { schema: ref('BackendRef'), example: { url: 'http://localhost:8085' } } },
};

/** The answers every backend write can give besides its success. */
const backendWriteErrors = {
  '400': response('BadRequest'),
  '401': response('Unauthorized'),
  '404': response('NotFound'),
  '413': response('PayloadTooLarge'),
  '500': response('InternalError'),
};

function stateWrite(operationId: string, summary: string, description: string, example: string, after: Record<string, boolean>) {
  return {
    post: {
      operationId,
      tags: ['backends'],
      summary,
      description: `${description} State changes are never written to the configuration file: they are runtime-only (\`runtime_only: true\`) and listed in \`/status\` \`runtime_changes\`. Upstream state survives reloads.`,
      security: writeSecurity,
      requestBody: backendRefBody,
      responses: {
        '200': {
          description: 'Done (also when the upstream was already in that state: `changes` is then empty).',
          content: { 'application/json': { schema: ref('BackendWriteResponse'), example: { ok: true, changes: [example], backend: { ...backendExample, ...after }, runtime_only: true } } },
        },
        ...backendWriteErrors,
      },
    },
  };
}

/** The admin API's OpenAPI 3.1 document (served at /openapi.json). */
export function openApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: {
      title: 'Fulcrum admin API',
      version,
      summary: 'Status, backends, configuration, reload, metrics and live events of one Fulcrum process.',
      description: [
        'The admin API listens on its own socket (`admin.host`, `admin.port`; default 127.0.0.1:9901). It is off unless the configuration has an `admin:` section.',
        '',
        '**Token.** Send `Authorization: Bearer <token>`. Writes always need it. Reads need it unless both the admin listener and the caller are on loopback. `/health`, `/ready`, `/openapi.json` and the dashboard page never need it.',
        'A missing token answers 401 and a `WWW-Authenticate: Bearer realm="fulcrum-admin"` header; so does a wrong one.',
        '',
        '**Errors.** Every error is JSON: `{"error": "<what is wrong>"}`, plus `problems` (file, line, column, key path, message) when a configuration is invalid. A path that is not a route answers 404 `{"error": "no admin route /x; the routes are in /openapi.json"}`. A method the path does not take answers 405 with an `Allow` header. An unexpected failure answers 500 `{"error": "internal error: ..."}`.',
        '',
        '**Requests.** Bodies are read up to 1 MiB (more: 413). JSON bodies are parsed whatever the Content-Type (`curl -d` sends form encoding by default). A trailing slash is ignored (`/status/` is `/status`). Every GET route also answers HEAD.',
      ].join('\n'),
      license: { name: 'MIT', identifier: 'MIT' },
    },
    servers: [{ url: 'http://127.0.0.1:9901', description: 'The default admin listener' }],
    tags: [
      { name: 'probes', description: 'Liveness and readiness, open to anyone.' },
      { name: 'status', description: 'Upstreams, pools, listeners, certificates and runtime changes.' },
      { name: 'backends', description: 'Add, remove, re-weight, drain, enable and disable upstreams at runtime.' },
      { name: 'config', description: 'The configuration in force, validation and reload.' },
      { name: 'certificates', description: 'The certificates of the https listeners: days left, reading the files again, ACME renewal.' },
      { name: 'observe', description: 'Prometheus metrics and the live numbers behind the dashboard.' },
      { name: 'dashboard', description: 'The live dashboard page (admin.dashboard).' },
    ],
    paths: {
      '/health': {
        get: {
          operationId: 'getHealth',
          tags: ['probes'],
          summary: 'Liveness: the process answers.',
          security: openSecurity,
          responses: {
            '200': { description: 'Alive.', content: { 'application/json': { schema: ref('HealthResponse'), example: { status: 'ok', uptime_seconds: 3600 } } } },
          },
        },
      },
      '/ready': {
        get: {
          operationId: 'getReady',
          tags: ['probes'],
          summary: 'Readiness: at least one upstream takes traffic.',
          security: openSecurity,
          responses: {
            '200': { description: 'Ready: some upstream in some pool is available.', content: { 'application/json': { schema: ref('ReadyResponse'), example: { ready: true, active_backends: 2, unavailable_pools: [] } } } },
            '503': {
              description: 'Not ready: no upstream is available in any pool.',
              content: { 'application/json': { schema: ref('ReadyResponse'), example: { ready: false, active_backends: 0, unavailable_pools: ['web'], reason: 'no upstream is available in any pool' } } },
            },
          },
        },
      },
      '/status': {
        get: {
          operationId: 'getStatus',
          tags: ['status'],
          summary: 'Every upstream, pool, listener and certificate, and the changes a restart would lose.',
          description: 'The seeds\' shape (`total_backends`, `active_backends`, `backends[].url`, `alive`, `current_connections`, `requests`) with Fulcrum\'s state beside it.',
          security: readSecurity,
          responses: {
            '200': { description: 'The status.', content: { 'application/json': { schema: ref('StatusResponse'), example: statusExample } } },
            '401': response('Unauthorized'),
          },
        },
      },
      '/backends': {
        get: {
          operationId: 'listBackends',
          tags: ['backends'],
          summary: 'Every upstream of every pool (the `backends` of `/status`).',
          security: readSecurity,
          responses: {
            '200': { description: 'The upstreams.', content: { 'application/json': { schema: { type: 'array', items: ref('BackendStatus') }, example: statusExample.backends } } },
            '401': response('Unauthorized'),
          },
        },
        post: {
          operationId: 'addBackend',
          tags: ['backends'],
          summary: 'Add an upstream to a pool.',
          description:
            'Applied through the same validate-then-swap path as a reload. `pool` may be left out when there is one pool. Runtime-only unless `admin.persist` is on (then the pool\'s upstream list is written back to the configuration file).',
          security: writeSecurity,
          requestBody: {
            required: true,
            content: {
              'application/json': {
                schema: ref('AddBackendRequest'),
                examples: {
                  seed: { summary: "The seeds' request", value: { url: 'http://localhost:8085' } },
                  full: { summary: 'With a pool, weight and connection limit', value: { url: 'http://10.0.0.4:8080', pool: 'api', weight: 2, max_connections: 100 } },
                },
              },
            },
          },
          responses: {
            '201': {
              description: 'Added.',
              content: { 'application/json': { schema: ref('BackendWriteResponse'), example: { ok: true, changes: ['pool web: +1 upstream localhost:8085'], backend: backendExample, runtime_only: true } } },
            },
            '400': response('BadRequest'),
            '401': response('Unauthorized'),
            '404': response('NotFound'),
            '409': response('Conflict'),
            '413': response('PayloadTooLarge'),
            '500': response('InternalError'),
          },
        },
        delete: {
          operationId: 'removeBackend',
          tags: ['backends'],
          summary: 'Remove an upstream from its pool.',
          description:
            'Name the upstream with a JSON body (the seeds\' way) or with `?url=` and `?pool=` (for clients that cannot send a body with DELETE); when `url` is in the query the body is not read. Requests in flight to it finish. A pool keeps at least one upstream (409).',
          security: writeSecurity,
          parameters: [{ $ref: '#/components/parameters/UrlQuery' }, { $ref: '#/components/parameters/PoolQuery' }],
          requestBody: {
            required: false,
            description: 'Required unless `url` is given in the query.',
            content: { 'application/json': { schema: ref('BackendRef'), example: { url: 'http://localhost:8082' } } },
          },
          responses: {
            '200': {
              description: 'Removed.',
              content: { 'application/json': { schema: ref('ApplyResponse'), example: { ok: true, changes: ['pool web: -1 upstream localhost:8082'], runtime_only: true } } },
            },
            '400': response('BadRequest'),
            '401': response('Unauthorized'),
            '404': response('NotFound'),
            '409': response('Conflict'),
            '413': response('PayloadTooLarge'),
            '500': response('InternalError'),
          },
        },
        patch: {
          operationId: 'updateBackend',
          tags: ['backends'],
          summary: "Change an upstream's weight, enabled or draining state in one call.",
          description:
            'A weight change is a configuration change (written back with `admin.persist`); `enabled` and `draining` are state and always runtime-only. `runtime_only` in the answer is true when the upstream now differs from the configuration file (a restart would lose the difference): after a state change, or a weight change without `admin.persist`.',
          security: writeSecurity,
          requestBody: {
            required: true,
            content: { 'application/json': { schema: ref('UpdateBackendRequest'), example: { url: 'http://localhost:8085', weight: 3 } } },
          },
          responses: {
            '200': {
              description: 'Changed (`changes` is empty when nothing differed).',
              content: {
                'application/json': {
                  schema: ref('BackendWriteResponse'),
                  example: { ok: true, changes: ['pool web: weight of localhost:8085 1 -> 3'], backend: { ...backendExample, weight: 3 }, runtime_only: true },
                },
              },
            },
            ...backendWriteErrors,
          },
        },
      },
      '/backends/drain': stateWrite('drainBackend', 'Drain an upstream: no new requests; those in flight finish.', 'Sets `draining: true`.', 'pool web: localhost:8085 draining', { draining: true, alive: false }),
      '/backends/undrain': stateWrite('undrainBackend', 'Put a drained upstream back in rotation.', 'Sets `draining: false`.', 'pool web: localhost:8085 no longer draining', {}),
      '/backends/enable': stateWrite('enableBackend', 'Enable an upstream (and end a drain).', 'Sets `enabled: true` and `draining: false`.', 'pool web: localhost:8085 enabled', {}),
      '/backends/disable': stateWrite('disableBackend', 'Disable an upstream: it takes no new requests until enabled.', 'Sets `enabled: false`.', 'pool web: localhost:8085 disabled', { enabled: false, alive: false }),
      '/config': {
        get: {
          operationId: 'getConfig',
          tags: ['config'],
          summary: 'The configuration in force, with secrets hidden.',
          description:
            'The validated configuration (defaults filled in, durations in milliseconds) with the runtime changes applied. `admin.token` reads `(hidden)`; a password in `rate_limit.redis.url` too.',
          security: readSecurity,
          responses: {
            '200': {
              description: 'The configuration and the file it came from.',
              content: {
                'application/json': {
                  schema: ref('ConfigResponse'),
                  example: { file: '/etc/fulcrum/fulcrum.yaml', config: { listeners: [{ host: '0.0.0.0', port: 8080 }], pools: { web: { policy: 'round-robin', upstreams: [{ url: 'http://localhost:8082', weight: 1, max_connections: 0 }] } }, admin: { host: '127.0.0.1', port: 9901, token: '(hidden)', dashboard: true, persist: false } } },
                },
              },
            },
            '401': response('Unauthorized'),
          },
        },
      },
      '/config/validate': {
        post: {
          operationId: 'validateConfig',
          tags: ['config'],
          summary: 'Check a configuration without applying it.',
          description:
            'The body is a whole configuration file, YAML or JSON, as text (any Content-Type). It is checked exactly as a reload would check it (environment overrides included) and compared with the configuration in force. Nothing changes: this is not a write, so it needs the token only where reads do.',
          security: readSecurity,
          parameters: [
            {
              name: 'name',
              in: 'query',
              required: false,
              description: 'The file name used in problems (default `<request body>`). A name ending in `.json` makes the text parsed as strict JSON.',
              schema: { type: 'string' },
              example: 'fulcrum.yaml',
            },
          ],
          requestBody: {
            required: true,
            content: {
              'application/yaml': { schema: { type: 'string' }, example: 'pools:\n  web:\n    upstreams: [http://localhost:8082, http://localhost:8083]\n' },
              'text/plain': { schema: { type: 'string' } },
              'application/json': { schema: { type: 'object', description: 'A configuration in JSON.' }, example: { pools: { web: { upstreams: ['http://localhost:8082'] } } } },
            },
          },
          responses: {
            '200': {
              description: 'Valid. `changes` is the semantic diff from the configuration in force.',
              content: { 'application/json': { schema: ref('ValidateResponse'), example: { ok: true, valid: true, warnings: [], changes: ['pool web: +1 upstream localhost:8083'] } } },
            },
            '400': response('BadRequest'),
            '401': response('Unauthorized'),
            '413': response('PayloadTooLarge'),
            '422': {
              description: 'Invalid: every problem, each with file, line and column.',
              content: {
                'application/json': {
                  schema: ref('ValidateFailure'),
                  example: {
                    error: 'the configuration has 1 problem(s)',
                    valid: false,
                    problems: [{ file: '<request body>', line: 4, column: 7, path: 'pools.web.helth_check', message: 'unknown key "helth_check" (did you mean "health_check"?)' }],
                  },
                },
              },
            },
            '500': response('InternalError'),
          },
        },
      },
      '/certificates': {
        get: {
          operationId: 'listCertificates',
          tags: ['certificates'],
          summary: 'The certificates the https listeners serve, with days left (the `certificates` of `/status`).',
          description: 'One entry per certificate per https listener, PEM files and ACME alike; an empty list without https listeners. `error` is set when the last read of its files failed: the certificate shown is the one still served.',
          security: readSecurity,
          responses: {
            '200': {
              description: 'The certificates.',
              content: {
                'application/json': {
                  schema: { type: 'array', items: ref('CertificateStatus') },
                  example: [certificateExample, { ...certificateExample, source: '/etc/fulcrum/api.example.com.pem', names: ['api.example.com'], serial: '4B7E01C2D9A35F60', days_left: 6, is_default: false, error: '/etc/fulcrum/api.example.com.key: the key does not match the certificate' }],
                },
              },
            },
            '401': response('Unauthorized'),
          },
        },
      },
      '/certificates/reload': {
        post: {
          operationId: 'reloadCertificates',
          tags: ['certificates'],
          summary: "Read every https listener's certificate files again.",
          description:
            'What a change of a watched file and SIGHUP do too. Certificates whose files changed serve the next handshakes; open connections keep theirs. A file that cannot be used (unreadable, not PEM, key not matching) changes nothing for its certificate: the one loaded before stays, and the answer is 422 with the file and the reason.',
          security: writeSecurity,
          responses: {
            '200': {
              description: 'Every file was read (`changed` lists the certificates that differ from before; empty when none did).',
              content: {
                'application/json': {
                  schema: ref('CertificateReloadResponse'),
                  example: { ok: true, listeners: [{ listener: 'https', changed: [{ source: '/etc/fulcrum/example.com.crt + /etc/fulcrum/example.com.key', serial: '2C81D04E5F6A7B8C' }], failed: [] }] },
                },
              },
            },
            '401': response('Unauthorized'),
            '422': {
              description: 'Some file could not be used: its certificate stays as it was (`ok: false`; the other certificates were read as usual).',
              content: {
                'application/json': {
                  schema: ref('CertificateReloadResponse'),
                  example: { ok: false, listeners: [{ listener: 'https', changed: [], failed: [{ file: '/etc/fulcrum/example.com.key', reason: 'the key does not match the certificate' }] }] },
                },
              },
            },
            '500': response('InternalError'),
          },
        },
      },
      '/certificates/renew': {
        post: {
          operationId: 'renewCertificate',
          tags: ['certificates'],
          summary: 'Order a new ACME certificate for a domain now (a forced renewal).',
          description:
            'For a domain of some listener\'s `tls.acme.domains`. The answer comes once the new certificate is installed (an order may take minutes: its deadline is 10 minutes) and lists the certificates that now serve the domain. When another Fulcrum sharing the ACME storage renewed it meanwhile, that certificate is used instead of a second order.',
          security: writeSecurity,
          requestBody: {
            required: true,
            content: { 'application/json': { schema: ref('CertificateRenewRequest'), example: { domain: 'example.com' } } },
          },
          responses: {
            '200': {
              description: 'Renewed and installed.',
              content: { 'application/json': { schema: ref('CertificateRenewResponse'), example: { ok: true, domain: 'example.com', certificates: [{ ...certificateExample, source: 'acme:example.com', names: ['example.com'], days_left: 89 }] } } },
            },
            '400': {
              description: 'No `domain` in the body, or not a string, or another field.',
              content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'expected {"domain": "example.com"}: a domain of a listener\'s tls.acme.domains' } } },
            },
            '401': response('Unauthorized'),
            '404': {
              description: 'No listener gets an ACME certificate for that domain.',
              content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'no listener gets an ACME certificate for "example.org" (tls.acme.domains)' } } },
            },
            '413': response('PayloadTooLarge'),
            '500': response('InternalError'),
            '502': {
              description: 'The order failed (the CA refused or did not answer, a challenge failed, the deadline passed): the message has the stable code and the reason. The certificate in use stays, and the scheduled renewals go on.',
              content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'renewing example.com failed (FUL_ACME_CHALLENGE_FAILED): ...; the certificate in use stays' } } },
            },
          },
        },
      },
      '/reload': {
        post: {
          operationId: 'reload',
          tags: ['config'],
          summary: 'Read the configuration file again and apply it.',
          description:
            'Validate-then-swap: an invalid file changes nothing and answers 422 with every problem. Upstream state and the runtime changes carry over (runtime changes are applied again on top of the file). The same as SIGHUP or a watched file change.',
          security: writeSecurity,
          responses: {
            '200': { description: 'Applied. `changes` is the semantic diff (empty: nothing changed).', content: { 'application/json': { schema: ref('ApplyResponse'), example: { ok: true, changes: ['pool web: +1 upstream 10.0.0.4:80, weight of 10.0.0.2:80 1 -> 3'] } } } },
            '401': response('Unauthorized'),
            '409': {
              description: 'There is no configuration file to read (demo or embedded balancer).',
              content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'this balancer was started without a configuration file (demo or embedded): there is nothing to reload from' } } },
            },
            '422': response('InvalidConfig'),
            '500': response('InternalError'),
          },
        },
      },
      '/metrics': {
        get: {
          operationId: 'getMetrics',
          tags: ['observe'],
          summary: 'Prometheus metrics (text exposition format 0.0.4).',
          description: 'Every metric is listed in docs/metrics.md. The same text can also be served on a public listener at `listeners[].metrics_path`.',
          security: readSecurity,
          responses: {
            '200': {
              description: 'The exposition text (`Content-Type: text/plain; version=0.0.4; charset=utf-8`).',
              content: {
                'text/plain': {
                  schema: { type: 'string' },
                  example: '# HELP lb_backend_up 1 if the backend takes new requests (healthy, enabled, not draining, ejected or open), else 0.\n# TYPE lb_backend_up gauge\nlb_backend_up{pool="web",backend="localhost:8082"} 1\n',
                },
              },
            },
            '401': response('Unauthorized'),
          },
        },
      },
      '/events': {
        get: {
          operationId: 'streamEvents',
          tags: ['observe'],
          summary: 'Server-Sent Events: the live numbers, once a second.',
          description: [
            'A `text/event-stream` that stays open. First `retry: 2000`, then one `history` event whose data is the JSON array of the samples kept (up to 300, five minutes), then one `sample` event per second whose data is one LiveSample.',
            '',
            '```',
            'retry: 2000',
            '',
            'event: history',
            'data: [{"t":1736501399000,"rps":40,...}]',
            '',
            'event: sample',
            'data: {"t":1736501400000,"rps":41,...}',
            '```',
            '',
            'At most 64 streams are open at once; one more answers 503.',
          ].join('\n'),
          security: readSecurity,
          responses: {
            '200': {
              description: 'The event stream. Events: `history` (data: LiveSample[]) and `sample` (data: LiveSample).',
              content: {
                'text/event-stream': {
                  schema: { type: 'string', description: 'Events `history` (data: an array of LiveSample) and `sample` (data: one LiveSample).' },
                  example: `retry: 2000\n\nevent: history\ndata: []\n\nevent: sample\ndata: ${JSON.stringify(liveExample)}\n\n`,
                },
              },
              'x-events': { history: { type: 'array', items: ref('LiveSample') }, sample: ref('LiveSample') },
            },
            '401': response('Unauthorized'),
            '503': { description: '64 event streams are open already.', content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: '64 event streams are open already' } } } },
          },
        },
      },
      '/live': {
        get: {
          operationId: 'getLive',
          tags: ['observe'],
          summary: 'The live samples kept so far (what `/events` sends first), oldest first.',
          security: readSecurity,
          responses: {
            '200': { description: 'Up to 300 samples, one per second.', content: { 'application/json': { schema: { type: 'array', items: ref('LiveSample') }, example: [liveExample] } } },
            '401': response('Unauthorized'),
          },
        },
      },
      '/openapi.json': {
        get: {
          operationId: 'getOpenApi',
          tags: ['probes'],
          summary: 'This document.',
          security: openSecurity,
          responses: { '200': { description: 'The OpenAPI 3.1 document.', content: { 'application/json': { schema: { type: 'object' } } } } },
        },
      },
      '/': {
        get: {
          operationId: 'getDashboardRoot',
          tags: ['dashboard'],
          summary: 'Redirects to the dashboard page, /dashboard/ (so does /dashboard).',
          security: openSecurity,
          responses: {
            '302': { description: 'Location: /dashboard/.' },
          },
        },
      },
      '/dashboard/': {
        get: {
          operationId: 'getDashboard',
          tags: ['dashboard'],
          summary: 'The live dashboard page.',
          description:
            'Served without a token; the data it reads (`/events`, `/status`) is protected like any read, so off loopback the page asks for the token. Its files are `/dashboard/dashboard.js`, `/dashboard/dashboard.css`, `/dashboard/uPlot.iife.min.js` and `/dashboard/uPlot.min.css`. Off with `admin.dashboard: false`.',
          security: openSecurity,
          responses: {
            '200': { description: 'The page.', content: { 'text/html': { schema: { type: 'string' } } } },
            '404': response('DashboardOff'),
          },
        },
      },
    },
    components: {
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description:
            'The admin token: `admin.token`, the contents of `admin.token_file`, or `FULCRUM_ADMIN_TOKEN` (at least 16 printable characters). Without one, a token is generated per run and logged at start. Needed for every write, and for reads unless both the admin listener and the caller are on loopback.',
        },
      },
      parameters: {
        UrlQuery: {
          name: 'url',
          in: 'query',
          required: false,
          description: 'The upstream to remove, `http://host:port` or `host:port` (instead of a body).',
          schema: { type: 'string' },
          example: 'http://localhost:8082',
        },
        PoolQuery: {
          name: 'pool',
          in: 'query',
          required: false,
          description: 'Its pool, when several pools have it (only read together with `url`).',
          schema: { type: 'string' },
          example: 'web',
        },
      },
      responses: {
        BadRequest: {
          description: 'The request is wrong: an empty body, not JSON, an unknown field, a missing or malformed `url`, a bad weight, nothing to change, or a pool needed because there are several.',
          content: {
            'application/json': {
              schema: ref('ErrorResponse'),
              examples: {
                missingUrl: { value: { error: 'missing "url": the upstream, e.g. {"url": "http://10.0.0.4:8080"}' } },
                unknownField: { value: { error: 'unknown field "wieght"; known: url, pool, weight, max_connections, enabled, draining' } },
                whichPool: { value: { error: 'there are 2 pools (api, web): say which with "pool"' } },
              },
            },
          },
        },
        Unauthorized: {
          description: 'The token is missing or wrong.',
          headers: { 'WWW-Authenticate': { description: '`Bearer realm="fulcrum-admin"`', schema: { type: 'string' } } },
          content: {
            'application/json': {
              schema: ref('ErrorResponse'),
              examples: {
                missing: { value: { error: 'a write needs the admin token: send "Authorization: Bearer <token>"' } },
                wrong: { value: { error: 'wrong admin token' } },
              },
            },
          },
        },
        NotFound: {
          description: 'No such pool, or no such upstream in it.',
          content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'no upstream localhost:8085 in any pool (web)' } } },
        },
        MethodNotAllowed: {
          description: 'The path exists but not with this method (any route can answer this). The `Allow` header lists the methods it takes.',
          headers: { Allow: { schema: { type: 'string' }, example: 'GET, POST, DELETE, PATCH' } },
          content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'PUT is not allowed on /backends; use GET or POST or DELETE or PATCH' } } },
        },
        Conflict: {
          description: 'The change contradicts the current state: the upstream is already in the pool, or it is the pool\'s only upstream.',
          content: {
            'application/json': {
              schema: ref('ErrorResponse'),
              examples: {
                exists: { value: { error: 'localhost:8085 is already in pool web' } },
                last: { value: { error: 'localhost:8082 is the only upstream of pool web; a pool needs at least one (add another first)' } },
              },
            },
          },
        },
        PayloadTooLarge: {
          description: 'The body is larger than 1 MiB.',
          content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'the body is larger than 1048576 bytes' } } },
        },
        InvalidConfig: {
          description: 'The configuration file is invalid; the running configuration stays. Every problem is listed.',
          content: {
            'application/json': {
              schema: ref('ErrorResponse'),
              example: {
                error: 'the configuration file is invalid; the running configuration stays',
                problems: [{ file: '/etc/fulcrum/fulcrum.yaml', line: 9, column: 39, path: 'pools.web.upstreams[1].wieght', message: 'unknown key "wieght" (did you mean "weight"?)' }],
              },
            },
          },
        },
        InternalError: {
          description: 'An unexpected failure (a bug); the message says what failed.',
          content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'internal error: ...' } } },
        },
        DashboardOff: {
          description: 'The dashboard is off (`admin.dashboard: false`) or its file is missing.',
          content: { 'application/json': { schema: ref('ErrorResponse'), example: { error: 'the dashboard is off (admin.dashboard: false)' } } },
        },
      },
      schemas: {
        BackendStatus: {
          type: 'object',
          description: 'One upstream as `/status` and `/backends` show it.',
          required: ['url', 'id', 'pool', 'alive', 'healthy', 'current_connections', 'requests', 'failures', 'weight', 'health', 'enabled', 'draining', 'ejected', 'ejections', 'circuit', 'panic', 'runtime_only'],
          properties: {
            url: { type: 'string', description: '`http://host:port` (the seeds\' key).', examples: ['http://localhost:8085'] },
            id: { type: 'string', description: '`host:port`: the id used in metrics, logs and the API.', examples: ['localhost:8085'] },
            pool: { type: 'string' },
            alive: { type: 'boolean', description: 'The balancer would send it traffic now: healthy, enabled, not draining, not ejected, circuit not open.' },
            healthy: { type: 'boolean', description: 'Seed 002\'s field: its active health check passes (true when none is configured).' },
            current_connections: { type: 'integer', minimum: 0, description: 'Requests in flight to it now (for a tcp pool: its open TCP connections).' },
            open_connections: { type: 'integer', minimum: 0, description: 'Tcp pools only: TCP connections open to it now, connecting ones included.' },
            requests: { type: 'integer', minimum: 0, description: 'Requests it answered since it was added (carried over reloads).' },
            failures: { type: 'integer', minimum: 0, description: 'Attempts that failed (connect error, reset, timeout).' },
            weight: { type: 'number', exclusiveMinimum: 0, maximum: 1000000 },
            health: { type: 'string', enum: ['healthy', 'unhealthy'], description: 'The active health check\'s verdict (healthy when there is none).' },
            enabled: { type: 'boolean' },
            draining: { type: 'boolean' },
            ejected: { type: 'boolean', description: 'Kept out by passive outlier detection.' },
            ejections: { type: 'integer', minimum: 0, description: 'Times it was ejected recently (multiplies the next ejection time).' },
            circuit: { type: 'string', enum: ['closed', 'open', 'half-open'] },
            panic: { type: 'boolean', description: 'Its pool is in panic mode (fewer than panic_threshold_percent of its upstreams up): it takes traffic whatever its health.' },
            runtime_only: { type: 'boolean', description: 'True when it was added, re-weighted, drained or disabled through the API and the file does not say so.' },
          },
        },
        RuntimeChange: {
          type: 'object',
          description: 'A change made through the admin API that is not in the configuration file (a restart would lose it).',
          required: ['at', 'action', 'pool', 'upstream'],
          properties: {
            at: { type: 'string', format: 'date-time' },
            action: { type: 'string', enum: ['add', 'remove', 'weight', 'drain', 'disable'] },
            pool: { type: 'string' },
            upstream: { type: 'string', description: '`host:port`.' },
            weight: { type: 'number', description: 'The new weight, for `weight` and `add`.' },
          },
          example: { at: '2025-01-10T09:31:00.000Z', action: 'add', pool: 'web', upstream: 'localhost:8085', weight: 1 },
        },
        PoolStatus: {
          type: 'object',
          required: ['name', 'protocol', 'policy', 'upstreams', 'available', 'backup'],
          properties: {
            name: { type: 'string' },
            protocol: { type: 'string', enum: ['http1', 'h2', 'h2c', 'tcp'], description: 'The pool\'s protocol toward its upstreams (`tcp`: bytes relayed for tcp listeners).' },
            policy: { type: 'string', examples: ['round-robin'] },
            upstreams: { type: 'integer', minimum: 0, description: 'Upstreams in the pool.' },
            available: { type: 'integer', minimum: 0, description: 'Upstreams that take new requests (or connections).' },
            backup: { type: ['string', 'null'], description: 'The backup pool, or null.' },
            tcp_connections: { type: 'integer', minimum: 0, description: 'Tcp pools only: TCP connections open to its upstreams now.' },
          },
        },
        ListenerStatus: {
          type: 'object',
          required: ['name', 'protocol', 'url', 'open_connections', 'refused_connections'],
          properties: {
            name: { type: 'string' },
            protocol: { type: 'string', enum: ['http', 'https', 'tcp'] },
            url: { type: 'string', examples: ['http://0.0.0.0:8080', 'tcp://0.0.0.0:6379'] },
            open_connections: { type: 'integer', minimum: 0 },
            refused_connections: { type: 'integer', minimum: 0, description: 'Connections closed at accept (firewall, limits) since start.' },
            http2_sessions: { type: 'integer', minimum: 0, description: 'Open HTTP/2 client sessions (h2 by ALPN, h2c by preface); counted in open_connections too (absent on tcp listeners).' },
            http2_streams: { type: 'integer', minimum: 0, description: 'HTTP/2 streams in flight on them.' },
          },
        },
        CertificateStatus: {
          type: 'object',
          description: 'One certificate an https listener serves (`/status`, `/certificates`).',
          required: ['listener', 'source', 'names', 'serial', 'not_before', 'not_after', 'days_left', 'warning_days', 'is_default', 'error'],
          properties: {
            listener: { type: 'string', description: 'The listener\'s name.' },
            source: { type: 'string', description: 'The `cert` file (`cert + key` when the key is in its own file), or `acme:<domain>` for an ACME certificate.', examples: ['/etc/fulcrum/example.com.crt + /etc/fulcrum/example.com.key', '/etc/fulcrum/both.pem', 'acme:example.com'] },
            names: { type: 'array', items: { type: 'string' }, description: 'Server names (SNI) it answers, exact or `*.example.com`.' },
            serial: { type: 'string', description: 'Serial number, hex.' },
            not_before: { type: 'string', format: 'date-time' },
            not_after: { type: 'string', format: 'date-time' },
            days_left: { type: 'integer', description: 'Whole days until it expires (negative once expired).' },
            warning_days: { type: 'integer', description: 'The listener\'s `tls.expiry_warning` in whole days: fewer `days_left` is shown as expiring soon.' },
            is_default: { type: 'boolean', description: 'Shown to clients without SNI (and to unknown names with `unknown_name: default`).' },
            error: { type: ['string', 'null'], description: 'Why the last read of its files failed (the certificate shown is the one loaded before and still served), or null.' },
          },
          example: certificateExample,
        },
        AcmeNameStatus: {
          type: 'object',
          description: 'One name Fulcrum gets ACME certificates for.',
          required: ['domain', 'challenge', 'state', 'failures', 'orders'],
          properties: {
            domain: { type: 'string' },
            challenge: { type: 'string', enum: ['http-01', 'tls-alpn-01'] },
            state: { type: 'string', enum: ['valid', 'ordering', 'failed', 'pending'], description: '`valid`: a certificate is installed; `ordering`; `failed`: backing off before the next attempt; `pending`: not ordered yet.' },
            not_before: { type: 'string', format: 'date-time', description: 'Of the installed certificate.' },
            not_after: { type: 'string', format: 'date-time', description: 'Of the installed certificate.' },
            serial: { type: 'string', description: 'Of the installed certificate.' },
            next_attempt: { type: 'string', format: 'date-time', description: 'When the next order is due: renewal at two thirds of the lifetime, or the end of a failure\'s backoff.' },
            last_error: { type: 'string', description: 'Why the last attempt failed (the CA\'s problem detail when it gave one).' },
            last_error_code: { type: 'string', description: 'Its stable code, e.g. `FUL_ACME_CHALLENGE_FAILED`.' },
            failures: { type: 'integer', minimum: 0, description: 'Failed attempts in a row.' },
            orders: { type: 'integer', minimum: 0, description: 'Orders placed since start.' },
          },
          example: { domain: 'example.com', challenge: 'http-01', state: 'valid', not_before: '2025-01-01T00:00:00.000Z', not_after: '2025-04-01T00:00:00.000Z', serial: '03A1B2C3D4E5F60718293A4B5C6D7E8F9A0B', next_attempt: '2025-03-01T08:00:00.000Z', failures: 0, orders: 1 },
        },
        CertificateReloadResult: {
          type: 'object',
          description: 'What reading the certificate files again did on one https listener.',
          required: ['listener', 'changed', 'failed'],
          properties: {
            listener: { type: 'string' },
            changed: {
              type: 'array',
              description: 'Certificates whose files changed and were taken, with their new serials.',
              items: { type: 'object', required: ['source', 'serial'], properties: { source: { type: 'string' }, serial: { type: 'string' } } },
            },
            failed: {
              type: 'array',
              description: 'Files that could not be used: the certificate loaded before stays.',
              items: { type: 'object', required: ['file', 'reason'], properties: { file: { type: 'string' }, reason: { type: 'string' } } },
            },
          },
        },
        CertificateReloadResponse: {
          type: 'object',
          description: '`POST /certificates/reload`.',
          required: ['ok', 'listeners'],
          properties: {
            ok: { type: 'boolean', description: 'False when some file could not be used (the answer is then 422).' },
            error: { type: 'string', description: 'With 422: how many files could not be used (the certificates loaded before stay).' },
            listeners: { type: 'array', items: ref('CertificateReloadResult'), description: 'One entry per https listener (empty without any).' },
          },
        },
        CertificateRenewRequest: {
          type: 'object',
          required: ['domain'],
          additionalProperties: false,
          properties: { domain: { type: 'string', minLength: 1, description: 'A domain of some listener\'s `tls.acme.domains` (any case).', examples: ['example.com'] } },
        },
        CertificateRenewResponse: {
          type: 'object',
          description: '`POST /certificates/renew`.',
          required: ['ok', 'domain', 'certificates'],
          properties: {
            ok: { const: true },
            domain: { type: 'string', description: 'The domain, lower case.' },
            certificates: { type: 'array', items: ref('CertificateStatus'), description: 'The certificates that now serve the domain.' },
          },
        },
        StatusResponse: {
          type: 'object',
          description: '`GET /status`.',
          required: ['total_backends', 'active_backends', 'backends', 'pools', 'listeners', 'certificates', 'acme', 'config_file', 'config_loaded_at', 'persisted', 'runtime_changes', 'restart_needed', 'uptime_seconds', 'version'],
          properties: {
            total_backends: { type: 'integer', minimum: 0 },
            active_backends: { type: 'integer', minimum: 0, description: 'Backends with `alive: true`.' },
            backends: { type: 'array', items: ref('BackendStatus') },
            pools: { type: 'array', items: ref('PoolStatus') },
            listeners: { type: 'array', items: ref('ListenerStatus') },
            certificates: { type: 'array', items: ref('CertificateStatus'), description: 'Certificates the https listeners serve, with days left (an empty list without https listeners).' },
            acme: { type: 'array', items: ref('AcmeNameStatus'), description: 'Names with ACME certificates: their order state, next attempt and last error (an empty list without ACME).' },
            config_file: { type: ['string', 'null'], description: 'The file the configuration came from, or null (demo, embedded).' },
            config_loaded_at: { type: 'string', format: 'date-time', description: 'When the configuration in force was applied.' },
            persisted: { type: 'boolean', description: 'Whether API changes to upstream lists are written back to `config_file` (admin.persist with a file).' },
            runtime_changes: { type: 'array', items: ref('RuntimeChange'), description: 'Changes made through the API that a restart would lose, oldest first.' },
            restart_needed: { type: 'array', items: { type: 'string' }, description: 'Settings of the loaded configuration that wait for a restart (a moved listener, the admin address, log.format).' },
            uptime_seconds: { type: 'integer', minimum: 0 },
            version: { type: 'string' },
          },
        },
        ApplyResponse: {
          type: 'object',
          description: 'A change applied: `POST /reload`, `DELETE /backends` and the other backend writes.',
          required: ['ok', 'changes'],
          properties: {
            ok: { const: true },
            changes: { type: 'array', items: { type: 'string' }, description: 'The semantic diff, one line per area ("pool api: +1 upstream 10.0.0.4:80").' },
            backend: { ...ref('BackendStatus'), description: 'Backend writes: the upstream as it is now (absent after a removal).' },
            runtime_only: { type: 'boolean', description: 'Backend writes: true when the upstream now differs from the configuration file (a restart would lose the difference).' },
            warnings: { type: 'array', items: { type: 'string' }, description: 'Reloads: what the new configuration asks that only a restart applies.' },
            dropped: { type: 'array', items: { type: 'string' }, description: 'Reloads: runtime changes from the API that no longer apply to the new file.' },
          },
        },
        BackendWriteResponse: {
          description: 'A backend write that leaves the upstream in place: it is in `backend`.',
          allOf: [ref('ApplyResponse'), { type: 'object', required: ['backend', 'runtime_only'] }],
        },
        ErrorResponse: {
          type: 'object',
          description: 'Every error answer.',
          required: ['error'],
          properties: {
            error: { type: 'string', description: 'What is wrong, in words.' },
            problems: { type: 'array', items: ref('ConfigProblem'), description: 'For an invalid configuration: every problem.' },
          },
        },
        ConfigProblem: {
          type: 'object',
          description: 'A problem in a configuration (ConfigProblemJson).',
          required: ['file', 'line', 'column', 'path', 'message'],
          properties: {
            file: { type: 'string' },
            line: { type: 'integer', minimum: 0, description: '1-based; 0 when the problem has no place (the file cannot be read).' },
            column: { type: 'integer', minimum: 0 },
            path: { type: 'string', description: 'The key path, e.g. `pools.web.upstreams[0].weight` (empty for a syntax error).' },
            message: { type: 'string' },
          },
        },
        BackendRef: {
          type: 'object',
          description: 'Which upstream a write is about.',
          required: ['url'],
          properties: {
            url: { type: 'string', description: '`http://host:port`, or `host:port`.', examples: ['http://localhost:8085'] },
            pool: { type: 'string', description: 'Its pool. Needed when several pools have the upstream (or, to add one, when there are several pools).' },
          },
        },
        AddBackendRequest: {
          type: 'object',
          required: ['url'],
          additionalProperties: false,
          properties: {
            url: { type: 'string', description: 'The upstream: `http://host:port` (http, no path).', examples: ['http://localhost:8085'] },
            pool: { type: 'string', description: 'The pool to add it to; may be left out when there is one pool.' },
            weight: { type: 'number', exclusiveMinimum: 0, maximum: 1000000, default: 1 },
            max_connections: { type: 'integer', minimum: 0, default: 0, description: 'Most requests in flight at once; 0 is no limit.' },
            enabled: { description: 'Accepted and ignored.' },
            draining: { description: 'Accepted and ignored.' },
          },
        },
        UpdateBackendRequest: {
          type: 'object',
          required: ['url'],
          additionalProperties: false,
          anyOf: [{ required: ['weight'] }, { required: ['enabled'] }, { required: ['draining'] }],
          properties: {
            url: { type: 'string', description: '`http://host:port`, or `host:port`.' },
            pool: { type: 'string' },
            weight: { type: 'number', exclusiveMinimum: 0, maximum: 1000000 },
            enabled: { type: 'boolean' },
            draining: { type: 'boolean' },
            max_connections: { description: 'Accepted and ignored (change it in the file).' },
          },
        },
        HealthResponse: {
          type: 'object',
          required: ['status', 'uptime_seconds'],
          properties: { status: { const: 'ok' }, uptime_seconds: { type: 'integer', minimum: 0 } },
        },
        ReadyResponse: {
          type: 'object',
          required: ['ready', 'active_backends', 'unavailable_pools'],
          properties: {
            ready: { type: 'boolean' },
            active_backends: { type: 'integer', minimum: 0 },
            unavailable_pools: { type: 'array', items: { type: 'string' }, description: 'Pools with no upstream available now (ready stays true while any pool can serve).' },
            reason: { type: 'string', description: 'Why not ready.' },
          },
        },
        ConfigResponse: {
          type: 'object',
          required: ['file', 'config'],
          properties: {
            file: { type: ['string', 'null'] },
            config: { type: 'object', description: 'The configuration in force (docs/configuration.md), secrets hidden.' },
          },
        },
        ValidateResponse: {
          type: 'object',
          required: ['ok', 'valid', 'warnings', 'changes'],
          properties: {
            ok: { const: true },
            valid: { const: true },
            warnings: { type: 'array', items: { type: 'string' }, description: 'Things that work but deserve a look.' },
            changes: { type: 'array', items: { type: 'string' }, description: 'What applying it would change, from the configuration in force.' },
          },
        },
        ValidateFailure: {
          description: 'An invalid configuration: `valid: false` and every problem.',
          allOf: [ref('ErrorResponse'), { type: 'object', required: ['valid', 'problems'], properties: { valid: { const: false } } }],
        },
        LiveBackend: {
          type: 'object',
          description: 'One second of live numbers for one upstream.',
          required: ['pool', 'id', 'rps', 'error_rate', 'p50_ms', 'p99_ms', 'in_flight', 'tunnels_open', 'alive', 'health', 'enabled', 'draining', 'ejected', 'ejections', 'circuit', 'panic', 'weight', 'requests'],
          properties: {
            pool: { type: 'string' },
            id: { type: 'string' },
            rps: { type: 'number', minimum: 0 },
            error_rate: { type: 'number', minimum: 0, maximum: 1, description: 'Share of answers that were 5xx or failed attempts.' },
            p50_ms: { type: ['number', 'null'], description: 'Over the last 5 seconds; null without traffic.' },
            p99_ms: { type: ['number', 'null'], description: 'Over the last 5 seconds; null without traffic.' },
            in_flight: { type: 'integer', minimum: 0, description: 'Requests and WebSocket tunnels in flight to the upstream.' },
            tunnels_open: { type: 'integer', minimum: 0, description: 'WebSocket tunnels open to the upstream.' },
            open_connections: { type: 'integer', minimum: 0, description: 'Tcp pools only: TCP connections open to the upstream (counted in `in_flight` too).' },
            bytes_in_per_s: { type: 'integer', minimum: 0, description: 'Tcp pools only: bytes per second from clients to the upstream over the last tick (open connections count as they go).' },
            bytes_out_per_s: { type: 'integer', minimum: 0, description: 'Tcp pools only: bytes per second from the upstream to clients over the last tick.' },
            alive: { type: 'boolean' },
            health: { type: 'string', enum: ['healthy', 'unhealthy'] },
            enabled: { type: 'boolean' },
            draining: { type: 'boolean' },
            ejected: { type: 'boolean' },
            ejections: { type: 'integer', minimum: 0 },
            circuit: { type: 'string', enum: ['closed', 'open', 'half-open'] },
            panic: { type: 'boolean' },
            weight: { type: 'number' },
            requests: { type: 'integer', minimum: 0 },
          },
          example: liveBackendExample,
        },
        LiveSample: {
          type: 'object',
          description: 'One tick of the live view: totals and every upstream.',
          required: ['t', 'rps', 'error_rate', 'p50_ms', 'p99_ms', 'rate_limited_per_s', 'rate_limited_total', 'requests_total', 'in_flight', 'tunnels_open', 'backends'],
          properties: {
            t: { type: 'integer', description: 'Epoch milliseconds.' },
            rps: { type: 'number', minimum: 0 },
            error_rate: { type: 'number', minimum: 0, maximum: 1 },
            p50_ms: { type: ['number', 'null'] },
            p99_ms: { type: ['number', 'null'] },
            rate_limited_per_s: { type: 'number', minimum: 0, description: 'Requests refused by a rate limit in the last second.' },
            rate_limited_total: { type: 'integer', minimum: 0, description: 'Requests refused by a rate limit since start.' },
            requests_total: { type: 'integer', minimum: 0 },
            in_flight: { type: 'integer', minimum: 0 },
            tunnels_open: { type: 'integer', minimum: 0, description: 'WebSocket tunnels open now.' },
            backends: { type: 'array', items: ref('LiveBackend') },
          },
          example: liveExample,
        },
      },
    },
  };
}
