/** HTTP/2 error codes (RFC 9113 section 7), shared by the client and server sides. */

/** HTTP/2 error codes by number (RFC 9113 section 7). */
const errorNames: readonly string[] = [
  'NO_ERROR',
  'PROTOCOL_ERROR',
  'INTERNAL_ERROR',
  'FLOW_CONTROL_ERROR',
  'SETTINGS_TIMEOUT',
  'STREAM_CLOSED',
  'FRAME_SIZE_ERROR',
  'REFUSED_STREAM',
  'CANCEL',
  'COMPRESSION_ERROR',
  'CONNECT_ERROR',
  'ENHANCE_YOUR_CALM',
  'INADEQUATE_SECURITY',
  'HTTP_1_1_REQUIRED',
];

/** The RFC 9113 name of an HTTP/2 error code (`PROTOCOL_ERROR`), or `0x..` for one the RFC does not define. */
export function http2ErrorName(code: number): string {
  return errorNames[code] ?? `0x${code.toString(16)}`;
}

/** The name of a code for a metric label: one of the RFC's names, or `UNKNOWN` (a peer's code never makes a new series). */
export function http2ErrorLabel(code: number): string {
  return errorNames[code] ?? 'UNKNOWN';
}
