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
