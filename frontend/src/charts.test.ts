// @vitest-environment node
import { describe, expect, it } from 'vitest';
import type { NodeHealth, Transaction } from './api';
import {
  backlogSample,
  bucketStarts,
  downWindows,
  fleetSample,
  formatMs,
  latencySeries,
  mergeSeen,
  niceScale,
  percentile,
  pruneSamples,
  rateSeries,
  regionTotals,
  txPoint,
} from './charts';
import type { TxPoint } from './charts';

const T0 = Date.parse('2026-12-01T12:00:00Z');
const iso = (ms: number) => new Date(ms).toISOString();

function tx(id: string, over: Partial<Transaction> & { at?: number; received?: number } = {}): Transaction {
  const at = over.at ?? T0;
  const received = over.received ?? at - 100;
  return {
    transaction: id,
    status: 'completed',
    executedBy: 'a',
    region: 'westeurope',
    takeover: false,
    executedAt: iso(at),
    quantities: [],
    lines: [{ id: 1, name: 'Orange', change: -1 }],
    nodes: [
      { node: 'a', url: 'http://a', recordedAt: iso(received), reachable: true, state: 'completed' },
      { node: 'b', url: 'http://b', recordedAt: iso(received + 5), reachable: true, state: 'completed' },
    ],
    ...over,
  };
}

const point = (executedAt: number, over: Partial<TxPoint> = {}): TxPoint => ({
  id: `p${executedAt}-${Math.random()}`,
  executedAt,
  latencyMs: 100,
  region: 'westeurope',
  takeover: false,
  purchase: true,
  ...over,
});

describe('txPoint', () => {
  it("measures latency on the executor's own clock, from its record to its execution", () => {
    const p = txPoint(tx('t', { executedBy: 'b', at: T0 + 3000, received: T0 }));
    // b recorded at T0 + 5 (its clock), executed at T0 + 3000 (its clock).
    expect(p).toMatchObject({ id: 't', executedAt: T0 + 3000, latencyMs: 2995, region: 'westeurope', purchase: true });
  });

  it('has no latency when the executor could not be asked, and no time while pending', () => {
    const t = tx('t');
    const silent = { ...t, nodes: [{ ...t.nodes[0], recordedAt: undefined, reachable: false }, t.nodes[1]] };
    expect(txPoint(silent).latencyMs).toBeUndefined();
    expect(txPoint({ ...t, status: 'pending' }).executedAt).toBeUndefined();
  });

  it('tells a warehouse update from a purchase', () => {
    expect(txPoint(tx('t', { lines: [{ id: 1, name: 'Orange', saldo: 30 }] })).purchase).toBe(false);
    expect(txPoint(tx('t', { lines: [] })).purchase).toBe(true);
  });
});

describe('mergeSeen', () => {
  it('keeps a known latency when a later poll cannot ask the executor', () => {
    const first = mergeSeen(new Map(), [tx('t', { received: T0 - 400 })], 0);
    const t = tx('t');
    const later = { ...t, nodes: t.nodes.map((n) => ({ ...n, recordedAt: undefined, reachable: false })) };
    const merged = mergeSeen(first, [later], 0);
    expect(merged.get('t')?.latencyMs).toBe(400);
  });

  it('drops what is older than the horizon and stays bounded, newest kept', () => {
    const txs = Array.from({ length: 10 }, (_, i) => tx(`t${i}`, { at: T0 + i * 1000 }));
    const merged = mergeSeen(new Map(), txs, T0 + 2000, 5);
    expect([...merged.keys()]).toEqual(['t9', 't8', 't7', 't6', 't5']);
    expect(mergeSeen(new Map(), txs, T0 + 8000).size).toBe(2);
  });
});

describe('rates, latency and totals', () => {
  const win = { from: T0, to: T0 + 10_000 };

  it('aligns buckets to their size so they do not shift as time passes', () => {
    expect(bucketStarts({ from: T0 + 1200, to: T0 + 5000 }, 2000)).toEqual([T0, T0 + 2000, T0 + 4000]);
  });

  it('counts purchases per second by executing region, warehouse updates and pending ones aside', () => {
    const pts = [
      point(T0 + 100),
      point(T0 + 900, { region: 'northeurope' }),
      point(T0 + 1500),
      point(T0 + 2500, { purchase: false }),
      point(T0 + 2600, { executedAt: undefined }),
      point(T0 + 20_000),
    ];
    const s = rateSeries(pts, win, 2000);
    expect(s).toHaveLength(5);
    expect(s[0]).toEqual({ at: T0, perSecond: { westeurope: 1, northeurope: 0.5 }, total: 1.5 });
    expect(s[1].total).toBe(0);
  });

  it('takes the median and the 99th percentile per bucket by nearest rank', () => {
    expect(percentile([], 50)).toBeUndefined();
    expect(percentile([5], 99)).toBe(5);
    expect(percentile([1, 2, 3, 4], 50)).toBe(2);
    const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(hundred, 99)).toBe(99);
    expect(percentile(hundred, 100)).toBe(100);

    const pts = [point(T0 + 1, { latencyMs: 100 }), point(T0 + 2, { latencyMs: 300 }), point(T0 + 3, { latencyMs: 3100 }), point(T0 + 5000, { latencyMs: undefined })];
    const s = latencySeries(pts, win, 5000);
    expect(s[0]).toEqual({ at: T0, count: 3, p50: 300, p99: 3100 });
    expect(s[1]).toEqual({ at: T0 + 5000, count: 0, p50: undefined, p99: undefined });
  });

  it('totals executions and takeovers per region, every known region listed', () => {
    const pts = [point(T0 + 1), point(T0 + 2, { region: 'northeurope', takeover: true }), point(T0 - 1)];
    expect(regionTotals(pts, win, ['westeurope', 'northeurope', 'swedencentral'])).toEqual([
      { region: 'westeurope', executed: 1, takenOver: 0 },
      { region: 'northeurope', executed: 1, takenOver: 1 },
      { region: 'swedencentral', executed: 0, takenOver: 0 },
    ]);
  });
});

