/**
 * One ACME order (RFC 8555 section 7.4) for one name, through acme-client's protocol calls:
 * new order, authorizations, the challenge published through the hooks and answered, the
 * authorization polled until the CA decides, a key and CSR made, the order finalized and the
 * chain downloaded. Polling is ours (not acme-client's) so every wait is bounded, unref'd and
 * ends at once when the manager stops.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type * as AcmeClient from 'acme-client';
import { AcmeError, AcmeErrorCode, type AcmeProblem } from './acme-errors.ts';
import { parseCertificate } from './acme-storage.ts';

/** acme-client's module, loaded when the first manager starts (it pulls axios and node-forge). */
export type AcmeLibrary = typeof AcmeClient;

let library: Promise<AcmeLibrary> | null = null;

/** acme-client, imported once. */
export function loadAcmeLibrary(): Promise<AcmeLibrary> {
  // A CommonJS package: its module.exports is the default export.
  library ??= import('acme-client').then((mod) => ((mod as unknown as { default?: AcmeLibrary }).default ?? mod) as AcmeLibrary);
  return library;
}

/** A challenge type Fulcrum answers itself. */
export type ChallengeType = 'http-01' | 'tls-alpn-01';

/** Where an order publishes its challenge answers (a subset of AcmeHooks). */
export interface ChallengeHooks {
  alpnChallenge(domain: string, pair: { cert: string; key: string } | null): void;
  httpChallenge(token: string, keyAuthorization: string | null): void;
}

/** How the CA's progress is polled: `attempts` polls, waiting from `minMs` doubling to `maxMs` between them. */
export interface PollSettings {
  minMs: number;
  maxMs: number;
  attempts: number;
}

/** What one order needs. */
export interface OrderRequest {
  lib: AcmeLibrary;
  client: AcmeClient.Client;
  domain: string;
  challenge: ChallengeType;
  keyType: 'ecdsa' | 'rsa';
  hooks: ChallengeHooks;
  poll: PollSettings;
  /** Aborts the order (manager stopped, order deadline); the error is the signal's reason. */
  signal: AbortSignal;
  /** Removals of challenge answers still published; the manager runs them if it stops mid-order. */
  published: Set<() => void>;
  /** Told of each step, for the debug log. */
  step?: (what: string) => void;
}

/** Awaits `work` unless `signal` aborts first (the late result is then dropped). */
function guarded<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted();
  work.catch(() => {});
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** The problem document inside an acme-client result (an order's or a challenge's `error`). */
function problemOf(value: unknown): AcmeProblem | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  const v = value as { type?: unknown; detail?: unknown; status?: unknown };
  return {
    type: typeof v.type === 'string' ? v.type : undefined,
    detail: typeof v.detail === 'string' ? v.detail : undefined,
    status: typeof v.status === 'number' ? v.status : undefined,
  };
}

/**
 * Calls the CA for `what`: an acme-client failure becomes an AcmeError (FUL_ACME_CA_ERROR) whose
 * message is the CA's problem detail (acme-client passes it through as the error message).
 */
async function ca<T>(what: string, work: () => Promise<T>, request: OrderRequest): Promise<T> {
  request.step?.(what);
  try {
    return await guarded(work(), request.signal);
  } catch (err) {
    if (request.signal.aborted || err instanceof AcmeError) throw err;
    const message = (err as Error).message || String(err);
    throw new AcmeError(AcmeErrorCode.CaError, `${what}: ${message}`, { problem: { detail: message }, cause: err });
  }
}

/** Polls `fetch` until `settled(status)`, bounded by the poll settings; returns the last item. */
async function pollUntil<T extends { status: string }>(what: string, fetch: () => Promise<T>, settled: (status: string) => boolean, request: OrderRequest): Promise<T> {
  let delay = request.poll.minMs;
  let item: T | undefined;
  for (let i = 0; i < request.poll.attempts; i++) {
    item = await ca(what, fetch, request);
    if (settled(item.status)) return item;
    await sleep(delay, undefined, { signal: request.signal, ref: false });
    delay = Math.min(request.poll.maxMs, delay * 2);
  }
  throw new AcmeError(AcmeErrorCode.Timeout, `${what}: still "${item?.status}" after ${request.poll.attempts} polls`);
}

/** Publishes the answer to `challenge` through the hooks; returns its removal (idempotent). */
async function publish(request: OrderRequest, authz: AcmeClient.Authorization, challenge: { type: string; token: string }, keyAuthorization: string): Promise<() => void> {
  const { hooks, domain, lib } = request;
  let remove: () => void;
  if (challenge.type === 'http-01') {
    hooks.httpChallenge(challenge.token, keyAuthorization);
    remove = () => hooks.httpChallenge(challenge.token, null);
  } else {
    // RFC 8737: a self-signed certificate for the name carrying the key authorization's digest.
    const alpnKey = await lib.crypto.createPrivateEcdsaKey('P-256');
    const [key, cert] = await lib.crypto.createAlpnCertificate(authz, keyAuthorization, alpnKey);
    request.signal.throwIfAborted();
    hooks.alpnChallenge(domain, { cert: cert.toString(), key: key.toString() });
    remove = () => hooks.alpnChallenge(domain, null);
  }
  let removed = false;
  const once = (): void => {
    if (removed) return;
    removed = true;
    request.published.delete(once);
    remove();
  };
  request.published.add(once);
  return once;
}

