import { useRef, useState } from 'react';
import { ApiError, getFleet, getRecentTransactions, getTransaction } from '../api';
import type { NodeHealth, Transaction } from '../api';
import { usePolling } from '../hooks';
import { ago, buildTimeline, fleetChanges, isSettled, plainError, withFleet } from '../timeline';
import type { FleetEvent, RecentTx, TimelineEvent, TxEvent } from '../timeline';
import { backlogSample, downWindows, fleetSample, mergeSeen, pruneSamples } from '../charts';
import type { BacklogSample, FleetSample, TxPoint } from '../charts';
import { LoadError, PageHeading } from './common';
import { POLL_MS } from './Catalogue';
import { CHART_WINDOW_MS, FleetCharts } from './FleetCharts';

/** Transactions followed on this page: the newest few (each poll asks the API about each one). */
const FOLLOWED = 10;
/** Transactions the timeline shows of those the fleet reports, whoever placed them. */
const FLEET_RECENT = 15;
/** Transactions asked for per poll (the API's maximum; one read per node per poll): the charts' source. */
const CHART_RECENT = 100;
/** History kept for the charts: a little more than they show. */
const HISTORY_MS = CHART_WINDOW_MS + 30_000;
/** Fleet changes kept for the timeline. */
const FLEET_EVENTS = 50;

/** Counters shown first, in this order; any others the nodes report follow alphabetically. */
const COUNTER_ORDER = ['received', 'duplicates', 'executed', 'takenOver', 'rejected', 'peersRecorded', 'catchUpRepairs', 'publishRetries'];

export function orderedCounters(counters: Record<string, number>): [string, number][] {
  const known = COUNTER_ORDER.filter((k) => k in counters).map((k): [string, number] => [k, counters[k]]);
  const rest = Object.keys(counters)
    .filter((k) => !COUNTER_ORDER.includes(k))
    .sort()
    .map((k): [string, number] => [k, counters[k]]);
  return [...known, ...rest];
}

/** "catchUpRepairs" → "catch up repairs". */
function words(key: string): string {
  return key.replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
}

function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour12: false });
}

export function Fleet({ recent, forget }: { recent: readonly RecentTx[]; forget: (ids: string[]) => void }) {
  const previous = useRef<NodeHealth[] | undefined>(undefined);
  const [events, setEvents] = useState<FleetEvent[]>([]);
  // The charts' history. Times are the API's (`checkedAt`): `offset` maps this browser's clock
  // onto it, so a browser whose clock is off still lines its samples up with the nodes' times.
  const offset = useRef(0);
  const serverNow = () => Date.now() + offset.current;
  const samples = useRef<FleetSample[]>([]);
  const seen = useRef(new Map<string, TxPoint>());
  const backlog = useRef<BacklogSample[]>([]);

  const nodes = usePolling(async (signal) => {
    const { checkedAt, nodes: next } = await getFleet(signal);
    if (checkedAt !== undefined) offset.current = checkedAt - Date.now();
    const at = serverNow();
    const changes = fleetChanges(previous.current, next, Date.now());
    previous.current = next;
    if (changes.length > 0) setEvents((e) => [...changes, ...e].slice(0, FLEET_EVENTS));
    samples.current = pruneSamples([...samples.current, fleetSample(at, next)], at - HISTORY_MS);
    return next;
  }, POLL_MS);

  const followed = recent.slice(0, FOLLOWED);
  const known = useRef(new Map<string, Transaction>());
  const txs = usePolling(async (signal) => {
    const ask = followed.filter((r) => !isSettled(known.current.get(r.id)));
    const answers = await Promise.allSettled(ask.map((r) => getTransaction(r.id, signal)));
    // One failed question leaves that transaction as last seen; the others still update. A 404
    // means the stack no longer knows it (restarted since): forget it rather than ask forever.
    const gone: string[] = [];
    answers.forEach((a, i) => {
      if (a.status === 'fulfilled') known.current.set(a.value.transaction, a.value);
      else if (a.reason instanceof ApiError && a.reason.status === 404) gone.push(ask[i].id);
    });
    if (gone.length > 0) forget(gone);
    return new Map(known.current);
  }, POLL_MS);

  // Everyone's transactions, not only this browser's. A failed poll keeps the last answer.
  const fleetTxs = usePolling(async (signal) => {
    const list = await getRecentTransactions(CHART_RECENT, signal);
    const at = serverNow();
    seen.current = mergeSeen(seen.current, list, at - HISTORY_MS);
    const names = new Map((previous.current ?? []).map((n) => [n.url, n.node]));
    backlog.current = pruneSamples([...backlog.current, backlogSample(at, list, names, CHART_RECENT)], at - HISTORY_MS);
    return list;
  }, POLL_MS);

  const now = nodes.updatedAt ?? Date.now();
  const merged = withFleet(followed, txs.data ?? new Map(), (fleetTxs.data ?? []).slice(0, FLEET_RECENT));
  const timeline = buildTimeline(merged.recent, merged.transactions, events, nodes.data);

  return (
    <>
      <PageHeading>Fleet</PageHeading>
      <p className="muted">Each region's worker node, refreshed every few seconds. Stop a region and watch the others take over.</p>
      <LoadError error={nodes.error} stale={nodes.data !== undefined} />
      <section aria-labelledby="nodes-heading">
        <h2 id="nodes-heading">Regions</h2>
        {nodes.data === undefined ? (
          !nodes.error && <p role="status">Loading the fleet…</p>
        ) : (
          <ul className="grid" data-testid="nodes">
            {nodes.data.map((n) => (
              <NodeCard key={n.node} node={n} now={now} />
            ))}
          </ul>
        )}
      </section>
      {nodes.data !== undefined && (
        <FleetCharts
          points={seen.current}
          windows={downWindows(samples.current)}
          backlog={backlog.current}
          nodes={nodes.data}
          now={serverNow()}
        />
      )}
      <section aria-labelledby="timeline-heading">
        <h2 id="timeline-heading">Recent transactions</h2>
        <LoadError error={fleetTxs.error} stale={fleetTxs.data !== undefined} />
        {timeline.length === 0 ? (
          <p>No transactions yet. Buy something, or set a quantity in the warehouse.</p>
        ) : (
          <ol className="timeline" data-testid="timeline">
            {timeline.map((e) => (
              <TimelineItem key={e.kind === 'tx' ? e.id : `${e.node}-${e.at}-${e.change}`} event={e} />
            ))}
          </ol>
        )}
      </section>
    </>
  );
}

