// The fleet page's timeline: what happened to recent transactions (who received them, who
// executed them, whether a node took over) interleaved with changes in the fleet's health
// (a region going down or coming back). Pure functions over API data; the page only renders.

import type { NodeHealth, Transaction, TxStatus } from './api';

/** A transaction this browser placed (orders, warehouse updates), remembered across pages. */
export interface RecentTx {
  id: string;
  kind: 'order' | 'update';
  /** Epoch ms when this browser got the 202. */
  at: number;
  summary: string;
}

export const RECENT_LIMIT = 20;

/** Adds a transaction to the front of the list; the list stays bounded and free of duplicates. */
export function remember(list: readonly RecentTx[], tx: RecentTx, limit = RECENT_LIMIT): RecentTx[] {
  return [tx, ...list.filter((t) => t.id !== tx.id)].slice(0, limit);
}

export function parseRecent(text: string | null): RecentTx[] {
  try {
    const raw: unknown = JSON.parse(text ?? '[]');
    if (!Array.isArray(raw)) return [];
    return raw
      .filter(
        (t): t is RecentTx =>
          t && typeof t.id === 'string' && (t.kind === 'order' || t.kind === 'update') && Number.isFinite(t.at),
      )
      .map((t) => ({ ...t, summary: typeof t.summary === 'string' ? t.summary : '' }))
      .slice(0, RECENT_LIMIT);
  } catch {
    return [];
  }
}

export type FleetChange = 'down' | 'up' | 'ready' | 'not ready';

export interface FleetEvent {
  kind: 'fleet';
  at: number;
  node: string;
  region: string;
  change: FleetChange;
}

/** What changed between two polls of /api/nodes. The first poll (no `prev`) reports nothing. */
export function fleetChanges(prev: readonly NodeHealth[] | undefined, next: readonly NodeHealth[], at: number): FleetEvent[] {
  if (!prev) return [];
  const before = new Map(prev.map((n) => [n.node, n]));
  const out: FleetEvent[] = [];
  for (const n of next) {
    const p = before.get(n.node);
    if (!p) continue;
    const ev = (change: FleetChange): FleetEvent => ({ kind: 'fleet', at, node: n.node, region: n.region, change });
    if (p.up && !n.up) out.push(ev('down'));
    else if (!p.up && n.up) out.push(ev('up'));
    // Readiness only matters while up: a down node is not ready by definition.
    if (n.up && p.up && p.ready !== n.ready) out.push(ev(n.ready ? 'ready' : 'not ready'));
  }
  return out;
}

export interface NodeMark {
  node: string;
  region?: string;
  /** Epoch ms when this node recorded the transaction; undefined if not (yet) or unknown. */
  at?: number;
  reachable: boolean;
  executed: boolean;
}

export interface TxEvent {
  kind: 'tx';
  at: number;
  id: string;
  what: RecentTx['kind'];
  summary: string;
  status: TxStatus | 'unknown';
  executedBy?: string;
  region?: string;
  takeover: boolean;
  reason?: string;
  marks: NodeMark[];
  /** Nodes that have recorded it, out of all nodes the API asked. */
  received: number;
}

export type TimelineEvent = TxEvent | FleetEvent;

