/**
 * Dependency direction, enforced (STYLE.md, "Layout and dependency direction").
 *
 * Layers are the top-level folders core, ca, discovery, proxy, ingress and cli. Every import in
 * every .ts file under them (static, `export … from`, `import type`, side-effect, dynamic
 * `import()`, `typeof import()`, `require`) is checked against these rules:
 *
 * 1. Direction. A file may import its own folder freely. Across folders it may import only:
 *      core      -> nothing outside core
 *      ca        -> core
 *      discovery -> core
 *      proxy     -> core
 *      ingress   -> core, proxy
 *      cli       -> core, ca, discovery, proxy, ingress
 *    So ca, discovery and proxy never import each other (they talk over the network using
 *    core/protocol types), and only cli imports cli. This applies to test files too: a ca test
 *    that needs a proxy belongs in test/integration.
 *
 * 2. Public entry points. Outside a folder, that folder is reached only through its index.ts
 *    (so ingress sees proxy only through proxy/index.ts), or through its kube.ts: the Kubernetes
 *    parts that load @kubernetes/client-node, kept apart so that local mode never loads them. core is the shared kernel and is
 *    reached through one of:
 *      core/index.ts, core/<area>/index.ts (e.g. core/pki/index.ts), or a top-level file
 *      core/<file>.ts (e.g. core/errors.ts, core/clock.ts)
 *    but never a file inside an area (core/pki/certificate.ts). Inside core itself any file may
 *    import any other. Test files (*.test.ts) are exempt from this rule only: they may reach an
 *    internal to build a fixture, and they never ship.
 *
 * 3. Outside the layers. Library files never import test/, bench/ or anything else outside the
 *    layer folders; test files may also import test/ (shared helpers and fixtures).
 *
 * 4. PKI libraries. Only files under core/pki may import @peculiar/x509, @peculiar/asn1-*,
 *    pkijs, asn1js or node-forge, so ASN.1 handling stays in one place. Test files anywhere may.
 *
 * Imports are read with TypeScript's own pre-processor, so comments and strings that merely look
 * like imports are ignored and multi-line imports are seen.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const LAYERS = ['core', 'ca', 'discovery', 'proxy', 'ingress', 'cli'] as const;
type Layer = (typeof LAYERS)[number];

const MAY_IMPORT: Record<Layer, readonly Layer[]> = {
  core: [],
  ca: ['core'],
  discovery: ['core'],
  proxy: ['core'],
  ingress: ['core', 'proxy'],
  cli: ['core', 'ca', 'discovery', 'proxy', 'ingress'],
};

const PKI_LIBRARY = /^(?:@peculiar\/x509|@peculiar\/asn1-[^/]+|pkijs|asn1js|node-forge)(?:\/|$)/;
const SOURCE_FILE = /\.[cm]?ts$/;
const TEST_FILE = /\.(?:test|spec)\.[cm]?ts$/;

function isLayer(name: string): name is Layer {
  return (LAYERS as readonly string[]).includes(name);
}

/** Repo-relative POSIX path without its .ts/.js-family extension. */
function stripExtension(p: string): string {
  return p.replace(/\.d\.ts$|\.[cm]?[jt]sx?$/, '');
}

/** Why `target` (repo-relative, extension stripped) is not an allowed entry point of `layer`, or undefined. */
function entryPointError(layer: Layer, target: string): string | undefined {
  const inside = target.split('/').slice(1);
  if (layer === 'core') {
    const ok = (inside.length === 1) || (inside.length === 2 && inside[1] === 'index');
    return ok ? undefined : 'outside core, import core/index.ts, core/<area>/index.ts or a top-level core/<file>.ts';
  }
  return inside.length === 1 && (inside[0] === 'index' || inside[0] === 'kube') ? undefined : `outside ${layer}, import only ${layer}/index.ts (or ${layer}/kube.ts)`;
}

