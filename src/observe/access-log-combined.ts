/**
 * The `combined` access-log format of Apache and nginx:
 * `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`.
 * Values are escaped as nginx's `escape=default` does (ngx_http_log_escape): `"`, `\` and every
 * byte outside printable ASCII become `\xHH`. An absent value is `-`.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { AccessLogFormat } from './access-log-formats.ts';

const hex = '0123456789ABCDEF';

/** One byte as nginx logs it: `\x22`. */
function escapedByte(b: number): string {
  return '\\x' + hex[b >> 4] + hex[b & 15];
}

/**
 * `s` escaped like nginx: `"` (0x22), `\` (0x5C) and bytes below 0x20 or from 0x7F up as `\xHH`.
 * Header values and the request-target hold one byte per character (latin1, as parsed); a
 * character above 0xFF (a listener name, say) is escaped as its UTF-8 bytes.
 */
export function nginxEscape(s: string): string {
  let i = 0;
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) break;
  }
  if (i === s.length) return s;
  let out = s.slice(0, i);
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x20 && c <= 0x7e && c !== 0x22 && c !== 0x5c) out += s[i];
    else if (c <= 0xff) out += escapedByte(c);
    else {
      const point = s.codePointAt(i)!;
      if (point > 0xffff) i++;
      // A lone surrogate has no UTF-8 form: Buffer writes U+FFFD for it, as any UTF-8 writer would.
      for (const b of Buffer.from(String.fromCodePoint(point), 'utf8')) out += escapedByte(b);
    }
  }
  return out;
}

/** A header's value for the log: `-` when absent, repeated values joined as node:http joins them. */
function headerValue(headers: IncomingHttpHeaders, name: string): string {
  const v = headers[name];
  if (v === undefined) return '-';
  return nginxEscape(typeof v === 'string' ? v : v.join(', '));
}

/** `$remote_user`: the user name of Basic authentication, or `-` (also for an empty name or no colon, as nginx). */
export function remoteUser(headers: IncomingHttpHeaders): string {
  const auth = headers.authorization;
  if (typeof auth !== 'string' || auth.length < 7 || (auth.charCodeAt(5) !== 0x20 && auth.charCodeAt(5) !== 0x09) || auth.slice(0, 5).toLowerCase() !== 'basic') return '-';
  const decoded = Buffer.from(auth.slice(6).trim(), 'base64').toString('latin1');
  const colon = decoded.indexOf(':');
  return colon <= 0 ? '-' : nginxEscape(decoded.slice(0, colon));
}

const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const two = (n: number): string => (n < 10 ? '0' + n : '' + n);
let localSecond = -1;
let localText = '';

/** `$time_local`: `10/Oct/2000:13:55:36 -0700` in the process's time zone, made once per second. */
export function timeLocal(now: number): string {
  const second = Math.floor(now / 1000);
  if (second !== localSecond) {
    localSecond = second;
    const d = new Date(second * 1000);
    const offset = -d.getTimezoneOffset();
    const sign = offset < 0 ? '-' : '+';
    const abs = Math.abs(offset);
    localText = `${two(d.getDate())}/${months[d.getMonth()]}/${d.getFullYear()}:${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ${sign}${two(Math.floor(abs / 60))}${two(abs % 60)}`;
  }
  return localText;
}

/**
 * The `combined` format (level and fields beyond these are not in it). A TCP connection keeps
 * the shape, so combined parsers still read the file: `client - - [time] "TCP <listener>
 * <upstream|-> <sni|->" <status> <bytes to the client> "-" "-"`.
 */
export const combinedFormat: AccessLogFormat = {
  name: 'combined',
  line(ctx, _level, now) {
    const req = ctx.req;
    return (
      nginxEscape(ctx.clientAddress) + ' - ' + remoteUser(req.headers) +
      ' [' + timeLocal(now) + '] "' +
      nginxEscape(req.method + ' ' + req.url + ' HTTP/' + req.httpVersion) + '" ' +
      ctx.status + ' ' + ctx.bytesOut +
      ' "' + headerValue(req.headers, 'referer') + '" "' + headerValue(req.headers, 'user-agent') + '"\n'
    );
  },
  tcpLine(c, _level, now) {
    // nginx's stream $status: 502 when no upstream could be picked or reached, else 200.
    const status = c.reason === 'connect_failed' || c.reason === 'no_upstream' ? 502 : 200;
    return (
      nginxEscape(c.client.address) + ' - - [' + timeLocal(now) + '] "TCP ' +
      nginxEscape(c.listener) + ' ' + (c.upstream?.id ?? '-') + ' ' + (c.client.sni === null ? '-' : nginxEscape(c.client.sni)) + '" ' +
      status + ' ' + c.bytesOut + ' "-" "-"\n'
    );
  },
};
