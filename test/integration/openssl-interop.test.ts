/**
 * Interop with a TLS and X.509 implementation nobody here wrote: the `openssl` command line.
 *
 *  - `openssl verify` accepts Ward leaves for TLS client and server use (strict X.509 checks).
 *  - A CSR made by `openssl req` (PEM and DER) is accepted by the CA, and the key stays OpenSSL's.
 *  - `openssl s_server` (client certificate required) ⇄ a Node client built by meshClientOptions.
 *  - `openssl s_client` ⇄ a Node server built by meshServerOptions, which reads the client's
 *    SPIFFE ID with peerIdentity.
 *  - Each handshake is refused when one side presents a certificate of another CA.
 *
 * Child processes: s_server is started on 127.0.0.1:0 (OpenSSL 3 reports the bound port in its
 * "ACCEPT 127.0.0.1:PORT" line, so there is no free-port race) and awaited by its output, never by
 * sleeping; it is killed when the test finishes. s_client runs through execFile with a timeout.
 * Key files are written 0600 in a 0700 temporary directory.
 *
 * s_client runs with -ign_eof (keep reading after its empty stdin ends, until the server closes)
 * and -ignore_unexpected_eof: Node's TLSSocket.end() closes TCP without a TLS close_notify, which
 * OpenSSL 3 otherwise reports as an error (exit code 1) after the exchange has succeeded.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, createServer, type TLSSocket } from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { SpiffeId } from '../../core/identity/index.js';
import { parseCertificate, parseCertificates } from '../../core/pki/index.js';
import { meshClientOptions, meshServerOptions, peerIdentity, type Credentials } from '../../core/tls/index.js';
import { openssl, opensslOk, tempDir } from '../helpers/openssl.js';
import { credentialsFor, openTestCa } from '../helpers/ca.js';

const TD = 'example.org';
const SERVER_ID = SpiffeId.workload(TD, 'shop', 'api');
const CLIENT_ID = SpiffeId.workload(TD, 'shop', 'web');
/** Guards against a hung peer; never reached when both sides work. */
const IO_TIMEOUT_MS = 10_000;


/** A member's credentials as the files OpenSSL reads: leaf, intermediates, key (0600), bundle. */
async function writeCredentials(dir: string, name: string, creds: Credentials): Promise<{ cert: string; chain: string; key: string; bundle: string }> {
  const [leaf, ...intermediates] = parseCertificates(creds.chainPem);
  const files = {
    cert: join(dir, `${name}.crt`),
    chain: join(dir, `${name}-chain.crt`),
    key: join(dir, `${name}.key`),
    bundle: join(dir, `${name}-bundle.crt`),
  };
  await writeFile(files.cert, leaf.pem, { mode: 0o600 });
  await writeFile(files.chain, intermediates.map((c) => c.pem).join(''), { mode: 0o600 });
  await writeFile(files.key, creds.key.exportPem(), { mode: 0o600 });
  await writeFile(files.bundle, creds.bundle.toPem(), { mode: 0o600 });
  return files;
}

/** A running `openssl s_server` and everything it has printed so far. */
interface SServer {
  child: ChildProcessWithoutNullStreams;
  port: number;
  output(): string;
  /** Resolves once stdout+stderr match `re`; rejects if the process exits first. */
  waitFor(re: RegExp): Promise<string>;
}

async function startSServer(args: string[]): Promise<SServer> {
  const child = spawn('openssl', ['s_server', '-accept', '127.0.0.1:0', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  const waiters = new Set<() => void>();
  let exited = false;
  const onOutput = (chunk: Buffer) => {
    out += chunk.toString('utf8');
    for (const w of [...waiters]) w();
  };
  child.stdout.on('data', onOutput);
  child.stderr.on('data', onOutput);
  child.on('exit', () => {
    exited = true;
    for (const w of [...waiters]) w();
  });
  onTestFinished(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = once(child, 'exit');
      child.kill('SIGKILL');
      await gone;
    }
  });
  // stdin stays open: s_server treats its end as a request to stop.
  const waitFor = (re: RegExp) =>
    new Promise<string>((resolve, reject) => {
      const guard = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`s_server did not print ${re} within ${IO_TIMEOUT_MS}ms; output:\n${out}`));
      }, IO_TIMEOUT_MS);
      const check = () => {
        const m = re.exec(out);
        if (m || exited) {
          clearTimeout(guard);
          waiters.delete(check);
          if (m) resolve(m[0]);
          else reject(new Error(`s_server exited (${String(child.exitCode ?? child.signalCode)}) before printing ${re}; output:\n${out}`));
        }
      };
      waiters.add(check);
      check();
    });
  const accept = await waitFor(/^ACCEPT 127\.0\.0\.1:(\d+)$/m);
  return { child, port: Number(/:(\d+)$/.exec(accept)![1]), output: () => out, waitFor };
}

/**
 * A Node mesh client's connection to `port`: resolves on secureConnect after writing `hello` (if
 * given), rejects with the error the client saw (or when the connection ends first).
 */
