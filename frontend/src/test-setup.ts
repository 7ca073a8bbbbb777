import { afterEach } from 'vitest';
import { cleanup, configure } from '@testing-library/react';

// The machine running the tests may be busy (2 shared cores): wait up to 5 s, not 1 s, for the
// page to show what a test expects. A bound, not a timing assertion.
configure({ asyncUtilTimeout: 5000 });

afterEach(() => {
  cleanup();
  globalThis.localStorage?.clear();
  globalThis.sessionStorage?.clear();
});
