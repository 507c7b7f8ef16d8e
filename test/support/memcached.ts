// Tests start real memcached processes through the same launcher the demo and the benchmark use.
export * from '../../shared/local-memcached.js';
