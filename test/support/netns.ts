/**
 * A small fleet of "hosts" on one machine, for the multi-host test: each host is a Linux network
 * namespace with one interface (`eth0`) and one address of its own on a private /24
 * (10.213.<n>.0/24, <n> chosen per run), all plugged into one bridge that lives in a namespace of
 * its own (the "switch"). The hosts share the machine's filesystem, kernel and CPUs; only the
 * network is theirs.
 *
 * No host has a loopback address: `lo` is up (the kernel routes a host's traffic to its own
 * address through it) but 127.0.0.1 and ::1 are removed, so a process that tried to reach
 * anything on loopback would get "network unreachable". Every connection between two processes
 * goes through the bridge, between the addresses the topology names.
 *
 * The test process itself stays in the root namespace; to reach the hosts (load the source,
 * read the targets back, ask the controller's API, make the queues) it gets a veth into the
 * bridge with the subnet's .254, the one address outside the namespaces made here. It goes
 * with the switch namespace (a veth pair dies with either end), and is removed explicitly too.
 *
 * Names start with `cw<pid>-` (this process's pid), so that two runs never share one. Needs
 * root (`ip netns add`, veth pairs, a bridge): see `networkUnavailable()`.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { statsAt } from '../../shared/memcached/commands.js';
import { AWS_TEST_ENV, CLI, type CliProcess } from './cli-process.js';
import { within } from './wait.js';

const run = promisify(execFile);
const IP = 'ip';
const SWITCH = 'sw';
const TESTER_OCTET = 254;

/** Why the network cannot be built here (not root, no `ip netns`, no veth or bridge support), or undefined when it can. */
export function networkUnavailable(): string | undefined {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'network namespaces need root (ip netns add, veth pairs, a bridge)';
  const probe = `cw${process.pid}-probe`;
  const ip = (...args: string[]): { ok: boolean; why: string } => {
    const done = spawnSync(IP, args, { encoding: 'utf8' });
    return { ok: !done.error && done.status === 0, why: done.error?.message ?? done.stderr.trim() };
  };
  const added = ip('netns', 'add', probe);
  if (!added.ok) return `\`ip netns add\` failed: ${added.why}`;
  try {
    const bridge = ip('-n', probe, 'link', 'add', 'br0', 'type', 'bridge');
    if (!bridge.ok) return `a bridge cannot be made in a network namespace: ${bridge.why}`;
    const veth = ip('-n', probe, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1');
    if (!veth.ok) return `a veth pair cannot be made in a network namespace: ${veth.why}`;
    return undefined;
  } finally {
    ip('netns', 'del', probe);
  }
}

/** A memcached process on a host, listening on the host's address. */
export interface HostMemcached {
  readonly host: string;
  /** `<host address>:11211` */
  readonly address: string;
  readonly pid: number;
  /** SIGTERM, and wait for the exit (SIGKILL after 5 s). */
  stop(): Promise<void>;
}

/** A `cachewarm` process on a host: CliProcess, plus waiting for a log line by predicate and killing the host's process group. */
export interface HostCli extends CliProcess {
  readonly host: string;
  /** The first log line (seen or to come) that `matches`; fails the test if none within `timeoutMs` (default 60 s) or the process exits first. */
  line(matches: (line: Record<string, unknown>) => boolean, what: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** SIGKILL to its whole process group: the host dies under it, nothing handed back. */
  killHard(): void;
}

interface Host {
  readonly name: string;
  readonly netns: string;
  readonly address: string;
}

export class HostNetwork {
  /** `cw<pid>-` */
  readonly prefix = `cw${process.pid}-`;
  /** `10.213.<n>` */
  readonly subnet: string;
  /** The test process's own address on the bridge (root namespace). */
  readonly testerAddress: string;
  private readonly hosts = new Map<string, Host>();
  /** Namespaces made, the switch's first. */
  private readonly made: string[] = [];
  private testerLink: string | undefined;
  private readonly children = new Set<ChildProcess>();
  private destroyed: Promise<void> | undefined;
  private readonly onExit = (): void => this.destroySync();
  private readonly onSignal = (signal: NodeJS.Signals): void => {
    // Held off while cleaning up: the test runner follows a Ctrl-C with a SIGTERM of its own,
    // which would otherwise end this process halfway through, once destroySync removed our listeners.
    const holdOff = (): void => undefined;
    process.on('SIGINT', holdOff).on('SIGTERM', holdOff);
    this.destroySync();
    process.removeListener('SIGINT', holdOff).removeListener('SIGTERM', holdOff);
    process.kill(process.pid, signal);
  };

  private constructor(subnet: string) {
    this.subnet = subnet;
    this.testerAddress = `${subnet}.${TESTER_OCTET}`;
  }

  /**
   * Makes the switch and one host per entry (name → last octet of its address, 1 to 253). If
   * anything fails midway, what was made is removed before the error is thrown.
   */
  static async create(hosts: Readonly<Record<string, number>>): Promise<HostNetwork> {
    const network = new HostNetwork(await freeSubnet());
    process.once('exit', network.onExit);
    process.once('SIGINT', network.onSignal);
    process.once('SIGTERM', network.onSignal);
    try {
      await network.build(hosts);
    } catch (error) {
      await network.destroy().catch(() => undefined);
      throw error;
    }
    return network;
  }

  private async build(hosts: Readonly<Record<string, number>>): Promise<void> {
    const sw = `${this.prefix}${SWITCH}`;
    await this.addNetns(sw);
    await ip('-n', sw, 'link', 'add', 'br0', 'type', 'bridge');
    await ip('-n', sw, 'link', 'set', 'br0', 'up');
    let port = 0;
    for (const [name, octet] of Object.entries(hosts)) {
      if (!(Number.isInteger(octet) && octet >= 1 && octet < TESTER_OCTET)) throw new Error(`host ${name}: octet ${octet} is not 1 to 253`);
      const netns = `${this.prefix}${name}`;
      const address = `${this.subnet}.${octet}`;
      await this.addNetns(netns);
      const plug = `p${port++}`;
      await ip('-n', sw, 'link', 'add', plug, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
      await ip('-n', sw, 'link', 'set', plug, 'master', 'br0', 'up');
      await ip('-n', netns, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
      await ip('-n', netns, 'link', 'set', 'eth0', 'up');
      // Up for the host's traffic to its own address; without 127.0.0.1 and ::1, nothing reaches loopback.
      await ip('-n', netns, 'link', 'set', 'lo', 'up');
      await ip('-n', netns, 'addr', 'flush', 'dev', 'lo');
      this.hosts.set(name, { name, netns, address });
    }
    // The test process's way in: a veth from the root namespace into the bridge.
    const link = `${this.prefix}t`;
    await ip('link', 'add', link, 'type', 'veth', 'peer', 'name', 'tester', 'netns', sw);
    this.testerLink = link;
    await ip('-n', sw, 'link', 'set', 'tester', 'master', 'br0', 'up');
    await ip('addr', 'add', `${this.testerAddress}/24`, 'dev', link);
    await ip('link', 'set', link, 'up');
  }

  private async addNetns(netns: string): Promise<void> {
    await ip('netns', 'add', netns);
    this.made.push(netns);
  }

  private host(name: string): Host {
    const host = this.hosts.get(name);
    if (!host) throw new Error(`no host ${name} (hosts: ${[...this.hosts.keys()].join(', ')})`);
    return host;
  }

  /** The host's address on the bridge. */
  address(name: string): string {
    return this.host(name).address;
  }

  /**
   * Runs `command` on the host (`ip netns exec`, which execs it in place: the child's pid is the
   * command's), as the leader of a process group of its own. Its stdin is a pipe only when asked.
   */
  spawn(name: string, command: string, args: readonly string[], options: { env?: Record<string, string>; stdin?: 'pipe' | 'ignore' } = {}): ChildProcess {
    if (this.destroyed) throw new Error('the network is gone');
    const child = spawn(IP, ['netns', 'exec', this.host(name).netns, command, ...args], {
      env: { ...process.env, ...options.env },
      stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'],
      detached: true,
    });
    this.children.add(child);
    child.once('close', () => this.children.delete(child));
    return child;
  }

  /** `cachewarm <args>` on the host, on this process's Node, logging JSON lines (read as startCli reads them). */
  startCli(name: string, args: readonly string[], env: Record<string, string> = {}): HostCli {
    return watchCli(name, this.spawn(name, process.execPath, [CLI, ...args], { env: { ...AWS_TEST_ENV, CACHEWARM_LOG_FORMAT: 'json', ...env } }), args);
  }

  /** memcached on the host at `<address>:11211`, once it answers there (asked from the test process, across the bridge). */
  async startMemcached(name: string, options: { memoryMb?: number; threads?: number } = {}): Promise<HostMemcached> {
    const address = this.address(name);
    const bin = process.env['MEMCACHED_BIN'] || 'memcached';
    const args = ['-l', address, '-p', '11211', '-U', '0', '-m', String(options.memoryMb ?? 64), '-t', String(options.threads ?? 2), '-u', 'root'];
    const child = this.spawn(name, bin, args);
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    child.stdout?.resume();
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    const pid = child.pid as number;
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`memcached on ${name} exited before serving (${bin} ${args.join(' ')}): ${stderr.trim()}`);
      const answered = await statsAt({ host: address, port: 11211 }).then((s) => Number(s.get('pid')), () => undefined);
      if (answered === pid) break;
      if (answered !== undefined) throw new Error(`${address}:11211 is served by another memcached (pid ${answered}, not ${pid})`);
      if (Date.now() > deadline) {
        killGroup(child, 'SIGKILL');
        throw new Error(`memcached on ${name} did not answer at ${address}:11211 within 10 s: ${stderr.trim()}`);
      }
      await delay(25);
    }
    return {
      host: name,
      address: `${address}:11211`,
      pid,
      stop: async () => {
        killGroup(child, 'SIGTERM');
        const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      },
    };
  }

  /** The S3/SQS emulator (netns-fauxqs.ts) on the host, at `http://<address>:<port>`, once it listens. */
  async startEmulator(name: string, port = 4566): Promise<{ readonly endpoint: string; stop(): Promise<void> }> {
    const script = fileURLToPath(new URL('./netns-fauxqs.js', import.meta.url));
    const child = this.spawn(name, process.execPath, [script, this.address(name), String(port)]);
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    const first = new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', resolve);
      void exited.then(() => reject(new Error(`the emulator on ${name} exited before listening: ${stderr.trim()}`)));
    });
    const { endpoint } = JSON.parse(await within(first, { timeoutMs: 30_000, what: `the emulator on ${name} listening`, detail: () => stderr })) as { endpoint: string };
    return {
      endpoint,
      stop: async () => {
        killGroup(child, 'SIGTERM');
        await exited;
      },
    };
  }

  /**
   * Kills every process started here (their process groups, then anything else left inside the
   * namespaces, which only this network's processes can be), removes the tester's veth and the
   * namespaces (their veths and the bridge go with them), and checks that none is left.
   * Idempotent; safe after a build that failed midway.
   */
  destroy(): Promise<void> {
    this.destroyed ??= this.tearDown();
    return this.destroyed;
  }

  private async tearDown(): Promise<void> {
    const closing = [...this.children].map((child) => new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('close', () => resolve()))));
    for (const child of this.children) killGroup(child, 'SIGKILL');
    await within(Promise.all(closing), { timeoutMs: 10_000, what: 'every process on the test hosts to exit' }).catch(() => undefined);
    this.destroySync();
    const { stdout } = await run(IP, ['netns', 'list']);
    const left = stdout.split('\n').map((l) => l.split(' ')[0]).filter((n): n is string => !!n && n.startsWith(this.prefix));
    if (left.length > 0) throw new Error(`network namespaces left behind: ${left.join(', ')}`);
  }

  /** What destroy does, synchronously: also run when the process exits or is interrupted. */
  private destroySync(): void {
    process.removeListener('exit', this.onExit);
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
    for (const child of this.children) killGroup(child, 'SIGKILL');
    for (const netns of [...this.made].reverse()) {
      const pids = spawnSync(IP, ['netns', 'pids', netns], { encoding: 'utf8' }).stdout ?? '';
      for (const pid of pids.split(/\s+/).filter(Boolean).map(Number)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
    }
    if (this.testerLink) spawnSync(IP, ['link', 'del', this.testerLink], { stdio: 'ignore' });
    for (const netns of [...this.made].reverse()) spawnSync(IP, ['netns', 'del', netns], { stdio: 'ignore' });
    this.made.length = 0;
    this.testerLink = undefined;
  }
}

