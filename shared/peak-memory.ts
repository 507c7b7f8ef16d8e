import { readFileSync } from 'node:fs';

/**
 * This process's peak resident memory in bytes. Reads VmHWM from /proc where there is one:
 * getrusage's maxRSS survives exec, so a process forked from a large parent (a benchmark
 * that holds a million items, say) would report the parent's size as its own.
 */
export function peakRssBytes(): number {
  try {
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (match) return Number(match[1]) * 1024;
  } catch {
    // not Linux: fall back to getrusage
  }
  return process.resourceUsage().maxRSS * 1024;
}
