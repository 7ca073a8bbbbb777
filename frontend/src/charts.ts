// The fleet page's live charts: purchases per second (by executing region), completion latency,
// each node's backlog of transactions it has not recorded, and shaded windows where a node was
// down. Pure functions over what the API serves (`GET /api/transactions`, `GET /api/nodes`);
// the page keeps a bounded history of what it has seen and renders these series as SVG.
//
// Clocks: every time is on the API's and nodes' clocks (`executedAt`, `recordedAt`,
// `checkedAt`), never the browser's, so a laptop whose clock is off still draws the right
// picture. Latency is measured on one clock only: from the executor recording the command to
// the executor applying it (a takeover's wait for the first-ranked node's deadline included).

import type { NodeHealth, Transaction } from './api';

/** What the charts need of one transaction. */
export interface TxPoint {
  id: string;
  /** Epoch ms the executor applied it (its clock); undefined while pending. */
  executedAt?: number;
  /** The executor's receive-to-apply time, ms; undefined if unknown. */
  latencyMs?: number;
  region?: string;
  takeover: boolean;
  /** A purchase (false: a warehouse update). */
  purchase: boolean;
}

function time(iso: string | undefined): number | undefined {
  if (!iso) return undefined;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? undefined : t;
}

/** A purchase unless every line sets an absolute quantity (the timeline's rule as well). */
export function isPurchase(t: Transaction): boolean {
  const lines = t.lines ?? [];
  return !(lines.length > 0 && lines.every((l) => l.saldo !== undefined));
}

export function txPoint(t: Transaction): TxPoint {
  const executedAt = t.status === 'pending' ? undefined : time(t.executedAt);
  const own = t.nodes.find((n) => n.node === t.executedBy);
  const received = time(own?.recordedAt);
  return {
    id: t.transaction,
    executedAt,
    latencyMs: executedAt !== undefined && received !== undefined ? Math.max(0, executedAt - received) : undefined,
    region: t.region,
    takeover: t.takeover,
    purchase: isPurchase(t),
  };
}

/**
 * Adds a poll's transactions to what was seen before. The newest answer about a transaction
 * wins; points executed before `since` are dropped, and at most `cap` are kept (newest).
 */
export function mergeSeen(seen: ReadonlyMap<string, TxPoint>, txs: readonly Transaction[], since: number, cap = 5000): Map<string, TxPoint> {
  const next = new Map(seen);
  for (const t of txs) {
    const p = txPoint(t);
    const before = next.get(p.id);
    // A later poll may lack the executor's record (its region stopped): keep the latency known.
    next.set(p.id, before && p.latencyMs === undefined ? { ...p, latencyMs: before.latencyMs } : p);
  }
  const kept = [...next.values()].filter((p) => p.executedAt === undefined || p.executedAt >= since);
  kept.sort((a, b) => (b.executedAt ?? Infinity) - (a.executedAt ?? Infinity));
  return new Map(kept.slice(0, cap).map((p) => [p.id, p]));
}

export interface Window {
  from: number;
  to: number;
}

/** Bucket starts covering [from, to): aligned to `bucketMs` so buckets do not shift as time passes. */
export function bucketStarts({ from, to }: Window, bucketMs: number): number[] {
  const out: number[] = [];
  for (let t = Math.floor(from / bucketMs) * bucketMs; t < to; t += bucketMs) out.push(t);
  return out;
}

export interface RateBucket {
  at: number;
  /** Purchases applied per second in this bucket, by executing region. */
  perSecond: Record<string, number>;
  total: number;
}

/** Purchases applied per second, in buckets of `bucketMs`, split by the region that executed them. */
export function rateSeries(points: Iterable<TxPoint>, win: Window, bucketMs: number): RateBucket[] {
  const starts = bucketStarts(win, bucketMs);
  const counts = starts.map(() => new Map<string, number>());
  const first = starts[0] ?? win.from;
  for (const p of points) {
    if (!p.purchase || p.executedAt === undefined || p.executedAt < first || p.executedAt >= win.to) continue;
    const i = Math.floor((p.executedAt - first) / bucketMs);
    const region = p.region ?? 'unknown';
    counts[i].set(region, (counts[i].get(region) ?? 0) + 1);
  }
  return starts.map((at, i) => {
    const perSecond: Record<string, number> = {};
    let total = 0;
    for (const [r, n] of counts[i]) {
      perSecond[r] = (n * 1000) / bucketMs;
      total += perSecond[r];
    }
    return { at, perSecond, total };
  });
}

/** The nearest-rank percentile (p in 0..100) of `values`; undefined for none. */
export function percentile(values: readonly number[], p: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((Math.min(100, Math.max(0, p)) / 100) * sorted.length);
  return sorted[Math.max(0, rank - 1)];
}

export interface LatencyBucket {
  at: number;
  count: number;
  p50?: number;
  p99?: number;
}

/** Completion latency per bucket (ms): median and 99th percentile of the transactions applied in it. */
export function latencySeries(points: Iterable<TxPoint>, win: Window, bucketMs: number): LatencyBucket[] {
  const starts = bucketStarts(win, bucketMs);
  const values = starts.map((): number[] => []);
  const first = starts[0] ?? win.from;
  for (const p of points) {
    if (p.executedAt === undefined || p.latencyMs === undefined || p.executedAt < first || p.executedAt >= win.to) continue;
    values[Math.floor((p.executedAt - first) / bucketMs)].push(p.latencyMs);
  }
  return starts.map((at, i) => ({ at, count: values[i].length, p50: percentile(values[i], 50), p99: percentile(values[i], 99) }));
}

