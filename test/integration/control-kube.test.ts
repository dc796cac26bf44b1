/**
 * `startControl` in Kubernetes mode against the test API server: the CA's home is the Secret
 * ward-ca/ward-ca and the bundle is published as ConfigMap ward-system/ward-bundle — and both
 * writes land even when the API refuses the first attempts; a state directory that survived a
 * container restart with a newer state of the same CA is written back instead of refused.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { startControl, type Control } from '../../cli/control.js';
import { silentLogger } from '../../core/logger.js';
import { tempDir } from '../helpers/openssl.js';
import { kubeConfigFor, startKubeApi, type KubeApiServer } from '../helpers/kube-api.js';

async function start(api: KubeApiServer, stateDir: string): Promise<Control> {
  const ctl = await startControl({
    stateDir,
    kube: { kubeConfig: kubeConfigFor(api), namespace: 'ward-system', trustDomain: 'cluster.local', caSecret: { namespace: 'ward-ca', name: 'ward-ca' } },
    listen: { host: '127.0.0.1', port: 0 },
    discovery: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    init: true,
    logger: silentLogger(),
  });
  onTestFinished(() => ctl.close(1_000));
  return ctl;
}

const secretData = (api: KubeApiServer) => (api.get('v1', 'Secret', 'ward-ca', 'ward-ca') as unknown as { data: Record<string, string> } | undefined)?.data;
const bundleOf = (api: KubeApiServer) => (api.get('v1', 'ConfigMap', 'ward-bundle', 'ward-system') as unknown as { data: Record<string, string> } | undefined)?.data['bundle.pem'];

describe('ward control --kube: the CA Secret and the bundle ConfigMap', () => {
  it('both are written even when the API refuses the first attempts (retried with backoff)', { timeout: 30_000 }, async () => {
    const api = await startKubeApi();
    onTestFinished(() => api.close());
    api.failNext(2, 500, (r) => r.resource === 'secrets' && r.verb === 'create');
    api.failNext(1, 503, (r) => r.resource === 'configmaps' && r.verb === 'create');
    const ctl = await start(api, await tempDir());
    await vi.waitFor(() => expect(secretData(api)?.['ca.json']).toBeDefined(), { timeout: 20_000, interval: 50 });
    await vi.waitFor(() => expect(bundleOf(api)).toBe(ctl.ca.bundle().toPem()), { timeout: 20_000, interval: 50 });
  });

  it('a restart with an empty state directory restores the same CA from the Secret', async () => {
    const api = await startKubeApi();
    onTestFinished(() => api.close());
    const first = await start(api, await tempDir());
    await vi.waitFor(() => expect(secretData(api)).toBeDefined(), { timeout: 10_000, interval: 50 });
    const root = first.ca.bundle().toPem();
    await first.close(1_000);
    const again = await start(api, await tempDir());
    expect(again.created).toBeUndefined();
    expect(again.ca.bundle().toPem()).toBe(root);
  });

  it('a state directory holding a newer state of the same CA (a rotation step whose Secret update had not landed) is written back; another CA is refused', async () => {
    const api = await startKubeApi();
    onTestFinished(() => api.close());
    const dir = await tempDir();
    const first = await start(api, dir);
    await vi.waitFor(() => expect(secretData(api)).toBeDefined(), { timeout: 10_000, interval: 50 });
    await first.close(1_000);
    // The Secret falls behind: as if the last update after a rotation step had failed.
    const stale = JSON.parse(await readFile(join(dir, 'ca.json'), 'utf8')) as Record<string, unknown>;
    stale.bundleSequence = 0;
    const data = { ...secretData(api)!, 'ca.json': Buffer.from(JSON.stringify(stale)).toString('base64') };
    api.patch('v1', 'Secret', 'ward-ca', 'ward-ca', { data });
    await start(api, dir);
    await vi.waitFor(async () => expect(Buffer.from(secretData(api)!['ca.json'], 'base64').equals(await readFile(join(dir, 'ca.json')))).toBe(true), { timeout: 10_000, interval: 50 });
    // A directory with ANOTHER CA (another createdAt) is not silently taken: two roots for one mesh.
    const other = JSON.parse(await readFile(join(dir, 'ca.json'), 'utf8')) as Record<string, unknown>;
    other.createdAt = '2000-01-01T00:00:00.000Z';
    await writeFile(join(dir, 'ca.json'), JSON.stringify(other));
    await expect(start(api, dir)).rejects.toMatchObject({ code: 'WARD_CONFIG_INVALID' });
  });
});
