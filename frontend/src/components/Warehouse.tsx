import { useEffect, useRef, useState } from 'react';
import { getProducts, setSaldo } from '../api';
import type { Product } from '../api';
import { MAX_SALDO } from '../cart';
import { describeOutcome, followTransaction, IdempotencyKeys, StillPending } from '../checkout';
import { usePolling } from '../hooks';
import type { RecentTx } from '../timeline';
import { LoadError, Link, PageHeading } from './common';
import { POLL_MS } from './Catalogue';

export function Warehouse({
  allowed,
  signedIn,
  onPlaced,
}: {
  allowed: boolean;
  signedIn: boolean;
  onPlaced: (tx: RecentTx) => void;
}) {
  if (!allowed) {
    return (
      <>
        <PageHeading>Warehouse</PageHeading>
        <p role="alert" className="error" data-testid="warehouse-refused">
          This page is for the warehouse role.{' '}
          {signedIn ? 'Your account does not have it.' : <Link to="/login">Sign in</Link>}
        </p>
      </>
    );
  }
  return <WarehouseTable onPlaced={onPlaced} />;
}

function WarehouseTable({ onPlaced }: { onPlaced: (tx: RecentTx) => void }) {
  const products = usePolling(getProducts, POLL_MS);
  return (
    <>
      <PageHeading>Warehouse</PageHeading>
      <p className="muted">Set the quantity in stock. Each change is a transaction that one node executes.</p>
      <LoadError error={products.error} stale={products.data !== undefined} />
      {products.data === undefined ? (
        !products.error && <p role="status">Loading products…</p>
      ) : (
        <table className="table" data-testid="warehouse">
          <caption className="sr-only">Stock by product</caption>
          <thead>
            <tr>
              <th scope="col">Product</th>
              <th scope="col">In stock</th>
              <th scope="col">New quantity</th>
              <th scope="col">Result</th>
            </tr>
          </thead>
          <tbody>
            {products.data.map((p) => (
              <SetRow key={p.id} product={p} onPlaced={onPlaced} onDone={products.refresh} />
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

function SetRow({ product, onPlaced, onDone }: { product: Product; onPlaced: (tx: RecentTx) => void; onDone: () => void }) {
  const [value, setValue] = useState('');
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ text: string; tone: string } | null>(null);
  const abort = useRef<AbortController | null>(null);
  const keys = useRef(new IdempotencyKeys());
  useEffect(() => () => abort.current?.abort(), []);
  const inputId = `saldo-${product.id}`;

  async function submit() {
    const saldo = Number(value);
    if (value.trim() === '' || !Number.isInteger(saldo) || saldo < 0 || saldo > MAX_SALDO) {
      setResult({ text: `Enter a whole number from 0 to ${MAX_SALDO}.`, tone: 'error' });
      return;
    }
    abort.current?.abort();
    const ctl = new AbortController();
    abort.current = ctl;
    setBusy(true);
    setResult({ text: 'Sending…', tone: '' });
    try {
      // Pressing Set again after a failure with the same number reuses the key (no second update).
      const accepted = await setSaldo(product.id, saldo, keys.current.keyFor([{ id: product.id, quantity: saldo }]), ctl.signal);
      keys.current.settle();
      onPlaced({ id: accepted.transaction, kind: 'update', at: Date.now(), summary: `${product.name} := ${saldo}` });
      const tx = await followTransaction(accepted.transaction, {
        signal: ctl.signal,
        onUpdate: (t) => setResult({ text: describeOutcome(t), tone: '' }),
      });
      setResult({ text: describeOutcome(tx), tone: tx.status === 'completed' ? 'ok' : 'error' });
      if (tx.status === 'completed') setValue('');
      onDone();
    } catch (e) {
      if (ctl.signal.aborted) return;
      const text = e instanceof StillPending ? 'Still pending: no node has finished it yet.' : (e as Error).message;
      setResult({ text, tone: 'error' });
    } finally {
      if (!ctl.signal.aborted) setBusy(false);
    }
  }

  return (
    <tr data-testid={`warehouse-row-${product.id}`}>
      <th scope="row">
        <label htmlFor={inputId}>{product.name}</label>
      </th>
      <td data-label="In stock" data-testid={`warehouse-stock-${product.id}`}>
        {product.saldo}
      </td>
      <td>
        <form
          className="inline"
          // Our own message (in the row's status cell) explains a bad number, in words a screen
          // reader announces, instead of the browser's tooltip.
          noValidate
          onSubmit={(e) => {
            e.preventDefault();
            if (!busy) void submit();
          }}
        >
          <input
            id={inputId}
            type="number"
            inputMode="numeric"
            min={0}
            max={MAX_SALDO}
            value={value}
            onChange={(e) => setValue(e.currentTarget.value)}
            disabled={busy}
          />
          <button type="submit" disabled={busy} aria-label={`Set quantity of ${product.name}`}>
            Set
          </button>
        </form>
      </td>
      <td className={result?.tone}>
        {/* A live region inside the cell, so the table keeps its cell semantics. */}
        <span role="status" aria-live="polite" data-testid={`warehouse-result-${product.id}`}>
          {result?.text}
        </span>
      </td>
    </tr>
  );
}
