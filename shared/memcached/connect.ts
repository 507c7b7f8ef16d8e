import { type Endpoint, MemcachedConnection } from './connection.js';

/**
 * Opens a connection to a memcached node. Passed in rather than imported, so that tests and
 * SASL or proxied deployments can dial differently while the dumper and populators stay as
 * they are.
 */
export type Connect = (endpoint: Endpoint, signal?: AbortSignal) => Promise<MemcachedConnection>;

export const connectDirect: Connect = (endpoint, signal) => MemcachedConnection.connect(endpoint, { signal });
