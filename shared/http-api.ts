/**
 * The plumbing shared by cachewarm's small authenticated JSON APIs (the dumper sidecar and
 * the controller service): bearer-token checks, bounded JSON bodies, JSON error bodies with
 * a code, and one request handler that turns whatever a route throws into an answer. Each
 * server keeps only its routes.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { CachewarmError, isCachewarmError } from './errors.js';
import { parseAddress } from './topology.js';
import type { Log } from './log.js';

/** Every refusal's body. */
export interface ApiErrorBody {
  readonly error: {
    /** A CachewarmError code (NODE_BUSY, INVALID_ARGUMENT, …) or an HTTP-level one (UNAUTHORIZED, NOT_FOUND, …). */
    readonly code: string;
    readonly message: string;
    /** For a refused request body: the field at fault. */
    readonly field?: string | undefined;
  };
}

/** One structured log event; never given a token. */

/** A refusal with its HTTP status; everything a route throws that is not one is a 500. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
    readonly field?: string,
  ) {
    super(message);
  }
}

export interface Reply {
  readonly status: number;
  /** A string is sent as is (with `contentType`); anything else as one line of JSON. */
  readonly body: unknown;
  readonly contentType?: string;
  readonly headers?: Readonly<Record<string, string>>;
}

/** A route: the answer to one request whose path is `pathname`. */
export type Route = (req: http.IncomingMessage, pathname: string) => Promise<Reply>;

export function sendReply(res: http.ServerResponse, reply: Reply): void {
  const text = typeof reply.body === 'string' ? reply.body : `${JSON.stringify(reply.body)}\n`;
  res.writeHead(reply.status, {
    'content-type': reply.contentType ?? 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...reply.headers,
  });
  res.end(text);
}

export function errorReply(error: HttpError): Reply {
  const body: ApiErrorBody = { error: { code: error.code, message: error.message, ...(error.field && { field: error.field }) } };
  return { status: error.status, body, headers: error.headers };
}

/** The body as JSON, refusing more than `maxBytes` without buffering it. */
export function readJsonBody(req: http.IncomingMessage, maxBytes: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const tooLarge = (): HttpError => new HttpError(413, 'PAYLOAD_TOO_LARGE', `the request body is larger than ${maxBytes} bytes`);
    const declared = Number(req.headers['content-length']);
    if (declared > maxBytes) {
      // Discard what the client still sends, so the connection can answer and stay usable.
      req.resume();
      reject(tooLarge());
      return;
    }
    const parts: Buffer[] = [];
    let bytes = 0;
    let refused = false;
    req.on('data', (part: Buffer) => {
      if (refused) return;
      bytes += part.length;
      if (bytes > maxBytes) {
        refused = true;
        parts.length = 0;
        reject(tooLarge());
        return;
      }
      parts.push(part);
    });
    req.on('error', reject);
    // A client gone mid-body: settle, so nothing waits on a body that will never end.
    req.on('close', () => {
      if (!req.complete) reject(new HttpError(400, 'ABORTED', 'the request body was cut short'));
    });
    req.on('end', () => {
      if (refused) return;
      const text = Buffer.concat(parts).toString('utf8');
      try {
        resolve(JSON.parse(text));
      } catch (error) {
        reject(new HttpError(400, 'INVALID_ARGUMENT', `the request body is not JSON: ${(error as Error).message}`, {}, '(body)'));
      }
    });
  });
}

/**
 * A bearer token check. Hashes of both sides are compared (equal lengths, constant time), so
 * neither the token nor its length leaks through timing. `realm` names the API in the
 * WWW-Authenticate header of a refusal.
 */
export class BearerAuth {
  private readonly digest: Buffer;

  constructor(
    token: string,
    private readonly realm: string,
  ) {
    if (token === '') throw new CachewarmError('INVALID_ARGUMENT', `${realm} needs a non-empty bearer token`);
    this.digest = sha256(token);
  }

  matches(header: string | undefined): boolean {
    const match = /^Bearer +(\S+) *$/i.exec(header ?? '');
    if (!match) return false;
    return timingSafeEqual(sha256(match[1] as string), this.digest);
  }

  /** Throws the 401 unless `header` carries the token. */
  require(header: string | undefined): void {
    if (this.matches(header)) return;
    const why = header ? 'the bearer token was refused' : 'an Authorization: Bearer <token> header is required';
    throw new HttpError(401, 'UNAUTHORIZED', why, { 'www-authenticate': `Bearer realm="${this.realm}"` });
  }
}

const sha256 = (text: string): Buffer => createHash('sha256').update(text).digest();

