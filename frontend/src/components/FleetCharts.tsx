import { useEffect, useRef, useState } from 'react';
import type { ReactNode } from 'react';
import { formatMs, latencySeries, niceScale, rateSeries, regionTotals } from '../charts';
import type { BacklogSample, DownWindow, Scale, TxPoint, Window } from '../charts';

/** What the charts show: the last three minutes, in five-second buckets. */
export const CHART_WINDOW_MS = 3 * 60_000;
export const BUCKET_MS = 5000;

/** Region colours, in the fleet's order; distinguishable and at least 3:1 against white. */
const PALETTE = ['#0b5cad', '#b45309', '#047857', '#7c3aed', '#be185d', '#0e7490'];

// Drawing area, in SVG units = CSS pixels: the width follows the page (so labels keep their size
// on a phone), the height is fixed.
const DEFAULT_W = 720;
const H = 170;
const M = { left: 46, right: 12, top: 20, bottom: 22 };
const PH = H - M.top - M.bottom;

/** The element's content width, following resizes (a default where ResizeObserver is missing). */
function useWidth(fallback: number) {
  const ref = useRef<HTMLDivElement>(null);
  const [width, setWidth] = useState(fallback);
  useEffect(() => {
    const el = ref.current;
    if (!el || typeof ResizeObserver === 'undefined') return;
    const measure = () => {
      if (el.clientWidth > 0) setWidth(Math.round(el.clientWidth));
    };
    measure();
    const ro = new ResizeObserver(measure);
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  return [ref, width] as const;
}

function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour12: false });
}

export interface ChartsProps {
  points: ReadonlyMap<string, TxPoint>;
  windows: readonly DownWindow[];
  backlog: readonly BacklogSample[];
  /** Regions and nodes in the fleet's order (for colours and legends). */
  nodes: readonly { node: string; region: string }[];
  /** The right edge of the charts, on the API's clock. */
  now: number;
}

export function FleetCharts({ points, windows, backlog, nodes, now }: ChartsProps) {
  const win: Window = { from: now - CHART_WINDOW_MS, to: now };
  const regions = [...new Set(nodes.map((n) => n.region))];
  const color = (region: string) => PALETTE[Math.max(0, regions.indexOf(region)) % PALETTE.length];
  const nodeColor = (node: string) => color(nodes.find((n) => n.node === node)?.region ?? node);
  const visible = windows.filter((w) => w.to >= win.from || w.open);
  const pts = [...points.values()];

  const rates = rateSeries(pts, win, BUCKET_MS);
  const totals = regionTotals(pts, win, regions);
  const latency = latencySeries(pts, win, BUCKET_MS);
  const recentRate = rates.slice(-4, -1).reduce((s, b) => s + b.total, 0) / 3;
  const downText = visible.map((w) => `${w.region} down ${w.open ? `since ${clock(w.from)}` : `from ${clock(w.from)} to ${clock(w.to)}`}`);

  // Backlog lines: one per node, broken where the node could not be asked.
  const backlogNodes = nodes.map((n) => n.node);
  const shown = backlog.filter((b) => b.at >= win.from);
  const backlogMax = Math.max(0, ...shown.flatMap((b) => Object.values(b.behind).map((v) => v ?? 0)));
  const latest = shown[shown.length - 1];

  return (
    <section aria-labelledby="charts-heading" className="charts" data-testid="charts">
      <h2 id="charts-heading">Live charts</h2>
      <p className="muted">
        The last {CHART_WINDOW_MS / 60_000} minutes, from the fleet's newest transactions. Shaded: a region was down.
      </p>

      <Chart
        id="rate"
        title="Purchases completed per second, by executing region"
        summary={`${recentRate.toFixed(1)} purchases per second recently. ${totals.map((t) => `${t.region} executed ${t.executed}`).join(', ')}. ${downText.join('. ')}`}
        win={win}
        windows={visible}
        scale={niceScale(Math.max(...rates.map((b) => b.total)))}
        yFormat={(v) => (Number.isInteger(v) ? String(v) : v.toFixed(1))}
        data={{ total: String(totals.reduce((s, t) => s + t.executed, 0)) }}
        legend={
          <ul className="legend" data-testid="region-totals">
            {totals.map((t) => (
              <li key={t.region} data-testid={`executed-${t.region}`} data-executed={t.executed} data-taken-over={t.takenOver}>
                <Swatch color={color(t.region)} />
                {t.region}: <strong>{t.executed}</strong> executed
                {t.takenOver > 0 && <> ({t.takenOver} taken over)</>}
              </li>
            ))}
          </ul>
        }
      >
        {(x, y) =>
          rates.map((b) => {
            let base = 0;
            const bw = Math.max(1, x(b.at + BUCKET_MS) - x(b.at) - 1.5);
            return regions
              .filter((r) => (b.perSecond[r] ?? 0) > 0)
              .map((r) => {
                const v = b.perSecond[r];
                const top = y(base + v);
                const rect = <rect key={`${b.at}-${r}`} x={x(b.at) + 0.75} y={top} width={bw} height={y(base) - top} fill={color(r)} />;
                base += v;
                return rect;
              });
          })
        }
      </Chart>

      <Chart
        id="latency"
        title="Completion latency: from the executing node receiving a purchase to applying it"
        summary={`Median and 99th percentile per ${BUCKET_MS / 1000} seconds. ${downText.join('. ')}`}
        win={win}
        windows={visible}
        scale={niceScale(Math.max(...latency.map((b) => b.p99 ?? 0)), 100)}
        yFormat={formatMs}
        data={{ samples: String(latency.reduce((s, b) => s + b.count, 0)) }}
        legend={
          <ul className="legend">
            <li>
              <Swatch color="#0b5cad" /> median
            </li>
            <li>
              <Swatch color="#a3161a" /> 99th percentile
            </li>
          </ul>
        }
      >
        {(x, y) => (
          <>
            <Line points={latency.map((b) => (b.p50 === undefined ? null : [x(b.at + BUCKET_MS / 2), y(b.p50)]))} color="#0b5cad" />
            <Line points={latency.map((b) => (b.p99 === undefined ? null : [x(b.at + BUCKET_MS / 2), y(b.p99)]))} color="#a3161a" dashed />
          </>
        )}
      </Chart>

      <Chart
        id="backlog"
        title="Catching up: recent transactions each node has not recorded yet"
        summary={`${latest ? backlogNodes.map((n) => `${n}: ${latest.behind[n] ?? 'not answering'}`).join(', ') : 'No samples yet'}. ${downText.join('. ')}`}
        win={win}
        windows={visible}
        scale={niceScale(backlogMax, 4)}
        yFormat={(v) => v.toFixed(0)}
        data={{ latest: latest ? JSON.stringify(latest.behind) : '{}' }}
        legend={
          <ul className="legend">
            {backlogNodes.map((n) => (
              <li key={n} data-testid={`behind-${n}`} data-behind={latest?.behind[n] ?? ''}>
                <Swatch color={nodeColor(n)} />
                {n}: <strong>{latest === undefined ? '–' : (latest.behind[n] ?? 'not answering')}</strong>
              </li>
            ))}
          </ul>
        }
      >
        {(x, y) =>
          backlogNodes.map((n) => (
            <Line key={n} points={shown.map((b) => (b.behind[n] == null ? null : [x(b.at), y(b.behind[n]!)]))} color={nodeColor(n)} />
          ))
        }
      </Chart>
    </section>
  );
}

