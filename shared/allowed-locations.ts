import type { ChunkLocation } from './chunk-message.js';
import { CachewarmError } from './errors.js';
import { normalizePrefix } from './json-values.js';

/**
 * Where the jobs a standing-queue populator serves may keep their chunks: `s3://BUCKET` or
 * `s3://BUCKET/PREFIX`. Anyone who can send to the queue can name a location; only these
 * are read, the rest is set aside.
 */
export function parseAllowedLocation(text: string): ChunkLocation {
  const match = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(text.trim());
  // S3's bucket naming rules, loosely: 3–63 lower-case letters, digits, dots and hyphens.
  if (!match?.[1] || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(match[1])) {
    throw new CachewarmError('INVALID_ARGUMENT', `allowed location ${JSON.stringify(text)}: expected s3://BUCKET or s3://BUCKET/PREFIX`);
  }
  const prefix = normalizePrefix(match[2]);
  if (prefix.split('/').some((part) => part === '.' || part === '..' || part === '')) {
    if (prefix !== '') throw new CachewarmError('INVALID_ARGUMENT', `allowed location ${JSON.stringify(text)}: the prefix has an empty, "." or ".." part`);
  }
  return { bucket: match[1], prefix };
}

/** The allowed location that holds `location` (the same bucket, under the prefix at a `/`), if any. */
export function allowedLocationOf(location: ChunkLocation, allowed: readonly ChunkLocation[]): ChunkLocation | undefined {
  const prefix = normalizePrefix(location.prefix);
  return allowed.find((a) => a.bucket === location.bucket && (a.prefix === '' || prefix === a.prefix || prefix.startsWith(`${a.prefix}/`)));
}

export const describeAllowed = (allowed: readonly ChunkLocation[]): string => allowed.map((a) => `s3://${a.bucket}/${a.prefix}`).join(', ');