/** Proves control of the name for one authorization: publish, tell the CA, poll, remove. */
async function authorize(request: OrderRequest, authz: AcmeClient.Authorization): Promise<void> {
  const { client, domain } = request;
  if (authz.status === 'valid') return;
  if (authz.status !== 'pending') throw new AcmeError(AcmeErrorCode.CaError, `the CA's authorization for ${domain} is "${authz.status}"`);
  const challenges = authz.challenges as unknown as { type: string; token: string; url: string; status: string; error?: unknown }[];
  const challenge = challenges.find((c) => c.type === request.challenge);
  if (challenge === undefined) {
    throw new AcmeError(AcmeErrorCode.ChallengeNotOffered, `the CA offers no ${request.challenge} challenge for ${domain} (it offers ${challenges.map((c) => c.type).join(', ') || 'none'})`, { retryable: false });
  }
  const keyAuthorization = await client.getChallengeKeyAuthorization(challenge as unknown as AcmeClient.Authorization['challenges'][number]);
  const remove = await publish(request, authz, challenge, keyAuthorization);
  try {
    await ca(`answer the ${request.challenge} challenge`, () => client.completeChallenge(challenge as unknown as AcmeClient.Authorization['challenges'][number]), request);
    const settled = await pollUntil(
      `wait for the CA to validate ${domain}`,
      async () => (await client.getAuthorizations({ authorizations: [authz.url] } as AcmeClient.Order))[0],
      (status) => status !== 'pending',
      request,
    );
    if (settled.status !== 'valid') {
      const answered = (settled.challenges as unknown as { type: string; error?: unknown }[]).find((c) => c.type === request.challenge);
      const problem = problemOf(answered?.error) ?? {};
      const reason = problem.detail ?? `authorization is "${settled.status}"`;
      throw new AcmeError(AcmeErrorCode.ChallengeFailed, `the CA could not validate ${request.challenge} for ${domain}: ${reason}${problem.type ? ` (${problem.type})` : ''}`, { problem });
    }
  } finally {
    remove();
  }
}

/**
 * Orders a certificate for `request.domain` and resolves with its PEM chain and new private
 * key (ECDSA P-256 or RSA 2048). Rejects with an AcmeError (FUL_ACME_CHALLENGE_FAILED with the
 * CA's problem, FUL_ACME_CHALLENGE_NOT_OFFERED, FUL_ACME_CA_ERROR, FUL_ACME_BAD_CERTIFICATE,
 * FUL_ACME_TIMEOUT) or the signal's reason.
 */
export async function placeOrder(request: OrderRequest): Promise<{ cert: string; key: string }> {
  const { client, lib, domain } = request;
  let order = await ca('create the order', () => client.createOrder({ identifiers: [{ type: 'dns', value: domain }] }), request);
  const authorizations = await ca('read the authorizations', () => client.getAuthorizations(order), request);
  for (const authz of authorizations) await authorize(request, authz);

  const current = order;
  order = await pollUntil('wait for the order to be ready', () => client.getOrder(current), (status) => status !== 'pending', request);
  if (order.status === 'invalid') throw new AcmeError(AcmeErrorCode.CaError, `the order for ${domain} is invalid: ${problemOf(order.error)?.detail ?? 'no reason given'}`, { problem: problemOf(order.error) });

  const keyPem = request.keyType === 'rsa' ? await lib.crypto.createPrivateRsaKey(2048) : await lib.crypto.createPrivateEcdsaKey('P-256');
  // A common name has at most 64 characters (RFC 5280); the name is in subjectAltName either way.
  const [, csr] = await lib.crypto.createCsr({ commonName: domain.length <= 64 ? domain : undefined, altNames: [domain] }, keyPem);
  if (order.status === 'ready') {
    const ready = order;
    order = await ca('finalize the order', () => client.finalizeOrder(ready, csr), request);
  }
  const finalized = order;
  order = await pollUntil('wait for the certificate', () => client.getOrder(finalized), (status) => status !== 'processing' && status !== 'ready', request);
  if (order.status !== 'valid') throw new AcmeError(AcmeErrorCode.CaError, `the order for ${domain} ended "${order.status}": ${problemOf(order.error)?.detail ?? 'no reason given'}`, { problem: problemOf(order.error) });
  const valid = order;
  const cert = await ca('download the certificate', () => client.getCertificate(valid), request);

  const key = keyPem.toString();
  try {
    parseCertificate(cert, key, domain);
  } catch (err) {
    throw new AcmeError(AcmeErrorCode.BadCertificate, `the CA's certificate for ${domain} cannot be used: ${(err as Error).message}`, { cause: err });
  }
  return { cert, key };
}