async function ip(...args: string[]): Promise<void> {
  try {
    await run(IP, args);
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new Error(`ip ${args.join(' ')} failed: ${stderr || String(error)}`);
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // the group is gone
  }
}

/**
 * 10.213.<n>.0/24 for a run, <n> from the pid, the first that no address or route of the root
 * namespace overlaps (other than the default route): the tester's veth adds a route for it there.
 */
async function freeSubnet(): Promise<string> {
  const [addresses, routes] = await Promise.all([run(IP, ['-4', '-o', 'addr', 'show']), run(IP, ['-4', 'route', 'show', 'table', 'all'])]);
  const taken = [...addresses.stdout.matchAll(/inet (\d+\.\d+\.\d+\.\d+)\/(\d+)/g), ...routes.stdout.matchAll(/^(?:\S+ )?(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?/gm)].map(
    (m) => ({ base: toNumber(m[1] as string), bits: Number(m[2] ?? 32) }),
  );
  const start = process.pid % 200;
  for (let i = 0; i < 200; i++) {
    const n = 20 + ((start + i) % 200);
    const net = toNumber(`10.213.${n}.0`);
    const overlaps = taken.some(({ base, bits }) => {
      const common = Math.min(bits, 24);
      const mask = common === 0 ? 0 : (~0 << (32 - common)) >>> 0;
      return bits > 0 && ((base & mask) >>> 0) === ((net & mask) >>> 0);
    });
    if (!overlaps) return `10.213.${n}`;
  }
  throw new Error('no free 10.213.<n>.0/24 for the test network: every one overlaps an address or a route here');
}

function toNumber(address: string): number {
  return address.split('.').reduce((sum, part) => sum * 256 + Number(part), 0) >>> 0;
}

/** As startCli (support/cli-process.ts) reads a cachewarm process's output, for a process on a host. */
function watchCli(host: string, child: ChildProcess, args: readonly string[]): HostCli {
  const lines: Record<string, unknown>[] = [];
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (text: string) => (out += text));
  const waiting: { matches: (line: Record<string, unknown>) => boolean; resolve: (line: Record<string, unknown>) => void }[] = [];
  createInterface({ input: child.stderr as NodeJS.ReadableStream }).on('line', (text) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      line = { event: 'text', line: text };
    }
    lines.push(line);
    for (const w of waiting.filter((w) => w.matches(line))) {
      waiting.splice(waiting.indexOf(w), 1);
      w.resolve(line);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const label = `cachewarm ${args.join(' ')} on ${host}`;
  const line = (matches: (line: Record<string, unknown>) => boolean, what: string, timeoutMs = 60_000): Promise<Record<string, unknown>> => {
    const seen = lines.find(matches);
    if (seen) return Promise.resolve(seen);
    const logged = new Promise<Record<string, unknown>>((resolve, reject) => {
      waiting.push({ matches, resolve });
      void exited.then(() => reject(new Error(`${label} exited before logging ${what}: ${JSON.stringify(lines.slice(-10))}`)));
    });
    return within(logged, { timeoutMs, what: `${what} from ${label}`, detail: () => lines.slice(-5) });
  };
  return {
    host,
    child,
    lines,
    stdout: () => out,
    exited,
    line,
    event: (name, timeoutMs) => line((l) => l['event'] === name, `${name} log line`, timeoutMs),
    exit: (timeoutMs = 60_000) => within(exited, { timeoutMs, what: `exit of ${label}`, detail: () => lines.slice(-5) }),
    kill: (signal = 'SIGTERM') => killGroup(child, signal),
    killHard: () => killGroup(child, 'SIGKILL'),
  };
}
