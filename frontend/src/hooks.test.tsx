import { act, render, screen, waitFor } from '@testing-library/react';
import { afterEach, describe, expect, it } from 'vitest';
import { usePolling } from './hooks';

function setHidden(hidden: boolean) {
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
  document.dispatchEvent(new Event('visibilitychange'));
}

function Poller({ load, ms }: { load: () => Promise<number>; ms: number }) {
  const p = usePolling(load, ms);
  return (
    <p>
      <span data-testid="data">{p.data ?? 'none'}</span> <span data-testid="error">{p.error?.message ?? ''}</span>
    </p>
  );
}

afterEach(() => setHidden(false));

describe('polling', () => {
  it('loads at once and again after the interval', async () => {
    let n = 0;
    render(<Poller load={async () => ++n} ms={30} />);
    await waitFor(() => expect(Number(screen.getByTestId('data').textContent)).toBeGreaterThanOrEqual(3));
  });

  it('keeps the last good data when a poll fails, and recovers', async () => {
    let n = 0;
    render(
      <Poller
        load={async () => {
          n++;
          if (n === 2) throw new Error('down for a moment');
          return n;
        }}
        ms={30}
      />,
    );
    await waitFor(() => expect(screen.getByTestId('error').textContent).toBe('down for a moment'));
    expect(screen.getByTestId('data').textContent).toBe('1');
    await waitFor(() => expect(screen.getByTestId('error').textContent).toBe(''));
  });

  it('asks nothing while the tab is hidden, and resumes when it is shown', async () => {
    setHidden(true);
    let n = 0;
    render(<Poller load={async () => ++n} ms={10} />);
    await act(() => new Promise((r) => setTimeout(r, 100)));
    expect(n).toBe(0);
    act(() => setHidden(false));
    await waitFor(() => expect(n).toBeGreaterThan(0));
  });

  it('stops when the component goes away', async () => {
    let n = 0;
    const { unmount } = render(<Poller load={async () => ++n} ms={10} />);
    await waitFor(() => expect(n).toBeGreaterThan(0));
    unmount();
    const after = n;
    await new Promise((r) => setTimeout(r, 100));
    expect(n).toBeLessThanOrEqual(after + 1);
  });
});
