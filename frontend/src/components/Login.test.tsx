import { render, screen } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { Login } from './Login';

describe('Login', () => {
  it('offers the local-only sign-in on a loopback host, never on a deployment', () => {
    const { unmount } = render(<Login principal={null} hostname="127.0.0.1" />);
    expect(screen.getByTestId('local-signin').textContent).toContain('Local stack only');
    expect(screen.getByRole('button', { name: 'Sign in as the warehouse' })).toBeTruthy();
    unmount();
    render(<Login principal={null} hostname="saldo-web.azurestaticapps.net" />);
    expect(screen.queryByTestId('local-signin')).toBeNull();
    expect(screen.getByRole('link', { name: 'Sign in with Microsoft Entra ID' })).toBeTruthy();
  });

  it('still offers the warehouse to a signed-in shopper locally, but not to the warehouse', () => {
    const shopper = { identityProvider: 'aad', userId: 's', userDetails: 'shopper@local.test', userRoles: ['authenticated'] };
    const { unmount } = render(<Login principal={shopper} hostname="localhost" />);
    expect(screen.getByTestId('warehouse-refused')).toBeTruthy();
    expect(screen.getByTestId('local-signin')).toBeTruthy();
    unmount();
    render(<Login principal={{ ...shopper, userRoles: ['warehouse'] }} hostname="localhost" />);
    expect(screen.queryByTestId('local-signin')).toBeNull();
  });
});