/** The path of a request target (`/v1/x?y` → `/v1/x`); 400 for one that is not a path. */
export function pathOf(target: string | undefined): string {
  const refused = (): HttpError => new HttpError(400, 'BAD_REQUEST', `the request target ${JSON.stringify(target)} is not a path`);
  if (!target?.startsWith('/')) throw refused();
  try {
    return new URL(target, 'http://localhost').pathname;
  } catch {
    throw refused();
  }
}

/** `<collection>/<id>` → the id, decoded; undefined for any other path. */
export function idInPath(pathname: string, collection: string): string | undefined {
  const prefix = `${collection}/`;
  if (!pathname.startsWith(prefix)) return undefined;
  const rest = pathname.slice(prefix.length);
  if (rest === '' || rest.includes('/')) return undefined;
  try {
    return decodeURIComponent(rest);
  } catch {
    return undefined;
  }
}

/** 405 with Allow unless the method is one of `allowed`. */
export function allow(method: string | undefined, allowed: readonly string[]): void {
  if (!allowed.includes(method ?? '')) {
    throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${method} is not allowed here; use ${allowed.join(' or ')}`, { allow: allowed.join(', ') });
  }
}

export function describeError(error: unknown): { code: string; message: string } {
  if (isCachewarmError(error)) return { code: error.code, message: error.message };
  return { code: 'INTERNAL', message: error instanceof Error ? error.message : String(error) };
}

export function httpUrl(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** `host:port` to listen on; port 0 asks for a free port (the `listening` log line names it). */
export function parseListenAddress(text: string): { host: string; port: number } {
  if (text.endsWith(':0')) return { host: parseAddress(`${text.slice(0, -2)}:1`).host, port: 0 };
  return parseAddress(text);
}

export interface JsonApiServerOptions {
  readonly route: Route;
  readonly log: Log;
  /** Open connections at once: each may hold a request body being read. */
  readonly maxConnections: number;
  readonly requestTimeoutMs?: number | undefined;
}

/**
 * An http.Server answering every request through `route`: an HttpError becomes its JSON
 * refusal, anything else a logged 500. Routine reads (GETs that succeed: probes, scrapes,
 * status polls, every few seconds) are not logged; everything else is, one line each.
 */
export function createJsonApiServer(options: JsonApiServerOptions): http.Server {
  const { route, log } = options;

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const startedMs = Date.now();
    let pathname = req.url ?? '/';
    let reply: Reply;
    try {
      pathname = pathOf(req.url);
      reply = await route(req, pathname);
    } catch (error) {
      if (error instanceof HttpError) {
        reply = errorReply(error);
      } else {
        log({ event: 'request-error', method: req.method, path: pathname, error: describeError(error) });
        reply = errorReply(new HttpError(500, 'INTERNAL', `internal error: ${describeError(error).message}`));
      }
    }
    // Drain an unread body (a refused or body-less request) so a keep-alive connection stays usable.
    if (!req.readableEnded) req.resume();
    sendReply(res, reply);
    if (req.method === 'GET' && reply.status < 400) return;
    const durationMs = Date.now() - startedMs;
    log({ event: 'request', method: req.method, path: pathname, status: reply.status, durationMs, remote: req.socket.remoteAddress });
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      // Only writing the answer can get here (the socket went away): nobody is left to tell.
      log({ event: 'request-error', method: req.method, error: describeError(error) });
      res.destroy();
    });
  });
  server.maxConnections = options.maxConnections;
  server.requestTimeout = options.requestTimeoutMs ?? 60_000;
  return server;
}

/** A scrape of `registry`: its exposition text, collected now. */
export async function metricsReply(registry: Registry): Promise<Reply> {
  return { status: 200, body: await registry.metrics(), contentType: registry.contentType };
}

/**
 * A listener that serves `GET /metrics` alone, without a token: for Prometheus scraping from
 * inside the cluster, while the API (which starts dumps and warms) keeps its token.
 */
export function createMetricsServer(registry: Registry, log: Log): http.Server {
  return createJsonApiServer({
    route: async (req, pathname) => {
      if (pathname !== '/metrics') throw new HttpError(404, 'NOT_FOUND', `this listener serves /metrics only, not ${pathname}`);
      allow(req.method, ['GET']);
      return metricsReply(registry);
    },
    log,
    maxConnections: 8,
  });
}

/** Listens; port 0 picks a free one. Resolves with the base URL, rejects with EADDRINUSE and the like. */
export async function listenHttp(server: http.Server, host: string, port: number): Promise<string> {
  server.listen(port, host);
  await once(server, 'listening');
  return httpUrl(host, (server.address() as AddressInfo).port);
}
