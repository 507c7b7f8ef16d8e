// Reads a Dockerfile and a .dockerignore the way `docker build` does, as far as the tests of
// the image need: instructions (continuation lines joined, comments dropped), build stages,
// COPY sources and flags, ARG defaults in FROM, and .dockerignore's exclusion rules.

export interface Instruction {
  /** upper case: FROM, RUN, COPY, … */
  readonly keyword: string;
  /** the rest of the instruction, continuation lines joined with a space */
  readonly text: string;
  /** 1-based line of the instruction's first line */
  readonly line: number;
}

export interface Stage {
  /** the image, its ARGs substituted */
  readonly from: string;
  readonly name: string | undefined;
  readonly instructions: readonly Instruction[];
}

export interface Copy {
  readonly stage: Stage;
  readonly line: number;
  /** `--from=…`, when it copies from another stage or image rather than the build context */
  readonly from: string | undefined;
  readonly sources: readonly string[];
  readonly destination: string;
}

export interface Dockerfile {
  /** ARGs declared before the first FROM, with their defaults */
  readonly globalArgs: ReadonlyMap<string, string>;
  readonly stages: readonly Stage[];
}

export function parseDockerfile(text: string): Dockerfile {
  const instructions: Instruction[] = [];
  const lines = text.split(/\r?\n/);
  let pending: { text: string; line: number } | undefined;
  for (const [index, raw] of lines.entries()) {
    const trimmed = raw.trim();
    // A comment line (parser directives included), also inside a continued instruction.
    if (trimmed.startsWith('#')) continue;
    if (pending === undefined && trimmed === '') continue;
    const continued = /\\$/.test(trimmed);
    const part = continued ? trimmed.slice(0, -1).trim() : trimmed;
    pending = pending === undefined ? { text: part, line: index + 1 } : { text: `${pending.text} ${part}`.trim(), line: pending.line };
    if (!continued) {
      const match = /^(\S+)\s*(.*)$/.exec(pending.text);
      if (match) instructions.push({ keyword: match[1]!.toUpperCase(), text: match[2]!, line: pending.line });
      pending = undefined;
    }
  }
  if (pending !== undefined) throw new Error(`Dockerfile: line ${pending.line}: the file ends inside a continued instruction`);

  const globalArgs = new Map<string, string>();
  const stages: { from: string; name: string | undefined; instructions: Instruction[] }[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === 'FROM') {
      const words = instruction.text.split(/\s+/).filter((w) => !w.startsWith('--'));
      const image = substitute(words[0] ?? '', globalArgs, instruction.line);
      const name = words[1]?.toUpperCase() === 'AS' ? words[2] : undefined;
      stages.push({ from: image, name, instructions: [] });
    } else if (stages.length === 0) {
      if (instruction.keyword !== 'ARG') throw new Error(`Dockerfile: line ${instruction.line}: ${instruction.keyword} before the first FROM`);
      const [name, value] = instruction.text.split('=', 2);
      globalArgs.set(name!.trim(), unquote(value?.trim() ?? ''));
    } else {
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return { globalArgs, stages };
}

/** `${NAME}` and `$NAME` from the global ARGs; an ARG with no default is an error here. */
function substitute(text: string, args: ReadonlyMap<string, string>, line: number): string {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, braced: string | undefined, bare: string | undefined) => {
    const name = braced ?? bare ?? '';
    const value = args.get(name);
    if (value === undefined) throw new Error(`Dockerfile: line ${line}: FROM uses $${name}, which no ARG before it gives a default`);
    return value;
  });
}

