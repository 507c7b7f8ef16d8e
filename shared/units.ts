import { CachewarmError } from './errors.js';

const BYTE_UNITS: Readonly<Record<string, number>> = {
  '': 1,
  b: 1,
  kb: 1e3,
  kib: 2 ** 10,
  mb: 1e6,
  mib: 2 ** 20,
  gb: 1e9,
  gib: 2 ** 30,
};

const BYTE_FORMS = 'a whole number of bytes ("1048576") or a number with a unit: B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. "16MiB", "1.5GiB", "64MB"';

/** Parses a size as written on a command line or in a config file into bytes. */
export function parseByteSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*$/i.exec(text);
  const multiplier = match ? BYTE_UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || multiplier === undefined) {
    throw new CachewarmError('INVALID_ARGUMENT', `invalid byte size "${text}": expected ${BYTE_FORMS}`, {
      input: text,
    });
  }
  // Round away float noise ("1.1MB" is 1100000.0000000002) but not real fractions of a byte.
  const raw = Number(match[1]) * multiplier;
  const bytes = Math.round(raw);
  if (Math.abs(raw - bytes) > 1e-6 * Math.max(1, raw)) {
    throw new CachewarmError('INVALID_ARGUMENT', `invalid byte size "${text}": it is not a whole number of bytes`, {
      input: text,
    });
  }
  if (!Number.isSafeInteger(bytes)) {
    throw new CachewarmError('INVALID_ARGUMENT', `invalid byte size "${text}": too large`, { input: text });
  }
  return bytes;
}

/** Parses a strictly positive integer; `what` names the setting in the error message. */
export function parsePositiveInt(text: string, what: string): number {
  const trimmed = text.trim();
  const value = /^\d+$/.test(trimmed) ? Number(trimmed) : Number.NaN;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new CachewarmError('INVALID_ARGUMENT', `${what} must be a positive integer, got "${text}"`, {
      what,
      input: text,
    });
  }
  return value;
}

/** Inclusive bounds of a setting; `why` says where they come from (shown in the message). */
export interface Bounds {
  readonly min: number;
  readonly max: number;
  readonly why?: string;
}

function outOfBounds(text: string, what: string | undefined, expected: string, bounds: Bounds): CachewarmError {
  const lead = what ? `${what}: ` : '';
  const why = bounds.why ? ` (${bounds.why})` : '';
  return new CachewarmError('INVALID_ARGUMENT', `${lead}expected ${expected}${why}, got "${text}"`, {
    ...(what !== undefined && { what }),
    input: text,
    min: bounds.min,
    max: bounds.max,
  });
}

/**
 * Parses a whole number within `bounds` (inclusive). Only plain decimal digits are taken:
 * "1e3", "0x10", "1.5" and "" are refused, as is anything outside the bounds ("-5", "0").
 */
export function parseIntInRange(text: string, bounds: Bounds, what?: string): number {
  const trimmed = text.trim();
  const value = /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < bounds.min || value > bounds.max) {
    throw outOfBounds(text, what, `a whole number from ${bounds.min} to ${bounds.max}`, bounds);
  }
  return value;
}

/** Parses a byte size (see parseByteSize) within `bounds` (inclusive, in bytes). */
export function parseByteSizeInRange(text: string, bounds: Bounds, what?: string): number {
  let bytes: number;
  try {
    bytes = parseByteSize(text);
  } catch (error) {
    if (what === undefined) throw error;
    throw new CachewarmError('INVALID_ARGUMENT', `${what}: ${(error as Error).message}`, { what, input: text });
  }
  if (bytes < bounds.min || bytes > bounds.max) {
    throw outOfBounds(text, what, `a size from ${exactBytes(bounds.min)} to ${exactBytes(bounds.max)}`, bounds);
  }
  return bytes;
}

/**
 * Parses a fraction within `bounds` (inclusive): plain decimal notation only ("0.5", ".5",
 * "1"), so "1e-1", "NaN" and "50%" are refused.
 */
export function parseFractionInRange(text: string, bounds: Bounds, what?: string): number {
  const value = /^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*$/.test(text) ? Number(text) : Number.NaN;
  if (!(value >= bounds.min && value <= bounds.max)) {
    throw outOfBounds(text, what, `a number from ${bounds.min} to ${bounds.max}`, bounds);
  }
  return value;
}

/** A byte count in the largest unit that writes it exactly: "64 KiB", "1 GiB", "1000 B", "1.5 MiB" is "1536 KiB". */
export function exactBytes(n: number): string {
  const units: ReadonlyArray<[string, number]> = [
    ['TiB', 2 ** 40],
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ];
  for (const [unit, size] of units) {
    if (n !== 0 && n % size === 0) return `${n / size} ${unit}`;
  }
  return `${n} B`;
}

/**
 * Scales `value` to the largest unit it reaches, judged after rounding to one decimal so
 * that 1023.96 KiB prints as "1.0 MiB" rather than "1024.0 KiB".
 */
function scaled(value: number, base: number, units: readonly string[]): { text: string; unit: string } {
  let index = 0;
  let amount = value;
  while (index < units.length - 1 && Math.round(amount * 10) / 10 >= base) {
    amount /= base;
    index += 1;
  }
  return { text: amount.toFixed(1), unit: units[index]! };
}

/** "512 B", "1.5 MiB", "2.0 GiB". */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return `${n} B`;
  const sign = n < 0 ? '-' : '';
  const abs = Math.abs(n);
  if (Math.round(abs) < 1024) return `${sign}${Math.round(abs)} B`;
  const { text, unit } = scaled(abs, 1024, ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']);
  return `${sign}${text} ${unit}`;
}

/** "450ms", "12.3s", "3m05s", "1h02m". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return `${ms}ms`;
  const sign = ms < 0 ? '-' : '';
  const abs = Math.abs(ms);
  if (Math.round(abs) < 1000) return `${sign}${Math.round(abs)}ms`;
  const tenths = Math.round(abs / 100);
  if (tenths < 600) return `${sign}${(tenths / 10).toFixed(1)}s`;
  const seconds = Math.round(abs / 1000);
  if (seconds < 3600) return `${sign}${Math.floor(seconds / 60)}m${pad2(seconds % 60)}s`;
  const minutes = Math.floor(seconds / 60);
  return `${sign}${Math.floor(minutes / 60)}h${pad2(minutes % 60)}m`;
}

/** "12.5/s", "123.4k/s", "2.0M/s". */
export function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return `${perSecond}/s`;
  const sign = perSecond < 0 ? '-' : '';
  const { text, unit } = scaled(Math.abs(perSecond), 1000, ['', 'k', 'M', 'G', 'T']);
  return `${sign}${text}${unit}/s`;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}
