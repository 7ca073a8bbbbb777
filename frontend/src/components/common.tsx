import { useEffect, useRef } from 'react';
import type { MouseEvent, ReactNode } from 'react';
import type { Principal } from '../api';
import { hasNavigated, navigate } from '../hooks';

export const WAREHOUSE_ROLE = 'warehouse';

/** Static Web Apps matches role names without regard to case; so does the API. */
export function hasRole(p: Principal | null, role: string): boolean {
  return p?.userRoles.some((r) => r.toLowerCase() === role.toLowerCase()) ?? false;
}

/** A link that changes page without reloading (and still works as a normal link). */
export function Link({ to, children, ...rest }: { to: string; children: ReactNode; className?: string; 'aria-current'?: 'page' }) {
  const onClick = (e: MouseEvent<HTMLAnchorElement>) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(to);
  };
  return (
    <a href={to} onClick={onClick} {...rest}>
      {children}
    </a>
  );
}

/**
 * The page's heading takes focus after an in-app navigation, so screen readers announce the new
 * page (a full page load announces itself, and keeps the skip link first in the tab order).
 */
export function PageHeading({ children }: { children: ReactNode }) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    if (hasNavigated()) ref.current?.focus({ preventScroll: true });
  }, []);
  return (
    <h1 ref={ref} tabIndex={-1}>
      {children}
    </h1>
  );
}

/** A failed poll: says so, and whether what is shown is the last good data. */
export function LoadError({ error, stale }: { error?: Error; stale: boolean }) {
  if (!error) return null;
  return (
    <p role="alert" className="error">
      {error.message}
      {stale ? ' Showing the last known values.' : ''}
    </p>
  );
}
