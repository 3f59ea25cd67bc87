/**
 * How `fulcrum status` and `fulcrum certificates` print certificates: one line each, expiring
 * and broken ones marked in words, and coloured only on a terminal that wants colour.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { certificateLevel, formatCertificates, styleFor } from '../../src/admin/cli-commands.ts';
import type { CertificateStatus } from '../../src/admin/types.ts';

const base: CertificateStatus = {
  listener: 'https',
  source: '/etc/fulcrum/site.crt + /etc/fulcrum/site.key',
  names: ['example.com', 'www.example.com'],
  serial: '0A1B2C',
  not_before: '2025-01-01T00:00:00.000Z',
  not_after: '2025-04-01T00:00:00.000Z',
  days_left: 80,
  warning_days: 21,
  is_default: true,
  error: null,
};

const cases: { name: string; cert: CertificateStatus; level: 'ok' | 'warn' | 'error'; days: string; note: string }[] = [
  { name: 'far from expiry', cert: base, level: 'ok', days: '80', note: 'default' },
  { name: '21 days left', cert: { ...base, days_left: 21, is_default: false }, level: 'ok', days: '21', note: '' },
  { name: '20 days left', cert: { ...base, days_left: 20, is_default: false }, level: 'warn', days: '20 (expires soon)', note: '' },
  // The listener's own tls.expiry_warning: 45 days warns from 44 days left.
  { name: '44 days left under a 45-day warning', cert: { ...base, days_left: 44, warning_days: 45, is_default: false }, level: 'warn', days: '44 (expires soon)', note: '' },
  { name: 'last day', cert: { ...base, days_left: 0, is_default: false }, level: 'warn', days: '0 (expires soon)', note: '' },
  // days_left is rounded down: -3 is two whole days and some hours past not_after.
  { name: 'expired', cert: { ...base, days_left: -3, is_default: false }, level: 'error', days: 'expired 2d ago', note: '' },
  { name: 'expired within the day', cert: { ...base, days_left: -1, is_default: false }, level: 'error', days: 'expired <1d ago', note: '' },
  { name: 'a failed read', cert: { ...base, error: 'cannot read /etc/fulcrum/site.key: ENOENT' }, level: 'error', days: '80', note: 'default; error: cannot read /etc/fulcrum/site.key: ENOENT (the certificate loaded before is served)' },
];

for (const c of cases) {
  test(`a certificate ${c.name}: level ${c.level}, days "${c.days}"`, () => {
    assert.equal(certificateLevel(c.cert), c.level);
    const [header, line] = formatCertificates([c.cert]).split('\n');
    assert.match(header, /^LISTENER\s+NAMES\s+DAYS LEFT\s+EXPIRES\s+SERIAL\s+SOURCE$/);
    const expected = ['https', 'example.com, www.example.com', c.days, '2025-04-01', '0A1B2C', base.source, c.note].filter((x) => x !== '');
    assert.deepEqual(line.split(/ {2,}/), expected);
  });
}

test('colour only on a TTY without NO_COLOR or TERM=dumb; whole lines, after padding', () => {
  const tty = { isTTY: true };
  const colour = styleFor(tty, {});
  const certs = [base, { ...base, serial: 'SOON', days_left: 4, is_default: false }, { ...base, serial: 'OLD', days_left: -1, is_default: false }];
  const lines = formatCertificates(certs, colour).split('\n');
  assert.doesNotMatch(lines[1], /\x1b/);
  assert.match(lines[2], /^\x1b\[33mhttps .*SOON.*\x1b\[39m$/);
  assert.match(lines[3], /^\x1b\[31mhttps .*OLD.*\x1b\[39m$/);
  // Without the escape codes, the columns line up with the uncoloured table.
  assert.deepEqual(lines.map((l) => l.replace(/\x1b\[\d+m/g, '')), formatCertificates(certs).split('\n'));
  for (const [stream, env] of [[{ isTTY: false }, {}], [{}, {}], [tty, { NO_COLOR: '1' }], [tty, { TERM: 'dumb' }]] as const) {
    assert.doesNotMatch(formatCertificates(certs, styleFor(stream, env)), /\x1b/, JSON.stringify({ stream, env }));
  }
});

test('no https listener: one line that says so', () => {
  assert.equal(formatCertificates([]), 'no certificates (no https listener)');
});