export interface RegionTotal {
  region: string;
  executed: number;
  takenOver: number;
}

/** Transactions each region executed in the window (and how many of them it took over). */
export function regionTotals(points: Iterable<TxPoint>, win: Window, regions: readonly string[] = []): RegionTotal[] {
  const totals = new Map<string, RegionTotal>(regions.map((r) => [r, { region: r, executed: 0, takenOver: 0 }]));
  for (const p of points) {
    if (p.executedAt === undefined || p.executedAt < win.from || p.executedAt >= win.to) continue;
    const r = p.region ?? 'unknown';
    const t = totals.get(r) ?? { region: r, executed: 0, takenOver: 0 };
    t.executed += 1;
    if (p.takeover) t.takenOver += 1;
    totals.set(r, t);
  }
  return [...totals.values()];
}

// --- The fleet's status over time, sampled by each poll of /api/nodes.

export interface FleetSample {
  /** The API's `checkedAt`, epoch ms. */
  at: number;
  nodes: { node: string; region: string; up: boolean }[];
}

export function fleetSample(at: number, nodes: readonly NodeHealth[]): FleetSample {
  return { at, nodes: nodes.map((n) => ({ node: n.node, region: n.region, up: n.up })) };
}

export interface DownWindow {
  node: string;
  region: string;
  from: number;
  /** When it was first seen up again, or the last sample's time while it is still down. */
  to: number;
  /** Still down at the last sample. */
  open: boolean;
}

/**
 * Where each node was down, from consecutive samples: a window opens at the first sample that
 * finds the node down and closes at the first that finds it up again. A node that is down in
 * the first sample was down from (at least) then.
 */
export function downWindows(samples: readonly FleetSample[]): DownWindow[] {
  const sorted = [...samples].sort((a, b) => a.at - b.at);
  const open = new Map<string, DownWindow>();
  const out: DownWindow[] = [];
  for (const s of sorted) {
    for (const n of s.nodes) {
      const w = open.get(n.node);
      if (!n.up && !w) {
        open.set(n.node, { node: n.node, region: n.region, from: s.at, to: s.at, open: true });
      } else if (!n.up && w) {
        w.to = s.at;
      } else if (n.up && w) {
        out.push({ ...w, to: s.at, open: false });
        open.delete(n.node);
      }
    }
  }
  return [...out, ...open.values()].sort((a, b) => a.from - b.from);
}

/** Keeps the samples newer than `since` (and the one just before, so a window's start is kept), at most `cap`. */
export function pruneSamples<T extends { at: number }>(samples: readonly T[], since: number, cap = 2000): T[] {
  const i = samples.findIndex((s) => s.at >= since);
  const from = i === -1 ? Math.max(0, samples.length - 1) : Math.max(0, i - 1);
  return samples.slice(from).slice(-cap);
}

// --- Catch-up: how many of the fleet's newest transactions each node has not recorded yet.

export interface BacklogSample {
  at: number;
  /** Per node: settled transactions of the newest page it has not recorded; null when it could not be asked. */
  behind: Record<string, number | null>;
}

/**
 * One poll of /api/transactions, counted per node. `names` maps a node's URL to its name (a
 * node that did not answer appears in a transaction by URL only).
 *
 * The API merges each node's newest `limit` ledger entries, so when the page is full its oldest
 * transactions may be missing from one node's page though that node has them: only the newest
 * 80% of a full page count.
 */
export function backlogSample(
  at: number,
  txs: readonly Transaction[],
  names: ReadonlyMap<string, string> = new Map(),
  limit = Infinity,
): BacklogSample {
  const behind: Record<string, number | null> = {};
  const counted = txs.length >= limit ? txs.slice(0, Math.floor(limit * 0.8)) : txs;
  for (const t of counted) {
    for (const n of t.nodes) {
      const name = (n.url !== undefined ? names.get(n.url) : undefined) ?? n.node;
      if (!n.reachable) {
        if (!(name in behind)) behind[name] = null;
        continue;
      }
      if (t.status === 'pending') {
        behind[name] ??= 0;
        continue;
      }
      behind[name] = (behind[name] ?? 0) + (n.recordedAt === undefined ? 1 : 0);
    }
  }
  return { at, behind };
}

// --- Scales for drawing.

export interface Scale {
  max: number;
  ticks: number[];
}

/**
 * An axis from 0 that holds `max` (at least `floor`), with about `count` ticks on round steps
 * (1, 2 or 5 × 10^n): 3.9 → 0, 1, 2, 3, 4; 7000 → 0, 2000 … 8000.
 */
export function niceScale(max: number, floor = 1, count = 4): Scale {
  const m = Math.max(max, floor);
  const raw = m / count;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * pow).find((s) => s >= raw * (1 - 1e-9)) ?? 10 * pow;
  const n = Math.max(1, Math.ceil(m / step - 1e-9));
  const round = (v: number) => Number(v.toPrecision(12));
  return { max: round(n * step), ticks: Array.from({ length: n + 1 }, (_, i) => round(i * step)) };
}

/** "1.2 s", "340 ms". */
export function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)} s` : `${Math.round(ms)} ms`;
}