/** Checks one import specifier written in `file` (repo-relative POSIX path); returns the broken rule or undefined. */
function importError(file: string, specifier: string): string | undefined {
  const from = file.split('/')[0];
  if (!isLayer(from)) return undefined;
  const isTest = TEST_FILE.test(file);

  if (!specifier.startsWith('.') && !specifier.startsWith('/')) {
    if (PKI_LIBRARY.test(specifier) && !file.startsWith('core/pki/') && !isTest) {
      return 'only core/pki may import the X.509/ASN.1 libraries';
    }
    return undefined;
  }

  const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(file), specifier));
  if (specifier.startsWith('/') || resolved.startsWith('../') || resolved === '..') return 'resolves outside the repository';
  const to = resolved.split('/')[0];
  if (to === from) return undefined;

  if (!isLayer(to)) {
    if (isTest && to === 'test') return undefined;
    return `${from} must not import ${to}/ (only test files may import test/)`;
  }
  if (!MAY_IMPORT[from].includes(to)) {
    const allowed = MAY_IMPORT[from].length ? MAY_IMPORT[from].join(', ') : 'nothing outside core';
    return `${from} must not import ${to} (allowed: ${allowed})`;
  }
  if (isTest) return undefined;
  return entryPointError(to, stripExtension(resolved));
}

interface Violation {
  file: string;
  line: number;
  specifier: string;
  rule: string;
}

/** Every rule broken by the imports in `text`, the contents of `file`. */
function scanSource(file: string, text: string): Violation[] {
  const out: Violation[] = [];
  for (const ref of ts.preProcessFile(text, true, true).importedFiles) {
    const rule = importError(file, ref.fileName);
    if (rule) {
      const line = text.slice(0, ref.pos).split('\n').length;
      out.push({ file, line, specifier: ref.fileName, rule });
    }
  }
  return out;
}

function listSources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(ROOT, dir))) {
    if (name === 'node_modules') continue;
    const rel = `${dir}/${name}`;
    if (statSync(path.join(ROOT, rel)).isDirectory()) out.push(...listSources(rel));
    else if (SOURCE_FILE.test(name)) out.push(rel);
  }
  return out;
}

function layerSources(): string[] {
  const present = LAYERS.filter((l) => {
    try {
      return statSync(path.join(ROOT, l)).isDirectory();
    } catch {
      return false;
    }
  });
  return present.flatMap((l) => listSources(l));
}