function health(node: string, up: boolean): NodeHealth {
  return { node, region: `r-${node}`, url: `http://${node}`, up, ready: up, counters: {} };
}

describe('down windows', () => {
  it('opens at the first sample that finds a node down and closes when it is seen up', () => {
    const samples = [
      fleetSample(T0, [health('a', true), health('c', true)]),
      fleetSample(T0 + 2000, [health('a', true), health('c', false)]),
      fleetSample(T0 + 4000, [health('a', true), health('c', false)]),
      fleetSample(T0 + 6000, [health('a', true), health('c', true)]),
      fleetSample(T0 + 8000, [health('a', false), health('c', false)]),
    ];
    // Out of order on purpose: samples are sorted first.
    expect(downWindows([...samples].reverse())).toEqual([
      { node: 'c', region: 'r-c', from: T0 + 2000, to: T0 + 6000, open: false },
      { node: 'a', region: 'r-a', from: T0 + 8000, to: T0 + 8000, open: true },
      { node: 'c', region: 'r-c', from: T0 + 8000, to: T0 + 8000, open: true },
    ]);
  });

  it('keeps the sample just before the horizon so an ongoing window keeps its start', () => {
    const s = [{ at: 1 }, { at: 2 }, { at: 3 }, { at: 4 }];
    expect(pruneSamples(s, 3)).toEqual([{ at: 2 }, { at: 3 }, { at: 4 }]);
    expect(pruneSamples(s, 10)).toEqual([{ at: 4 }]);
    expect(pruneSamples(s, 0, 2)).toEqual([{ at: 3 }, { at: 4 }]);
  });
});

describe('backlog', () => {
  it('counts settled transactions a node has not recorded; a node that could not be asked is null', () => {
    const done = tx('t1');
    const missed = { ...tx('t2'), nodes: [done.nodes[0], { url: 'http://b', node: 'http://b', reachable: true, state: 'unknown' as const }] };
    const pending = { ...tx('t3'), status: 'pending' as const, nodes: [done.nodes[0], { url: 'http://b', node: 'http://b', reachable: true }] };
    const names = new Map([['http://b', 'b'], ['http://c', 'c']]);
    const gone = { url: 'http://c', node: 'http://c', reachable: false, state: 'unreachable' as const };
    const s = backlogSample(T0, [{ ...done, nodes: [...done.nodes, gone] }, missed, pending], names);
    expect(s).toEqual({ at: T0, behind: { a: 0, b: 1, c: null } });
  });

  it('ignores the oldest fifth of a full page, where node pages need not overlap', () => {
    const missing = (id: string) => ({ ...tx(id), nodes: [{ url: 'http://a', node: 'http://a', reachable: true }] });
    const page = Array.from({ length: 10 }, (_, i) => missing(`t${i}`));
    expect(backlogSample(T0, page, new Map(), 10).behind['http://a']).toBe(8);
    expect(backlogSample(T0, page.slice(0, 9), new Map(), 10).behind['http://a']).toBe(9);
  });
});

describe('scales', () => {
  it('puts ticks on round steps from zero to just above the maximum', () => {
    expect(niceScale(3.9)).toEqual({ max: 4, ticks: [0, 1, 2, 3, 4] });
    expect(niceScale(7000, 100)).toEqual({ max: 8000, ticks: [0, 2000, 4000, 6000, 8000] });
    expect(niceScale(0, 5)).toEqual({ max: 6, ticks: [0, 2, 4, 6] });
    expect(niceScale(0.3, 0.1)).toEqual({ max: 0.3, ticks: [0, 0.1, 0.2, 0.3] });
    expect(niceScale(75, 5).max).toBe(80);
    expect(niceScale(4).ticks).toEqual([0, 1, 2, 3, 4]);
    expect(formatMs(340)).toBe('340 ms');
    expect(formatMs(3100)).toBe('3.1 s');
    expect(formatMs(12_000)).toBe('12 s');
  });
});
