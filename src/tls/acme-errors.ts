/**
 * Errors of automatic certificates (ACME), each with a stable code that logs, `/status` and
 * tests key on, and the CA's problem (RFC 8555 section 6.7) when the CA gave one.
 */
import { FulcrumError } from '../errors.ts';

/** Stable codes, one per way getting a certificate can fail. */
export const AcmeErrorCode = {
  /** `acme.terms_of_service_agreed` is false: no account is made and nothing is ordered. */
  TermsNotAgreed: 'FUL_ACME_TERMS_NOT_AGREED',
  /** A name the manager cannot order (not a plain host name). */
  BadDomain: 'FUL_ACME_BAD_DOMAIN',
  /** `renew()` for a name the manager does not manage. */
  UnknownDomain: 'FUL_ACME_UNKNOWN_DOMAIN',
  /** The CA could not validate the challenge; `problem` holds its reason. */
  ChallengeFailed: 'FUL_ACME_CHALLENGE_FAILED',
  /** The CA does not offer the configured challenge type for the name. */
  ChallengeNotOffered: 'FUL_ACME_CHALLENGE_NOT_OFFERED',
  /** Any other refusal or failure talking to the CA (directory, account, order, finalize, download). */
  CaError: 'FUL_ACME_CA_ERROR',
  /** The CA issued something that is not a certificate for the name and key asked for. */
  BadCertificate: 'FUL_ACME_BAD_CERTIFICATE',
  /** Another Fulcrum kept the name's lock longer than the wait allows. */
  LockTimeout: 'FUL_ACME_LOCK_TIMEOUT',
  /** An order took longer than its deadline. */
  Timeout: 'FUL_ACME_TIMEOUT',
  /** The balancer refused a certificate handed to it (`AcmeHooks.install` threw). */
  InstallFailed: 'FUL_ACME_INSTALL_FAILED',
  /** The storage directory could not be read or written. */
  Storage: 'FUL_ACME_STORAGE',
  /** The manager was stopped (or not started) while the operation was waiting. */
  Stopped: 'FUL_ACME_STOPPED',
} as const;

export type AcmeErrorCodeValue = (typeof AcmeErrorCode)[keyof typeof AcmeErrorCode];

/** A problem document from the CA (RFC 8555 section 6.7). */
export interface AcmeProblem {
  /** e.g. `urn:ietf:params:acme:error:unauthorized`. */
  type?: string;
  detail?: string;
  status?: number;
}

/** A failure to get a certificate; `retryable` says whether a later attempt (with backoff) may succeed. */
export class AcmeError extends FulcrumError {
  /** The CA's problem, when the CA said what was wrong. */
  readonly problem: AcmeProblem | undefined;

  constructor(code: AcmeErrorCodeValue, message: string, options: { problem?: AcmeProblem; retryable?: boolean; cause?: unknown } = {}) {
    super(code, message, 'internal', 0, options.retryable ?? true, options.cause);
    this.name = 'AcmeError';
    this.problem = options.problem;
  }
}
