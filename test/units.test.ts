import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isCachewarmError } from '../shared/errors.js';
import {
  exactBytes,
  formatBytes,
  formatDuration,
  formatRate,
  parseByteSize,
  parseByteSizeInRange,
  parseFractionInRange,
  parseIntInRange,
  parsePositiveInt,
} from '../shared/units.js';

describe('parseByteSize', () => {
  const cases: Array<[string, number]> = [
    ['1048576', 1_048_576],
    ['0', 0],
    ['17B', 17],
    ['512KiB', 512 * 1024],
    ['16MiB', 16 * 2 ** 20],
    ['1GiB', 2 ** 30],
    ['64MB', 64_000_000],
    ['3KB', 3_000],
    ['2GB', 2_000_000_000],
    ['1.5MiB', 1_572_864],
    ['1.1MB', 1_100_000],
    ['.5KiB', 512],
    ['16mib', 16 * 2 ** 20],
    ['16MIB', 16 * 2 ** 20],
    ['64mb', 64_000_000],
    [' 16 MiB ', 16 * 2 ** 20],
  ];
  for (const [text, bytes] of cases) {
    test(`"${text}" is ${bytes} bytes`, () => {
      assert.equal(parseByteSize(text), bytes);
    });
  }

  for (const text of ['', 'MiB', '-1MiB', '16 mebibytes', '16M', '1e6', '1,024', '0x10', '1.5B', '16MiB extra', 'NaN']) {
    test(`"${text}" is rejected with a message naming the input and the accepted forms`, () => {
      assert.throws(
        () => parseByteSize(text),
        (e) => isCachewarmError(e, 'INVALID_ARGUMENT') && e.message.includes(`"${text}"`),
      );
    });
  }

  test('the message lists the accepted forms', () => {
    assert.throws(() => parseByteSize('lots'), (e) => isCachewarmError(e) && /MiB/.test(e.message) && /MB/.test(e.message));
  });
});

describe('parsePositiveInt', () => {
  test('accepts positive integers', () => {
    assert.equal(parsePositiveInt('1', 'concurrency'), 1);
    assert.equal(parsePositiveInt('250', 'concurrency'), 250);
    assert.equal(parsePositiveInt(' 8 ', 'concurrency'), 8);
  });

  for (const text of ['0', '-3', '1.5', 'ten', '', '1e3', '99999999999999999999']) {
    test(`rejects "${text}", naming the setting`, () => {
      assert.throws(
        () => parsePositiveInt(text, '--concurrency'),
        (e) => isCachewarmError(e, 'INVALID_ARGUMENT') && e.message.includes('--concurrency') && e.message.includes(`"${text}"`),
      );
    });
  }
});

describe('parseIntInRange', () => {
  const bounds = { min: 1, max: 64 };
  test('accepts whole numbers within the bounds, ends included', () => {
    assert.equal(parseIntInRange('1', bounds), 1);
    assert.equal(parseIntInRange('64', bounds), 64);
    assert.equal(parseIntInRange(' 8 ', bounds), 8);
    assert.equal(parseIntInRange('0', { min: 0, max: 3 }), 0);
  });

  for (const text of ['0', '65', '-5', '1.5', 'ten', '', '1e3', '0x10', '4XB', '99999999999999999999']) {
    test(`refuses "${text}", stating the bounds`, () => {
      assert.throws(
        () => parseIntInRange(text, bounds, '--concurrency'),
        (e) => isCachewarmError(e, 'INVALID_ARGUMENT') && e.message === `--concurrency: expected a whole number from 1 to 64, got "${text}"`,
      );
    });
  }

  test('says where the bounds come from when told', () => {
    assert.throws(() => parseIntInRange('30', { min: 1, max: 20, why: 'SQS long-polls at most 20 s' }), {
      message: 'expected a whole number from 1 to 20 (SQS long-polls at most 20 s), got "30"',
    });
  });
});

