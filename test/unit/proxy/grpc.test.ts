import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { RequestHead } from '../../../src/core/context.ts';
import { encodeGrpcMessage, grpcKind, grpcTimeoutMs } from '../../../src/proxy/grpc.ts';

const withType = (type: string | undefined): RequestHead => ({ headers: type === undefined ? {} : { 'content-type': type } }) as unknown as RequestHead;

test('grpcKind: gRPC, gRPC-Web and gRPC-Web text by content-type; look-alikes are not', () => {
  const cases: [string | undefined, string | null][] = [
    ['application/grpc', 'grpc'],
    ['application/grpc+proto', 'grpc'],
    ['Application/GRPC; charset=x', 'grpc'],
    ['application/grpc-web', 'web'],
    ['application/grpc-web+proto', 'web'],
    ['application/grpc-web-text', 'web-text'],
    ['application/grpc-web-text+proto', 'web-text'],
    ['application/grpcx', null],
    ['application/grpc-webx', null],
    ['application/grpc-web-textual', null],
    ['application/json; charset=utf-8', null],
    ['application/grp', null],
    [undefined, null],
  ];
  for (const [type, kind] of cases) assert.equal(grpcKind(withType(type)), kind, String(type));
});

test('grpcTimeoutMs and encodeGrpcMessage follow PROTOCOL-HTTP2.md', () => {
  assert.equal(grpcTimeoutMs('100m'), 100);
  assert.equal(grpcTimeoutMs('5S'), 5000);
  assert.equal(grpcTimeoutMs('1H'), 3_600_000);
  assert.equal(grpcTimeoutMs('10u'), 1, 'at least 1 ms');
  assert.equal(grpcTimeoutMs('123456789m'), null, 'at most 8 digits');
  assert.equal(grpcTimeoutMs('5s'), null, 'units are case-sensitive');
  assert.equal(encodeGrpcMessage('no such thing: 100% é'), 'no such thing: 100%25 %C3%A9');
});