function nodeClient(port: number, options: ReturnType<typeof meshClientOptions>, hello?: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ...options });
    onTestFinished(() => void socket.destroy());
    socket.setTimeout(IO_TIMEOUT_MS, () => socket.destroy(new Error('timed out')));
    socket.on('secureConnect', () => {
      if (hello !== undefined) socket.write(`${hello}\n`);
      resolve(socket);
    });
    socket.on('error', reject);
    socket.on('close', () => reject(new Error('connection closed before the handshake completed')));
  });
}

/** A Node mesh server that answers each accepted client with the SPIFFE ID peerIdentity read. */
async function nodeMeshServer(creds: Credentials) {
  const seen: string[] = [];
  const refused: { error: string; authorizationError: string }[] = [];
  const sockets = new Set<TLSSocket>();
  const server = createServer(meshServerOptions(creds, { requireClientCert: true }), (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const id = peerIdentity(socket, { trustDomain: TD });
    seen.push(String(id));
    socket.end(`peer-id ${String(id)}\n`);
  });
  server.on('tlsClientError', (err, s: TLSSocket) => refused.push({ error: err.message, authorizationError: String(s.authorizationError) }));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { server, port: (server.address() as { port: number }).port, seen, refused };
}

describe('openssl interop', () => {
  it('openssl verify accepts issued leaves for sslclient and sslserver, and refuses them under another root', async () => {
    const dir = await tempDir();
    const ca = await openTestCa();
    const other = await openTestCa();
    const files = await writeCredentials(dir, 'web', await credentialsFor(ca, CLIENT_ID));
    const foreignBundle = join(dir, 'other-bundle.crt');
    await writeFile(foreignBundle, other.bundle().toPem());
    for (const purpose of ['sslclient', 'sslserver']) {
      const out = await opensslOk(['verify', '-x509_strict', '-purpose', purpose, '-CAfile', files.bundle, '-untrusted', files.chain, files.cert]);
      expect(out.trim()).toBe(`${files.cert}: OK`);
      const refused = await openssl(['verify', '-purpose', purpose, '-CAfile', foreignBundle, '-untrusted', files.chain, files.cert]);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr + refused.stdout).toContain('unable to get local issuer certificate');
    }
  });

  it('issues from a CSR made by openssl req (PEM and DER), for the key OpenSSL generated', async () => {
    const dir = await tempDir();
    const ca = await openTestCa();
    const key = join(dir, 'req.key');
    const base = ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-subj', '/CN=web'];
    const pem = join(dir, 'req.pem');
    await opensslOk([...base, '-addext', `subjectAltName=URI:${CLIENT_ID}`, '-out', pem]);
    const der = join(dir, 'req.der');
    await opensslOk([...base.map((a) => (a === key ? join(dir, 'req2.key') : a)), '-outform', 'DER', '-out', der]);

    const fromPem = await ca.issue({ csr: await readFile(pem, 'utf8'), identity: CLIENT_ID, requester: 'openssl-interop-test' });
    const fromDer = await ca.issue({ csr: await readFile(der), identity: CLIENT_ID, requester: 'openssl-interop-test' });
    for (const r of [fromPem, fromDer]) {
      const leaf = parseCertificate(r.certPem);
      expect(leaf.uris).toEqual([CLIENT_ID.toString()]);
      expect(leaf.subject).toBe('');
    }
    // The certificate carries OpenSSL's public key: openssl itself pairs the two.
    const certFile = join(dir, 'issued.crt');
    await writeFile(certFile, fromPem.certPem);
    const certPub = await opensslOk(['x509', '-in', certFile, '-noout', '-pubkey']);
    const keyPub = await opensslOk(['pkey', '-in', key, '-pubout']);
    expect(certPub).toBe(keyPub);
  });

  it('openssl s_server (client certificate required, TLS 1.3) ⇄ Node mesh client', async () => {
    const dir = await tempDir();
    const ca = await openTestCa();
    const server = await writeCredentials(dir, 'api', await credentialsFor(ca, SERVER_ID));
    const sServer = await startSServer([
      '-cert', server.cert, '-cert_chain', server.chain, '-key', server.key,
      '-CAfile', server.bundle, '-Verify', '1', '-verify_return_error', '-tls1_3',
    ]);
    const client = await credentialsFor(ca, CLIENT_ID);
    const socket = await nodeClient(sServer.port, meshClientOptions({ bundle: ca.bundle(), expectedId: SERVER_ID, creds: client }), 'hello-from-node');
    expect(socket.getProtocol()).toBe('TLSv1.3');
    expect(socket.getPeerCertificate().subjectaltname).toBe(`URI:${SERVER_ID}`);
    // s_server prints application data only after it verified the client certificate.
    await sServer.waitFor(/^hello-from-node$/m);
    expect(sServer.output()).not.toMatch(/verify error/);
  });

  it('openssl s_server and the Node mesh client each refuse a certificate of another CA', async () => {
    const dir = await tempDir();
    const ca = await openTestCa();
    const other = await openTestCa();

    // The Node client presents another CA's certificate: s_server refuses it.
    const server = await writeCredentials(dir, 'api', await credentialsFor(ca, SERVER_ID));
    const strict = await startSServer([
      '-cert', server.cert, '-cert_chain', server.chain, '-key', server.key,
      '-CAfile', server.bundle, '-Verify', '1', '-verify_return_error', '-tls1_3',
    ]);
    const stranger = await credentialsFor(other, CLIENT_ID);
    // Nothing is written: data unread by s_server when it closes would turn its alert into a reset.
    const socket = await nodeClient(strict.port, meshClientOptions({ bundle: ca.bundle(), expectedId: SERVER_ID, creds: stranger }));
    // TLS 1.3: the client's handshake completes before the server judges its certificate; the
    // refusal arrives as an alert.
    const [clientErr] = (await once(socket, 'error')) as [Error & { code?: string }];
    expect(clientErr.code).toBe('ERR_SSL_TLSV1_ALERT_UNKNOWN_CA');
    await strict.waitFor(/unable to get local issuer certificate/);

    // s_server presents another CA's certificate: the Node client refuses it.
    const foreign = await writeCredentials(dir, 'foreign', await credentialsFor(other, SERVER_ID));
    const impostor = await startSServer(['-cert', foreign.cert, '-cert_chain', foreign.chain, '-key', foreign.key, '-tls1_3']);
    const client = await credentialsFor(ca, CLIENT_ID);
    const err = await nodeClient(impostor.port, meshClientOptions({ bundle: ca.bundle(), expectedId: SERVER_ID, creds: client }), 'never-sent').then(
      () => undefined,
      (e: Error & { code?: string }) => e,
    );
    expect(err?.code).toBe('UNABLE_TO_GET_ISSUER_CERT_LOCALLY');
    expect(impostor.output()).not.toContain('never-sent');
  });

  it('openssl s_client (TLS 1.3, client certificate) ⇄ Node mesh server, which reads the right SPIFFE ID', async () => {
    const dir = await tempDir();
    const ca = await openTestCa();
    const server = await nodeMeshServer(await credentialsFor(ca, SERVER_ID));
    const client = await writeCredentials(dir, 'web', await credentialsFor(ca, CLIENT_ID));
    const r = await openssl(
      [
        's_client', '-connect', `127.0.0.1:${server.port}`,
        '-cert', client.cert, '-cert_chain', client.chain, '-key', client.key,
        '-CAfile', client.bundle, '-verify_return_error', '-tls1_3', '-ign_eof', '-ignore_unexpected_eof',
      ],
      { input: '', timeoutMs: IO_TIMEOUT_MS },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`peer-id ${CLIENT_ID}`);
    expect(r.stdout).toContain('Verify return code: 0 (ok)');
    expect(r.stdout).toMatch(/New, TLSv1\.3, Cipher is TLS_/);
    expect(server.seen).toEqual([CLIENT_ID.toString()]);
    expect(server.refused).toEqual([]);
  });

  it('openssl s_client and the Node mesh server each refuse a certificate of another CA', async () => {
    const dir = await tempDir();
    const ca = await openTestCa();
    const other = await openTestCa();

    // s_client presents another CA's certificate: the Node server refuses it.
    const server = await nodeMeshServer(await credentialsFor(ca, SERVER_ID));
    const stranger = await writeCredentials(dir, 'stranger', await credentialsFor(other, CLIENT_ID));
    const bundle = join(dir, 'bundle.crt');
    await writeFile(bundle, ca.bundle().toPem());
    const refusedSide = once(server.server, 'tlsClientError');
    const r = await openssl(
      [
        's_client', '-connect', `127.0.0.1:${server.port}`,
        '-cert', stranger.cert, '-cert_chain', stranger.chain, '-key', stranger.key,
        '-CAfile', bundle, '-verify_return_error', '-tls1_3', '-ign_eof', '-ignore_unexpected_eof',
      ],
      { input: '', timeoutMs: IO_TIMEOUT_MS },
    );
    await refusedSide;
    expect(server.refused).toEqual([expect.objectContaining({ authorizationError: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY' })]);
    expect(server.seen).toEqual([]);
    expect(r.stdout).not.toContain('peer-id');

    // The Node server presents another CA's certificate: s_client refuses it.
    const impostor = await nodeMeshServer(await credentialsFor(other, SERVER_ID));
    const client = await writeCredentials(dir, 'web', await credentialsFor(ca, CLIENT_ID));
    const r2 = await openssl(
      [
        's_client', '-connect', `127.0.0.1:${impostor.port}`,
        '-cert', client.cert, '-cert_chain', client.chain, '-key', client.key,
        '-CAfile', client.bundle, '-verify_return_error', '-tls1_3', '-ign_eof', '-ignore_unexpected_eof',
      ],
      { input: '', timeoutMs: IO_TIMEOUT_MS },
    );
    expect(r2.code).not.toBe(0);
    expect(r2.stderr + r2.stdout).toContain('unable to get local issuer certificate');
    expect(impostor.seen).toEqual([]);
  });
});
