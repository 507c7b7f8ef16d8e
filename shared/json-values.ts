/** A JSON object (not null, not an array): what a parsed document, body or message must be. */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** An S3 key prefix as stored and compared: no `/` at either end, `''` for none. */
export function normalizePrefix(prefix: string | undefined): string {
  return (prefix ?? '').replace(/^\/+|\/+$/g, '');
}