function unquote(text: string): string {
  return /^(["']).*\1$/.test(text) ? text.slice(1, -1) : text;
}

/** Every COPY (and ADD) of every stage. */
export function copiesOf(dockerfile: Dockerfile): Copy[] {
  const copies: Copy[] = [];
  for (const stage of dockerfile.stages) {
    for (const instruction of stage.instructions) {
      if (instruction.keyword !== 'COPY' && instruction.keyword !== 'ADD') continue;
      let words: string[];
      let flags: string[];
      const json = /^((?:--\S+\s+)*)(\[.*\])$/.exec(instruction.text);
      if (json) {
        flags = json[1]!.trim().split(/\s+/).filter(Boolean);
        words = JSON.parse(json[2]!) as string[];
      } else {
        const all = instruction.text.split(/\s+/).filter(Boolean);
        flags = all.filter((w) => w.startsWith('--'));
        words = all.filter((w) => !w.startsWith('--'));
      }
      if (words.length < 2) throw new Error(`Dockerfile: line ${instruction.line}: ${instruction.keyword} needs a source and a destination`);
      const from = flags.find((f) => f.startsWith('--from='))?.slice('--from='.length);
      copies.push({ stage, line: instruction.line, from, sources: words.slice(0, -1), destination: words.at(-1)! });
    }
  }
  return copies;
}

/** The shell commands of a stage's RUN instructions, split at `&&` (shell form only). */
export function commandsOf(stage: Stage): { line: number; words: string[] }[] {
  return stage.instructions
    .filter((i) => i.keyword === 'RUN')
    .flatMap((i) => i.text.split('&&').map((command) => ({ line: i.line, words: command.trim().split(/\s+/).filter(Boolean) })));
}

// ---------------------------------------------------------------------------------------
// .dockerignore

interface IgnorePattern {
  readonly exclusion: boolean;
  readonly regex: RegExp;
  readonly text: string;
}

/**
 * The rules of a .dockerignore, matched as Docker's patternmatcher does: the last matching
 * pattern wins, a `!` pattern takes a path back in, and a pattern that matches a directory
 * matches everything under it.
 */
export class DockerIgnore {
  private readonly patterns: readonly IgnorePattern[];

  constructor(text: string) {
    this.patterns = text
      .split(/\r?\n/)
      .map((line) => line.trim())
      .filter((line) => line !== '' && !line.startsWith('#'))
      .map((line) => {
        const exclusion = line.startsWith('!');
        const pattern = clean(exclusion ? line.slice(1).trim() : line);
        return { exclusion, regex: patternRegex(pattern), text: line };
      });
  }

  /** Whether `file` (relative to the context, `/`-separated) is left out of the build context. */
  excludes(file: string): boolean {
    const target = clean(file);
    const parents = target.split('/').slice(0, -1);
    let matched = false;
    for (const pattern of this.patterns) {
      // As patternmatcher: an inclusion is only weighed once matched, an exclusion only before.
      if (pattern.exclusion !== matched) continue;
      let match = pattern.regex.test(target);
      for (let i = 1; !match && i <= parents.length; i++) match = pattern.regex.test(parents.slice(0, i).join('/'));
      if (match) matched = !pattern.exclusion;
    }
    return matched;
  }
}

/** filepath.Clean, without a leading `/` (Docker reads patterns relative to the context). */
function clean(pattern: string): string {
  const parts: string[] = [];
  for (const part of pattern.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') parts.pop();
    else parts.push(part);
  }
  return parts.join('/');
}

function patternRegex(pattern: string): RegExp {
  let regex = '^';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === '*') {
      if (pattern[i + 1] === '*') {
        i++;
        if (pattern[i + 1] === '/') {
          i++;
          regex += '(?:.*/)?'; // `**/`: any number of directories, none included
        } else {
          regex += '.*';
        }
      } else {
        regex += '[^/]*';
      }
    } else if (ch === '?') {
      regex += '[^/]';
    } else if (ch === '\\' && i + 1 < pattern.length) {
      regex += escapeRegex(pattern[++i]!);
    } else if (ch === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end === -1) throw new Error(`.dockerignore: unclosed [ in ${JSON.stringify(pattern)}`);
      const body = pattern.slice(i + 1, end);
      regex += `[${body.startsWith('^') ? `^/${body.slice(1)}` : body}]`;
      i = end;
    } else {
      regex += escapeRegex(ch);
    }
  }
  return new RegExp(`${regex}$`);
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}
