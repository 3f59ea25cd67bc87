/**
 * A refusal of an admin request: the HTTP status and a message that says what is wrong. Thrown
 * by the balancer's write methods and turned into `{"error": message}` by the admin server.
 */
export class AdminRequestError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.name = 'AdminRequestError';
    this.status = status;
  }
}