describe('parseByteSizeInRange', () => {
  const bounds = { min: 64 << 10, max: 1 << 30 };
  test('accepts sizes within the bounds, ends included', () => {
    assert.equal(parseByteSizeInRange('64KiB', bounds), 64 << 10);
    assert.equal(parseByteSizeInRange('4MiB', bounds), 4 << 20);
    assert.equal(parseByteSizeInRange('1GiB', bounds), 1 << 30);
  });

  for (const text of ['0', '1KiB', '65535', '100GiB', '1.5GiB']) {
    test(`refuses "${text}" as out of bounds`, () => {
      assert.throws(
        () => parseByteSizeInRange(text, bounds, '--chunk-size'),
        (e) => isCachewarmError(e, 'INVALID_ARGUMENT') && e.message === `--chunk-size: expected a size from 64 KiB to 1 GiB, got "${text}"`,
      );
    });
  }

  test('refuses a malformed size with the accepted forms', () => {
    assert.throws(
      () => parseByteSizeInRange('4XB', bounds, '--max-bytes'),
      (e) => isCachewarmError(e, 'INVALID_ARGUMENT') && e.message.startsWith('--max-bytes: invalid byte size "4XB"') && /MiB/.test(e.message),
    );
  });
});

describe('parseFractionInRange', () => {
  test('accepts plain decimals within the bounds', () => {
    assert.equal(parseFractionInRange('0', { min: 0, max: 1 }), 0);
    assert.equal(parseFractionInRange('.5', { min: 0, max: 1 }), 0.5);
    assert.equal(parseFractionInRange('1', { min: 0, max: 1 }), 1);
  });
  for (const text of ['2', '-0.1', '1e-1', 'NaN', '50%', '']) {
    test(`refuses "${text}"`, () => {
      assert.throws(() => parseFractionInRange(text, { min: 0, max: 1 }), { message: `expected a number from 0 to 1, got "${text}"` });
    });
  }
});

describe('exactBytes', () => {
  const cases: Array<[number, string]> = [
    [0, '0 B'],
    [1000, '1000 B'],
    [1024, '1 KiB'],
    [64 << 10, '64 KiB'],
    [1_572_864, '1536 KiB'],
    [1 << 30, '1 GiB'],
    [2 ** 40, '1 TiB'],
  ];
  for (const [n, text] of cases) {
    test(`${n} is "${text}"`, () => assert.equal(exactBytes(n), text));
  }
});

describe('formatBytes', () => {
  const cases: Array<[number, string]> = [
    [0, '0 B'],
    [512, '512 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [1_572_864, '1.5 MiB'],
    [16 * 2 ** 20, '16.0 MiB'],
    [2 ** 20 - 1, '1.0 MiB'],
    [3 * 2 ** 30, '3.0 GiB'],
    [5 * 2 ** 40, '5.0 TiB'],
    [-2048, '-2.0 KiB'],
  ];
  for (const [n, text] of cases) {
    test(`${n} is "${text}"`, () => assert.equal(formatBytes(n), text));
  }
});

describe('formatDuration', () => {
  const cases: Array<[number, string]> = [
    [0, '0ms'],
    [450, '450ms'],
    [999.7, '1.0s'],
    [12_345, '12.3s'],
    [59_960, '1m00s'],
    [185_000, '3m05s'],
    [3_599_700, '1h00m'],
    [3_720_000, '1h02m'],
    [50 * 3_600_000, '50h00m'],
  ];
  for (const [ms, text] of cases) {
    test(`${ms} ms is "${text}"`, () => assert.equal(formatDuration(ms), text));
  }
});

describe('formatRate', () => {
  const cases: Array<[number, string]> = [
    [0, '0.0/s'],
    [12.5, '12.5/s'],
    [999.96, '1.0k/s'],
    [123_400, '123.4k/s'],
    [2_000_000, '2.0M/s'],
    [3.5e9, '3.5G/s'],
  ];
  for (const [perSecond, text] of cases) {
    test(`${perSecond} is "${text}"`, () => assert.equal(formatRate(perSecond), text));
  }
});
