import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { md5FirstWord } from '../shared/md5-word.js';

test('md5FirstWord equals the first little-endian word of node:crypto MD5 for every length from 0 to 300 bytes', () => {
  for (let length = 0; length <= 300; length++) {
    for (let round = 0; round < 4; round++) {
      const padded = randomBytes(length + 10);
      const data = padded.subarray(5, 5 + length);
      const want = createHash('md5').update(data).digest().readUInt32LE(0);
      assert.equal(md5FirstWord(padded, 5, 5 + length), want, `length ${length}`);
      assert.equal(md5FirstWord(data), want, `length ${length}, whole buffer`);
    }
  }
});

test('md5FirstWord matches the RFC 1321 test suite', () => {
  const rfc: [string, string][] = [
    ['', 'd41d8cd98f00b204e9800998ecf8427e'],
    ['a', '0cc175b9c0f1b6a831c399e269772661'],
    ['abc', '900150983cd24fb0d6963f7d28e17f72'],
    ['message digest', 'f96b697d7cb7938d525a2f31aaf161d0'],
    ['12345678901234567890123456789012345678901234567890123456789012345678901234567890', '57edf4a22be3c955ac49da2e2107b67a'],
  ];
  for (const [text, hex] of rfc) assert.equal(md5FirstWord(Buffer.from(text)), Buffer.from(hex, 'hex').readUInt32LE(0), text);
});