function Swatch({ color }: { color: string }) {
  return <span className="swatch" style={{ background: color }} aria-hidden="true" />;
}

/** A polyline broken at nulls; lone points are drawn as dots. */
function Line({ points, color, dashed }: { points: ([number, number] | null)[]; color: string; dashed?: boolean }) {
  const runs: [number, number][][] = [];
  let run: [number, number][] = [];
  for (const p of points) {
    if (p) run.push(p);
    else if (run.length) {
      runs.push(run);
      run = [];
    }
  }
  if (run.length) runs.push(run);
  return (
    <g>
      {runs.map((r, i) =>
        r.length === 1 ? (
          <circle key={i} cx={r[0][0]} cy={r[0][1]} r={2.5} fill={color} />
        ) : (
          <polyline
            key={i}
            points={r.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ')}
            fill="none"
            stroke={color}
            strokeWidth={2}
            strokeDasharray={dashed ? '5 3' : undefined}
            strokeLinejoin="round"
          />
        ),
      )}
    </g>
  );
}

interface ChartProps {
  id: string;
  title: string;
  summary: string;
  win: Window;
  windows: readonly DownWindow[];
  scale: Scale;
  yFormat: (v: number) => string;
  legend: ReactNode;
  data: Record<string, string>;
  children: (x: (t: number) => number, y: (v: number) => number) => ReactNode;
}

function Chart({ id, title, summary, win, windows, scale, yFormat, legend, data, children }: ChartProps) {
  const [box, W] = useWidth(DEFAULT_W);
  const PW = W - M.left - M.right;
  const yMax = scale.max;
  const x = (t: number) => M.left + ((Math.min(win.to, Math.max(win.from, t)) - win.from) / (win.to - win.from)) * PW;
  const y = (v: number) => M.top + (1 - Math.min(1, v / yMax)) * PH;
  const dataAttrs = Object.fromEntries(Object.entries(data).map(([k, v]) => [`data-${k}`, v]));
  // A tick every 30 s on round clock times, every minute when narrow (a label is ~50 px).
  const every = PW < 420 ? 60_000 : 30_000;
  const xTicks: number[] = [];
  for (let t = Math.ceil(win.from / every) * every; t <= win.to; t += every) xTicks.push(t);
  return (
    <figure className="chart" data-testid={`chart-${id}`} data-down-windows={windows.length} {...dataAttrs}>
      <figcaption id={`chart-${id}-title`}>{title}</figcaption>
      {legend}
      <div ref={box}>
        <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} role="img" aria-labelledby={`chart-${id}-title chart-${id}-desc`}>
          <desc id={`chart-${id}-desc`}>{summary}</desc>
          {windows.map((w) => {
            const x0 = x(w.from);
            const x1 = Math.max(x0 + 2, x(w.open ? win.to : w.to));
            // The label reads from the window's start, or ends at its end near the right edge.
            const late = x0 > M.left + PW * 0.75;
            return (
              <g key={`${w.node}-${w.from}`} data-testid={`down-${w.node}`} data-open={w.open}>
                <rect x={x0} y={M.top} width={x1 - x0} height={PH} className="down-window" />
                <text x={late ? x1 - 2 : x0 + 2} y={M.top - 6} textAnchor={late ? 'end' : 'start'} className="down-label">
                  {w.region} down
                </text>
              </g>
            );
          })}
          {scale.ticks.map((v) => (
            <g key={v}>
              <line x1={M.left} x2={W - M.right} y1={y(v)} y2={y(v)} className={v === 0 ? 'axis' : 'gridline'} />
              <text x={M.left - 6} y={y(v) + 4} textAnchor="end" className="tick">
                {yFormat(v)}
              </text>
            </g>
          ))}
          {xTicks.map((t) => (
            <text key={t} x={x(t)} y={H - 6} textAnchor="middle" className="tick">
              {clock(t)}
            </text>
          ))}
          {children(x, y)}
        </svg>
      </div>
    </figure>
  );
}
