import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['{core,ca,discovery,proxy,ingress,cli,test}/**/*.test.ts'],
    // Real sockets and child processes: keep the suite bounded but not flaky on 2 cores.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    restoreMocks: true,
  },
});
