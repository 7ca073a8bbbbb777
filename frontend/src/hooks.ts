import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import { sleep } from './checkout';

/** Resolves when the tab is visible again (at once if it is). */
function whenVisible(signal: AbortSignal): Promise<void> {
  if (!document.hidden) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      if (document.hidden) return;
      document.removeEventListener('visibilitychange', done);
      signal.removeEventListener('abort', abort);
      resolve();
    };
    const abort = () => {
      document.removeEventListener('visibilitychange', done);
      reject(signal.reason);
    };
    document.addEventListener('visibilitychange', done);
    signal.addEventListener('abort', abort, { once: true });
  });
}

export interface Polled<T> {
  data?: T;
  error?: Error;
  /** Epoch ms of the last successful load. */
  updatedAt?: number;
  refresh: () => void;
}

/**
 * Calls `load` now and every `intervalMs` while the tab is visible; a hidden tab costs the
 * server nothing. Calls never overlap (the next waits for the previous), and an unmounted
 * component aborts its request. Keeps the last good data when a poll fails.
 */
export function usePolling<T>(load: (signal: AbortSignal) => Promise<T>, intervalMs: number): Polled<T> {
  const [state, setState] = useState<Omit<Polled<T>, 'refresh'>>({});
  const loadRef = useRef(load);
  loadRef.current = load;
  const wake = useRef<() => void>(() => {});

  useEffect(() => {
    const ctl = new AbortController();
    (async () => {
      while (!ctl.signal.aborted) {
        await whenVisible(ctl.signal);
        try {
          const data = await loadRef.current(ctl.signal);
          if (!ctl.signal.aborted) setState({ data, updatedAt: Date.now() });
        } catch (e) {
          if (ctl.signal.aborted) return;
          setState((s) => ({ ...s, error: e as Error }));
        }
        // Sleep until the interval passes or refresh() wakes us early.
        const nap = new AbortController();
        wake.current = () => nap.abort();
        const stop = () => nap.abort();
        ctl.signal.addEventListener('abort', stop, { once: true });
        await sleep(intervalMs, nap.signal).catch(() => {});
        ctl.signal.removeEventListener('abort', stop);
      }
    })().catch(() => {
      // Only an abort (unmount) ends the loop; there is nothing left to report to.
    });
    return () => ctl.abort();
  }, [intervalMs]);

  const refresh = useCallback(() => wake.current(), []);
  return { ...state, refresh };
}

// --- Routing: the History API is enough for five pages (the Static Web App's navigationFallback
// serves index.html for every page path).

const listeners = new Set<() => void>();
/** Whether the page has changed since the document loaded (see `PageHeading`). */
let navigated = false;
export const hasNavigated = () => navigated;
if (typeof window !== 'undefined') window.addEventListener('popstate', () => (navigated = true));

function subscribe(l: () => void) {
  listeners.add(l);
  window.addEventListener('popstate', l);
  return () => {
    listeners.delete(l);
    window.removeEventListener('popstate', l);
  };
}

export function navigate(path: string): void {
  if (path === window.location.pathname) return;
  window.history.pushState(null, '', path);
  navigated = true;
  listeners.forEach((l) => l());
}

export function usePath(): string {
  return useSyncExternalStore(subscribe, () => window.location.pathname);
}

/** State mirrored to localStorage, so the cart survives a reload and the fleet page sees orders. */
export function useStored<T>(key: string, parse: (text: string | null) => T, serialize: (v: T) => string = JSON.stringify) {
  const [value, setValue] = useState<T>(() => parse(safeGet(key)));
  useEffect(() => {
    try {
      localStorage.setItem(key, serialize(value));
    } catch {
      // Storage full or disabled (private mode): the state still works for this page view.
    }
  }, [key, value, serialize]);
  useEffect(() => {
    // Another tab changed it (the demo often has the shop and the fleet page side by side).
    const onStorage = (e: StorageEvent) => {
      if (e.key === key) setValue(parse(e.newValue));
    };
    window.addEventListener('storage', onStorage);
    return () => window.removeEventListener('storage', onStorage);
  }, [key, parse]);
  return [value, setValue] as const;
}

function safeGet(key: string): string | null {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}