function time(iso: string | undefined): number | undefined {
  if (!iso) return undefined;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * One transaction as the timeline shows it. `fleet` names the nodes: a node that did not answer
 * appears in the transaction only by URL, and the fleet view knows its name and region.
 */
export function txEvent(recent: RecentTx, t: Transaction | undefined, fleet: readonly NodeHealth[] = []): TxEvent {
  const byUrl = new Map(fleet.map((f) => [f.url, f]));
  const marks: NodeMark[] = (t?.nodes ?? []).map((n) => {
    const known = n.url !== undefined ? byUrl.get(n.url) : undefined;
    const node = n.node === n.url && known ? known.node : n.node;
    return {
      node,
      region: known?.region,
      at: time(n.recordedAt),
      reachable: n.reachable,
      executed: t?.executedBy === node,
    };
  });
  const first = Math.min(...marks.map((m) => m.at ?? Infinity));
  return {
    kind: 'tx',
    at: Number.isFinite(first) ? Math.min(first, recent.at) : recent.at,
    id: recent.id,
    what: recent.kind,
    summary: recent.summary,
    status: t?.status ?? 'unknown',
    executedBy: t?.executedBy,
    region: t?.region,
    takeover: t?.takeover ?? false,
    reason: t?.reason,
    marks,
    received: marks.filter((m) => m.at !== undefined).length,
  };
}

/**
 * Nothing more can change: the outcome is known and every node has recorded it. The fleet page
 * stops asking about such a transaction (each question costs the API one read per node).
 */
export function isSettled(t: Transaction | undefined): boolean {
  return t !== undefined && t.status !== 'pending' && t.nodes.length > 0 && t.nodes.every((n) => n.recordedAt !== undefined);
}

/** "2 × Orange, 1 × Kiwi" for a purchase, "Orange → 30" for a warehouse update. */
export function describeLines(lines: Transaction['lines'] = []): string {
  return lines
    .map((l) => (l.change !== undefined ? `${Math.abs(l.change)} × ${l.name}` : `${l.name} → ${l.saldo ?? '?'}`))
    .join(', ');
}

/**
 * Adds the transactions the fleet reports (another browser's, `saldo bench`'s, the seed) to the
 * ones this browser placed, so the timeline shows the whole demo. What this browser knows about
 * its own transactions (its summary, its latest answer) wins.
 */
export function withFleet(
  recent: readonly RecentTx[],
  known: ReadonlyMap<string, Transaction>,
  fleet: readonly Transaction[],
): { recent: RecentTx[]; transactions: Map<string, Transaction> } {
  const mine = new Set(recent.map((r) => r.id));
  const transactions = new Map(known);
  const others: RecentTx[] = [];
  for (const t of fleet) {
    if (!transactions.has(t.transaction)) transactions.set(t.transaction, t);
    if (mine.has(t.transaction)) continue;
    const first = Math.min(...t.nodes.map((n) => time(n.recordedAt) ?? Infinity));
    others.push({
      id: t.transaction,
      kind: (t.lines ?? []).length > 0 && (t.lines ?? []).every((l) => l.saldo !== undefined) ? 'update' : 'order',
      at: Number.isFinite(first) ? first : 0,
      summary: describeLines(t.lines),
    });
  }
  return { recent: [...recent, ...others], transactions };
}

/** Newest first, at most `limit` events. */
export function buildTimeline(
  recent: readonly RecentTx[],
  transactions: ReadonlyMap<string, Transaction>,
  fleetEvents: readonly FleetEvent[],
  nodes: readonly NodeHealth[] = [],
  limit = 40,
): TimelineEvent[] {
  const events: TimelineEvent[] = [...recent.map((r) => txEvent(r, transactions.get(r.id), nodes)), ...fleetEvents];
  return events.sort((a, b) => b.at - a.at).slice(0, limit);
}

/** "3 s ago", "2 min ago": heartbeat ages stay readable at a glance. */
export function ago(iso: string | undefined, now: number): string {
  const t = time(iso);
  if (t === undefined) return 'never';
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

/**
 * A node's error for people: a stopped Function App answers with an HTML page, which the API
 * passes on verbatim. Keep the text, drop the markup and repeats, and bound the length.
 */
export function plainError(message: string, max = 140): string {
  const words = message
    .replace(/<(script|style|title)[^>]*>[\s\S]*?<\/\1>/gi, ' ')
    .replace(/<[^>]*>?/g, ' ')
    .replace(/&nbsp;/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  return words.length > max ? `${words.slice(0, max - 1).trimEnd()}…` : words;
}
