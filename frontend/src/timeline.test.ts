// @vitest-environment node
// Pure logic: no DOM needed, and the node environment starts much faster than jsdom.
import { describe, expect, it } from 'vitest';
import type { NodeHealth, Transaction } from './api';
import { ago, buildTimeline, describeLines, fleetChanges, isSettled, parseRecent, plainError, RECENT_LIMIT, remember, txEvent, withFleet } from './timeline';
import type { RecentTx } from './timeline';

const node = (name: string, up: boolean, ready = up): NodeHealth => ({
  node: name,
  region: `${name}-region`,
  url: `http://${name}`,
  up,
  ready,
  counters: {},
});
const recent = (id: string, at: number): RecentTx => ({ id, kind: 'order', at, summary: `order ${id}` });

describe('recent transactions', () => {
  it('keeps the newest first, without duplicates, bounded', () => {
    let list: RecentTx[] = [];
    for (let i = 0; i < RECENT_LIMIT + 5; i++) list = remember(list, recent(`t${i}`, i));
    list = remember(list, recent('t24', 99));
    expect(list).toHaveLength(RECENT_LIMIT);
    expect(list[0]).toMatchObject({ id: 't24', at: 99 });
    expect(list.filter((t) => t.id === 't24')).toHaveLength(1);
  });

  it('reads what was stored and drops the rest', () => {
    expect(parseRecent('garbage')).toEqual([]);
    expect(parseRecent(null)).toEqual([]);
    expect(parseRecent('[{"id":"a","kind":"order","at":1,"summary":"x"},{"id":2},{"id":"b","kind":"update","at":2}]')).toEqual([
      { id: 'a', kind: 'order', at: 1, summary: 'x' },
      { id: 'b', kind: 'update', at: 2, summary: '' },
    ]);
  });
});

describe('fleet changes', () => {
  it('reports regions going down, coming back and becoming ready', () => {
    const before = [node('we', true), node('ne', true), node('sc', false), node('x', true, false)];
    const after = [node('we', false), node('ne', true), node('sc', true, false), node('x', true, true)];
    expect(fleetChanges(before, after, 5).map((e) => [e.node, e.change, e.at])).toEqual([
      ['we', 'down', 5],
      ['sc', 'up', 5],
      ['x', 'ready', 5],
    ]);
  });

  it('reports nothing on the first poll or when nothing changed', () => {
    const now = [node('we', true)];
    expect(fleetChanges(undefined, now, 1)).toEqual([]);
    expect(fleetChanges(now, now, 2)).toEqual([]);
  });
});

describe('timeline', () => {
  const t: Transaction = {
    transaction: 't1',
    status: 'completed',
    executedBy: 'ne',
    region: 'ne-region',
    takeover: true,
    quantities: [],
    nodes: [
      { node: 'we', url: 'http://we', recordedAt: '1970-01-01T00:00:02.000Z', reachable: true },
      { node: 'ne', url: 'http://ne', recordedAt: '1970-01-01T00:00:01.500Z', reachable: true },
      { node: 'http://sc', url: 'http://sc', reachable: false, state: 'unreachable' },
    ],
  };

  it('shows who received, who executed and who could not be asked, by name', () => {
    const e = txEvent(recent('t1', 1800), t, [node('we', true), node('ne', true), node('sc', false)]);
    expect(e).toMatchObject({ status: 'completed', executedBy: 'ne', takeover: true, received: 2, at: 1500 });
    expect(e.marks.map((m) => [m.node, m.at, m.reachable, m.executed])).toEqual([
      ['we', 2000, true, false],
      ['ne', 1500, true, true],
      ['sc', undefined, false, false],
    ]);
    expect(e.marks[2].region).toBe('sc-region');
  });

  it('shows a transaction not yet read as unknown, at the time it was placed', () => {
    expect(txEvent(recent('t9', 42), undefined)).toMatchObject({ status: 'unknown', at: 42, marks: [], received: 0 });
  });

  it('interleaves transactions and fleet changes, newest first, bounded', () => {
    const events = buildTimeline(
      [recent('t1', 1800), recent('t2', 3000)],
      new Map([['t1', t]]),
      [{ kind: 'fleet', at: 2500, node: 'sc', region: 'sc-region', change: 'down' }],
      [],
      40,
    );
    expect(events.map((e) => (e.kind === 'tx' ? e.id : e.change))).toEqual(['t2', 'down', 't1']);
    expect(buildTimeline([recent('a', 1), recent('b', 2), recent('c', 3)], new Map(), [], [], 2)).toHaveLength(2);
  });

  it('knows when a transaction can no longer change', () => {
    expect(isSettled(undefined)).toBe(false);
    expect(isSettled(t)).toBe(false); // one node has not recorded it yet
    const all = t.nodes.map((n) => ({ ...n, recordedAt: '1970-01-01T00:00:03Z', reachable: true }));
    expect(isSettled({ ...t, nodes: all })).toBe(true);
    expect(isSettled({ ...t, status: 'pending', nodes: all })).toBe(false);
    expect(isSettled({ ...t, nodes: [] })).toBe(false);
  });

  it('writes ages for people', () => {
    expect(ago(undefined, 0)).toBe('never');
    expect(ago('1970-01-01T00:00:00Z', 4_000)).toBe('4 s ago');
    expect(ago('1970-01-01T00:00:00Z', 125_000)).toBe('2 min ago');
    expect(ago('1970-01-01T00:00:00Z', 7_300_000)).toBe('2 h ago');
    expect(ago('not a date', 0)).toBe('never');
  });
});