describe('the import scanner can fail', () => {
  // Each case is a synthetic file that breaks exactly one rule: if the scanner stopped seeing a
  // kind of import or a rule stopped firing, the real scan below would pass vacuously.
  it.each([
    ['core/clock.ts', "import { CertificateAuthority } from '../ca/index.js';"],
    ['core/identity/spiffe-id.ts', "import type { Proxy } from '../../proxy/index.js';"],
    ['core/errors.ts', "export { run } from '../cli/run.js';"],
    ['core/logger.ts', "const m = await import('../ingress/index.js');"],
    ['core/logger.ts', "type P = typeof import('../discovery/index.js');"],
    ['ca/authority.ts', "import { Pool } from '../discovery/index.js';"],
    ['ca/authority.ts', "import '../proxy/index.js';"],
    ['discovery/pool.ts', 'import {\n  CertificateAuthority,\n} from "../ca/index.js";'],
    ['proxy/inbound.ts', "import { Pool } from '../discovery/index.js';"],
    ['ingress/routes.ts', "import { Inbound } from '../proxy/inbound.js';"],
    ['ingress/routes.ts', "import { CertificateAuthority } from '../ca/index.js';"],
    ['proxy/admin.ts', "import { run } from '../cli/index.js';"],
    ['cli/run.ts', "import { issue } from '../ca/issue.js';"],
    ['cli/run.ts', "import { LeafSigner } from '../core/pki/certificate.js';"],
    ['ca/signer.ts', "import { x } from '../core/pki/internal/der.js';"],
    ['ca/signer.ts', "import { x } from '../core/pki/index/extra.js';"],
    ['ca/signer.ts', "import * as x509 from '@peculiar/x509';"],
    ['ca/signer.ts', "import { Certificate } from '@peculiar/asn1-x509';"],
    ['core/tls/context.ts', "import * as asn1js from 'asn1js';"],
    ['core/identity/spiffe-id.ts', "import { Certificate } from 'pkijs/build/index.js';"],
    ['proxy/identity.ts', "const forge = require('node-forge');"],
    ['ca/store.ts', "import { mintCert } from '../test/helpers/pki.js';"],
    ['core/clock.ts', "import { bench } from '../bench/run.js';"],
    ['ca/store.ts', "import { x } from '../../outside.js';"],
    ['ca/authority.test.ts', "import { Pool } from '../discovery/index.js';"],
    ['core/pki/verify.test.ts', "import { CertificateAuthority } from '../../ca/index.js';"],
  ])('%s: %j is a violation', (file, line) => {
    const found = scanSource(file, `// header\n${line}\n`);
    expect(found).toHaveLength(1);
    // The reported line is the specifier's, which for a multi-line import is its last line.
    expect(found[0].line).toBe(1 + line.split('\n').length);
    expect(found[0].rule).not.toBe('');
  });

  it.each([
    ['core/pki/certificate.ts', "import 'reflect-metadata';\nimport * as x509 from '@peculiar/x509';\nimport { AsnConvert } from '@peculiar/asn1-schema';"],
    ['core/pki/csr.ts', "import * as asn1js from 'asn1js';\nimport * as pkijs from 'pkijs';"],
    ['core/identity/spiffe-id.ts', "import { WardError } from '../errors.js';"],
    ['core/tls/context.ts', "import { Certificate } from '../pki/certificate.js';"],
    ['ca/authority.ts', "import { WardError } from '../core/errors.js';\nimport { SpiffeId } from '../core/identity/index.js';\nimport { x } from '../core/index.js';"],
    ['ca/authority.ts', "import { store } from './store.js';\nimport { y } from './api/routes.js';"],
    ['ingress/routes.ts', "import { Proxy } from '../proxy/index.js';\nimport type { Clock } from '../core/clock.js';"],
    ['cli/run.ts', "import { CertificateAuthority } from '../ca/index.js';\nimport { Proxy } from '../proxy/index.js';\nimport { Ingress } from '../ingress/index.js';\nimport { Pool } from '../discovery/index.js';"],
    ['cli/commands/ca.ts', "import { run } from '../run.js';\nimport { CertificateAuthority } from '../../ca/index.js';"],
    ['ca/authority.test.ts', "import * as x509 from '@peculiar/x509';\nimport { mintCert } from '../test/helpers/pki.js';\nimport { Certificate } from '../core/pki/certificate.js';"],
    ['proxy/inbound.ts', "import { once } from 'node:events';\nimport pino from 'pino';"],
    ['core/clock.ts', "// import { x } from '../ca/index.js';\nconst s = \"import y from '../proxy/index.js'\";"],
  ])('%s: allowed imports are not flagged', (file, text) => {
    expect(scanSource(file, text)).toEqual([]);
  });
});

describe('the repository', () => {
  const files = layerSources();

  it('has source files to scan', () => {
    // A scan of nothing proves nothing: make sure the walk finds the known kernel files.
    expect(files).toContain('core/errors.ts');
    expect(files).toContain('core/identity/spiffe-id.ts');
  });

  it('imports only downward and only through public entry points', () => {
    const violations = files.flatMap((f) => scanSource(f, readFileSync(path.join(ROOT, f), 'utf8')));
    const report = violations.map((v) => `${v.file}:${v.line}: '${v.specifier}': ${v.rule}`);
    expect(report).toEqual([]);
  });
});