function NodeCard({ node, now }: { node: NodeHealth; now: number }) {
  const state = !node.up ? 'down' : node.ready ? 'up' : 'starting';
  return (
    <li className={`card node ${state}`} data-testid={`node-${node.node}`} data-state={state}>
      <h3>
        {node.node} <span className={`badge ${state}`} data-testid={`node-state-${node.node}`}>{state}</span>
      </h3>
      <p className="muted">region {node.region}</p>
      <dl className="facts">
        <div>
          <dt>Ready</dt>
          <dd data-testid={`ready-${node.node}`}>{node.ready ? 'yes' : 'no'}</dd>
        </div>
        <div>
          <dt>Last heartbeat</dt>
          <dd data-testid={`heartbeat-${node.node}`}>{ago(node.lastHeartbeat, now)}</dd>
        </div>
        {orderedCounters(node.counters ?? {}).map(([k, v]) => (
          <div key={k}>
            <dt>{words(k)}</dt>
            <dd data-testid={`counter-${node.node}-${k}`}>{v}</dd>
          </div>
        ))}
      </dl>
      {node.error && (
        <p className="error">
          {plainError(node.error)}
        </p>
      )}
    </li>
  );
}

function TimelineItem({ event }: { event: TimelineEvent }) {
  if (event.kind === 'fleet') {
    return (
      <li className={`event fleet ${event.change.replace(' ', '-')}`} data-testid="timeline-fleet">
        <time dateTime={new Date(event.at).toISOString()}>{clock(event.at)}</time>{' '}
        <strong>
          {event.node} ({event.region}) {event.change === 'down' ? 'went down' : event.change === 'up' ? 'came back up' : `is ${event.change}`}
        </strong>
      </li>
    );
  }
  return <TxItem event={event} />;
}

function TxItem({ event: e }: { event: TxEvent }) {
  const outcome =
    e.status === 'completed'
      ? `completed by ${e.executedBy ?? '?'} in ${e.region ?? '?'}`
      : e.status === 'rejected'
        ? `rejected: ${e.reason ?? 'no reason given'}`
        : e.status;
  return (
    <li className={`event tx ${e.status}`} data-testid={`timeline-tx-${e.id}`} data-status={e.status}>
      <time dateTime={new Date(e.at).toISOString()}>{clock(e.at)}</time>{' '}
      <strong>{e.what === 'order' ? 'Order' : 'Stock update'}</strong> {e.summary}:{' '}
      <span className={`badge ${e.status}`}>{outcome}</span>
      {e.takeover && (
        <>
          {' '}
          <span className="badge takeover" data-testid="takeover">
            taken over
          </span>
        </>
      )}
      {e.marks.length > 0 && (
        <ul className="marks" aria-label="Recorded by">
          {e.marks.map((m) => (
            <li key={m.node} className={m.at !== undefined ? 'got' : m.reachable ? 'wait' : 'gone'}>
              {m.node}: {m.at !== undefined ? `recorded ${clock(m.at)}` : m.reachable ? 'not yet' : 'unreachable'}
              {m.executed ? ' (executed)' : ''}
            </li>
          ))}
        </ul>
      )}
    </li>
  );
}
