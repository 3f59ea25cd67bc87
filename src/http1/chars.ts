/**
 * Byte classes of HTTP/1.1 (RFC 9110 section 5.6, RFC 9112), one table lookup per byte: the
 * parsers of src/http1/ test `CLASS[byte] & BIT` instead of comparing ranges (llhttp's habit).
 */

/** tchar: a byte of a token (header names, methods, transfer codings). */
export const TOKEN = 1;
/** field-vchar: VCHAR or obs-text, a byte a header value may hold besides SP and HTAB. */
export const FIELD = 2;
/** SP or HTAB (OWS, BWS). */
export const SPACE = 4;
/** DIGIT. */
export const DIGIT = 8;
/** HEXDIG, either case. */
export const HEX = 16;

/** The class bits of each byte. */
export const CLASS: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (let c = 0x21; c <= 0x7e; c++) t[c] |= FIELD;
  for (let c = 0x80; c <= 0xff; c++) t[c] |= FIELD;
  for (const c of "!#$%&'*+-.^_`|~") t[c.charCodeAt(0)] |= TOKEN;
  for (let c = 0x30; c <= 0x39; c++) t[c] |= TOKEN | DIGIT | HEX;
  for (let c = 0x41; c <= 0x5a; c++) t[c] |= TOKEN;
  for (let c = 0x61; c <= 0x7a; c++) t[c] |= TOKEN;
  for (let c = 0x41; c <= 0x46; c++) t[c] |= HEX;
  for (let c = 0x61; c <= 0x66; c++) t[c] |= HEX;
  t[0x20] |= SPACE;
  t[0x09] |= SPACE;
  return t;
})();

/** The value of a hex digit byte (the caller checked it is one). */
export function hexValue(c: number): number {
  return c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57;
}

/** `buf[start, end)` as a string, one char per byte (headers are latin1 on the wire). */
export function latin1(buf: Buffer, start: number, end: number): string {
  return (buf as Buffer & { latin1Slice(start: number, end: number): string }).latin1Slice(start, end);
}

/** True when `buf[start, end)` is `lower` (lowercase ASCII letters and '-'), whatever the case of the letters. */
export function sameName(buf: Buffer, start: number, end: number, lower: string): boolean {
  if (end - start !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) if ((buf[start + i] | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}