describe('node errors', () => {
  it('keeps the words of an HTML error page and bounds the length', () => {
    const page =
      'stopped (403 <!DOCTYPE html>\n<html><head><title>Error 403 - This web app is stopped.</title></head>\n<body><h1>Error 403 - This web app is stopped.</h1> <p>The web app you have attempted to reach is currently stopp)';
    expect(plainError(page)).toBe(
      'stopped (403 Error 403 - This web app is stopped. The web app you have attempted to reach is currently stopp)',
    );
    expect(plainError('x'.repeat(500), 20)).toHaveLength(20);
    expect(plainError('connection refused')).toBe('connection refused');
  });
});

describe('the fleet\'s transactions', () => {
  const fleetTx = (id: string, recordedAt: string, lines: Transaction['lines']): Transaction => ({
    transaction: id,
    status: 'completed',
    executedBy: 'westeurope',
    region: 'westeurope',
    takeover: false,
    quantities: [],
    lines,
    nodes: [{ node: 'westeurope', url: 'http://we', recordedAt, reachable: true }],
  });

  it('describes purchases and warehouse updates', () => {
    expect(describeLines([{ id: 1, name: 'Orange', change: -2 }, { id: 5, name: 'Kiwi', change: -1 }])).toBe('2 × Orange, 1 × Kiwi');
    expect(describeLines([{ id: 1, name: 'Orange', saldo: 30 }])).toBe('Orange → 30');
    expect(describeLines(undefined)).toBe('');
  });

  it('adds what others placed and keeps what this browser knows about its own', () => {
    const mine = recent('mine', 1_000);
    const known = new Map<string, Transaction>();
    const fleet = [
      fleetTx('mine', '1970-01-01T00:00:01Z', [{ id: 1, name: 'Orange', change: -1 }]),
      fleetTx('bench', '1970-01-01T00:00:05Z', [{ id: 9001, name: 'Bench item', change: -1 }]),
      fleetTx('seed', '1970-01-01T00:00:00Z', [{ id: 1, name: 'Orange', saldo: 25 }]),
    ];
    const merged = withFleet([mine], known, fleet);
    expect(merged.recent.map((r) => r.id)).toEqual(['mine', 'bench', 'seed']);
    expect(merged.recent[0]).toBe(mine);
    expect(merged.recent[1]).toMatchObject({ kind: 'order', at: 5_000, summary: '1 × Bench item' });
    expect(merged.recent[2]).toMatchObject({ kind: 'update', summary: 'Orange → 25' });
    expect(merged.transactions.get('bench')?.executedBy).toBe('westeurope');
    const timeline = buildTimeline(merged.recent, merged.transactions, []);
    expect(timeline.map((e) => (e.kind === 'tx' ? e.id : e.kind))).toEqual(['bench', 'mine', 'seed']);
  });
});
