// Raw HTTP requests to the services under test (sidecar, controller), as any client would send them.

export interface HttpAnswer {
  status: number;
  headers: Headers;
  /** Parsed JSON, read freely by the assertions. */
  body: any;
  text: string;
}

export interface HttpOptions {
  /** The bearer token; the default one when undefined, no authorization header when null. */
  token?: string | null;
  /** Sent as JSON. */
  body?: unknown;
  /** Sent as it is (with a JSON content type), instead of `body`. */
  rawBody?: string;
}

export type HttpRequest = (base: string, method: string, pathname: string, options?: HttpOptions) => Promise<HttpAnswer>;

/** A request function that sends `defaultToken` unless told otherwise. */
export function httpWithToken(defaultToken: string): HttpRequest {
  return async (base, method, pathname, options = {}) => {
    const token = options.token === undefined ? defaultToken : options.token;
    const body = options.rawBody ?? (options.body === undefined ? undefined : JSON.stringify(options.body));
    const response = await fetch(`${base}${pathname}`, {
      method,
      headers: { ...(token !== null && { authorization: `Bearer ${token}` }), ...(body !== undefined && { 'content-type': 'application/json' }) },
      ...(body !== undefined && { body }),
      signal: AbortSignal.timeout(20_000),
    });
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    return { status: response.status, headers: response.headers, body: parsed, text };
  };
}
