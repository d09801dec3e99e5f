// Bench command-line options and the plan they select (full matrix, --quick subset, or filters); pure.
import { parseArgs } from 'node:util';
import { SETUPS, type SetupName } from './setups.js';
import type { Cell, MatrixPlan } from './throughput.js';

export const SIZES = { '1k': 1024, '64k': 65536, '1m': 1 << 20 } as const;
export type SizeKey = keyof typeof SIZES;
export const PHASES = ['matrix', 'e2e', 'memory', 'reject'] as const;
export type Phase = (typeof PHASES)[number];

export interface BenchOptions {
  quick: boolean;
  setups: SetupName[];
  sizes: number[];
  sessions: number[];
  modes: Array<'new' | 'reuse'>;
  phases: Phase[];
  plan: MatrixPlan;
  /** end-to-end: offered rates (msg/s) and seconds per rate */
  e2eRates: number[];
  e2eSeconds: number;
  /** memory: idle connections, streamed messages × MB, messages delivered in total */
  idleConnections: number;
  streams: number;
  streamMb: number;
  flatMessages: number;
  rejectAttempts: number;
  build: boolean;
  /** a built mailhook checkout measured as the 'baseline' setup (before/after comparisons) */
  baseline: string | undefined;
  out: string | undefined;
  /** render a saved results JSON as Markdown and exit */
  report: string | undefined;
  help: boolean;
}

export const USAGE = `usage: npm run bench -- [options]
  --quick               short subset: 1 KB and 1 MB at 20 sessions, 1 run per cell, short phases
  --setups a,b          any of ${SETUPS.join(', ')}
  --sizes 1k,64k,1m     message payload sizes
  --sessions 1,20,100   parallel smtp-source sessions
  --modes new,reuse     new connection per message, and/or connection reuse (-d)
  --phases ${PHASES.join(',')}
  --runs N              timed runs per cell (median of N; default 3, --quick 1)
  --seconds S           target seconds per timed run (default 3, --quick 1)
  --e2e-seconds S       seconds per offered rate in the end-to-end phase (default 10, --quick 3)
  --idle N              idle connections in the memory phase (default 1000)
  --streams NxMB        concurrent streamed messages × size in MB (default 20x20)
  --flat-messages N     messages delivered in the long run (default 100000, --quick 10000)
  --reject-attempts N   connections in the rejection flood (default 10000, --quick 2000)
  --baseline DIR        also measure the mailhook built in DIR (another checkout) as setup "baseline"
  --no-build            do not run \`npm run build\` first (mailhook runs from dist/)
  --out FILE            results JSON (default bench/results/<timestamp>.json)
  --report FILE         print the Markdown report of a saved results JSON and exit`;

const list = (v: string | undefined): string[] | undefined => (v === undefined ? undefined : v.split(',').map((s) => s.trim()).filter(Boolean));

export function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      setups: { type: 'string' },
      sizes: { type: 'string' },
      sessions: { type: 'string' },
      modes: { type: 'string' },
      phases: { type: 'string' },
      runs: { type: 'string' },
      seconds: { type: 'string' },
      'e2e-seconds': { type: 'string' },
      idle: { type: 'string' },
      streams: { type: 'string' },
      'flat-messages': { type: 'string' },
      'reject-attempts': { type: 'string' },
      'no-build': { type: 'boolean', default: false },
      baseline: { type: 'string' },
      out: { type: 'string' },
      report: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const quick = values.quick === true;
  const setups = (list(values.setups) ?? SETUPS.filter((s) => !s.startsWith('baseline') || values.baseline !== undefined)).map((s) => {
    if (!(SETUPS as readonly string[]).includes(s)) throw new Error(`unknown setup "${s}"; use ${SETUPS.join(', ')}`);
    return s as SetupName;
  });
  const sizes = (list(values.sizes) ?? (quick ? ['1k', '1m'] : Object.keys(SIZES))).map((s) => {
    const v = SIZES[s.toLowerCase() as SizeKey];
    if (v === undefined) throw new Error(`unknown size "${s}"; use ${Object.keys(SIZES).join(', ')}`);
    return v;
  });
  const sessions = (list(values.sessions) ?? (quick ? ['20'] : ['1', '20', '100'])).map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1 || n > 200) throw new Error(`--sessions: "${s}" is not 1..200`);
    return n;
  });
  const modes = (list(values.modes) ?? ['new', 'reuse']).map((m) => {
    if (m !== 'new' && m !== 'reuse') throw new Error(`--modes: "${m}" is not new or reuse`);
    return m;
  });
  const phases = (list(values.phases) ?? [...PHASES]).map((p) => {
    if (!(PHASES as readonly string[]).includes(p)) throw new Error(`--phases: "${p}"; use ${PHASES.join(', ')}`);
    return p as Phase;
  });
  const runs = values.runs !== undefined ? Number(values.runs) : quick ? 1 : 3;
  const seconds = values.seconds !== undefined ? Number(values.seconds) : quick ? 1 : 3;
  if (!Number.isInteger(runs) || runs < 1 || runs > 20) throw new Error('--runs must be 1..20');
  if (!(seconds > 0 && seconds <= 60)) throw new Error('--seconds must be in (0, 60]');
  const int = (name: string, v: string | undefined, dflt: number, min: number, max: number): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in ${min}..${max}`);
    return n;
  };
  const streamsMatch = /^(\d+)x(\d+)$/.exec(values.streams ?? '20x20');
  if (!streamsMatch) throw new Error('--streams must look like 20x20 (sessions x MB)');
  return {
    quick,
    setups,
    sizes,
    sessions,
    modes,
    phases,
    plan: { runs, targetSeconds: seconds, maxMessages: 100_000, drainTimeoutMs: 300_000 },
    e2eRates: [100, 500, 1000],
    e2eSeconds: int('e2e-seconds', values['e2e-seconds'], quick ? 3 : 10, 1, 120),
    idleConnections: int('idle', values.idle, 1000, 1, 5000),
    streams: int('streams', streamsMatch[1], 20, 1, 100),
    streamMb: int('streams', streamsMatch[2], 20, 1, 100),
    flatMessages: int('flat-messages', values['flat-messages'], quick ? 10_000 : 100_000, 100, 1_000_000),
    rejectAttempts: int('reject-attempts', values['reject-attempts'], quick ? 2000 : 10_000, 100, 1_000_000),
    build: values['no-build'] !== true,
    baseline: values.baseline,
    out: values.out,
    report: values.report,
    help: values.help === true,
  };
}

/** The cells of one setup, in run order; the greeting-delay variant only matters with a new connection per message. */
export function cellsFor(setup: SetupName, o: Pick<BenchOptions, 'sizes' | 'sessions' | 'modes'>): Cell[] {
  const cells: Cell[] = [];
  for (const mode of o.modes) {
    if (setup === 'mailhook-g100' && mode === 'reuse') continue;
    for (const size of o.sizes) for (const sessions of o.sessions) cells.push({ setup, size, sessions, reuse: mode === 'reuse' });
  }
  return cells;
}
