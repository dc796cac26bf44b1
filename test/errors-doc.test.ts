/**
 * Keeps the error-code contract honest (STYLE.md, "Errors"; fastify's documented codes):
 * - docs/errors.md documents exactly the codes of ERROR_CODES in core/errors.ts, no more, no fewer;
 * - every code is spelled WARD_<AREA>_<NAME>;
 * - every 'WARD_…' string literal in library source is a real code, so a mistyped code in a
 *   comparison or an API response cannot slip past the type checker as a plain string.
 *
 * Environment variables share the WARD_ prefix (WARD_<COMPONENT>_<NAME>), so a literal is taken to
 * be an environment variable name, not a code, when it is read from an `env` object
 * (`env['WARD_X']`, `process.env["WARD_X"]`, `'WARD_X' in env`) or is the value of a constant or
 * property whose name contains "env", directly or nested in object/array literals
 * (`const STATE_DIR_ENV = 'WARD_CA_STATE_DIR'`, `const ENV = { stateDir: 'WARD_CA_STATE_DIR' }`).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../core/errors.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CODE_FORMAT = /^WARD_[A-Z]+(_[A-Z0-9]+)*$/;
const SOURCE_DIRS = ['core', 'ca', 'discovery', 'proxy', 'ingress', 'cli', 'bench'];

interface DocumentedCode {
  code: string;
  section: string;
  meaning: string;
  action: string;
  line: number;
}

/** Every table row of docs/errors.md whose first cell is a code, with the `## ` section it sits in. */
function parseErrorsDoc(markdown: string): DocumentedCode[] {
  const rows: DocumentedCode[] = [];
  let section = '';
  markdown.split('\n').forEach((text, i) => {
    if (text.startsWith('## ')) section = text.slice(3).trim();
    const m = /^\|\s*`?(WARD_[A-Za-z0-9_]*)`?\s*\|(.*)\|\s*$/.exec(text);
    if (!m) return;
    const cells = m[2].split('|').map((c) => c.trim());
    rows.push({ code: m[1], section, meaning: cells[0] ?? '', action: cells[1] ?? '', line: i + 1 });
  });
  return rows;
}

function isEnvName(node: ts.StringLiteralLike): boolean {
  const parent = node.parent;
  if (ts.isElementAccessExpression(parent) && parent.argumentExpression === node) {
    return /env$/i.test(parent.expression.getText());
  }
  if (ts.isBinaryExpression(parent) && parent.left === node && parent.operatorToken.kind === ts.SyntaxKind.InKeyword) {
    return /env$/i.test(parent.right.getText());
  }
  // Climb through plain data (object and array literals, `as const`, `satisfies`) to the
  // declaration that names it; a call or any other expression stops the climb.
  for (let n: ts.Node = node; ; n = n.parent) {
    const p = n.parent;
    if (ts.isVariableDeclaration(p) || ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p)) {
      if (p.initializer === n && /env/i.test(p.name.getText())) return true;
      if (!ts.isPropertyAssignment(p)) return false;
    } else if (!(ts.isObjectLiteralExpression(p) || ts.isArrayLiteralExpression(p) || ts.isAsExpression(p) || ts.isSatisfiesExpression(p) || ts.isParenthesizedExpression(p))) {
      return false;
    }
  }
}

/** 'WARD_…' literals in `text` that are used as error codes (not environment variable names). */
function codeLiterals(file: string, text: string): { value: string; line: number }[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: { value: string; line: number }[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isStringLiteralLike(node) && /^WARD_[A-Za-z0-9_]*[A-Za-z0-9]$/.test(node.text) && !isEnvName(node)) {
      out.push({ value: node.text, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

function librarySources(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(path.join(ROOT, dir));
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const name of names) {
    if (name === 'node_modules') continue;
    const rel = `${dir}/${name}`;
    if (statSync(path.join(ROOT, rel)).isDirectory()) out.push(...librarySources(rel));
    else if (/\.[cm]?ts$/.test(name) && !/\.(?:test|spec)\.[cm]?ts$/.test(name)) out.push(rel);
  }
  return out;
}

const documented = parseErrorsDoc(readFileSync(path.join(ROOT, 'docs/errors.md'), 'utf8'));
const codes = Object.keys(ERROR_CODES);

describe('docs/errors.md', () => {
  it('documents every code in ERROR_CODES', () => {
    const inDoc = new Set(documented.map((d) => d.code));
    expect(codes.filter((c) => !inDoc.has(c))).toEqual([]);
  });

  it('documents no code that ERROR_CODES lacks', () => {
    const known = new Set(codes);
    expect(documented.filter((d) => !known.has(d.code)).map((d) => `line ${d.line}: ${d.code}`)).toEqual([]);
  });

  it('documents each code once, under an area heading, with a meaning and what to do', () => {
    const seen = new Map<string, number>();
    const problems: string[] = [];
    for (const d of documented) {
      if (seen.has(d.code)) problems.push(`${d.code}: listed on lines ${seen.get(d.code)} and ${d.line}`);
      seen.set(d.code, d.line);
      if (!d.section) problems.push(`${d.code}: not under a "## " area heading`);
      if (d.meaning.length < 10) problems.push(`${d.code}: meaning is missing`);
      if (d.action.length < 10) problems.push(`${d.code}: "what to do" is missing`);
    }
    expect(problems).toEqual([]);
  });

  it('is actually parsed (a broken parser must not pass the checks above vacuously)', () => {
    expect(documented.length).toBeGreaterThanOrEqual(codes.length);
    expect(documented.map((d) => d.code)).toContain('WARD_ID_INVALID');
    const sample = parseErrorsDoc('## Area\n| code | meaning | what to do |\n|---|---|---|\n| `WARD_X_Y` | it broke badly | fix the thing |\n');
    expect(sample).toEqual([{ code: 'WARD_X_Y', section: 'Area', meaning: 'it broke badly', action: 'fix the thing', line: 4 }]);
  });
});

describe('ERROR_CODES', () => {
  it('spells every code WARD_<AREA>_<NAME> and describes it', () => {
    expect(codes.length).toBeGreaterThan(0);
    expect(codes.filter((c) => !CODE_FORMAT.test(c))).toEqual([]);
    expect(Object.entries(ERROR_CODES).filter(([, text]) => text.trim().length === 0).map(([c]) => c)).toEqual([]);
  });

  it('the format check rejects malformed codes', () => {
    for (const bad of ['WARD', 'WARD_', 'ward_ca_x', 'WARD_CA_', 'WARD__CA', 'WARD_1CA', 'WARD_CA-X', 'XWARD_CA']) expect(CODE_FORMAT.test(bad), bad).toBe(false);
    for (const good of ['WARD_USAGE', 'WARD_CA_NOT_FOUND', 'WARD_PKI_X509_INVALID']) expect(CODE_FORMAT.test(good), good).toBe(true);
  });
});

describe("'WARD_…' string literals in library source", () => {
  it('are all codes of ERROR_CODES', () => {
    const known = new Set(codes);
    const unknown: string[] = [];
    for (const file of SOURCE_DIRS.flatMap(librarySources)) {
      for (const lit of codeLiterals(file, readFileSync(path.join(ROOT, file), 'utf8'))) {
        if (!known.has(lit.value)) unknown.push(`${file}:${lit.line}: '${lit.value}' is not in ERROR_CODES (an environment variable? see this test's header)`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it('the literal scanner finds codes and skips environment variable names', () => {
    const text = [
      "throw new WardError('WARD_CA_FORBIDDEN', 'no');",
      'if (err.code === "WARD_CA_TYPO") retry();',
      'const body = { code: `WARD_PKI_NOPE` };',
      "// 'WARD_IN_COMMENT' is not code",
      "const dir = env['WARD_CA_STATE_DIR'];",
      "const addr = process.env[\"WARD_PROXY_ADDR\"];",
      "if ('WARD_LOG_LEVEL' in io.env) {}",
      "const STATE_DIR_ENV = 'WARD_CA_STATE_DIR';",
      "const ENV = { logLevel: { name: 'WARD_LOG_LEVEL' }, list: ['WARD_A_B'] } as const;",
      "const prefix = 'WARD_';",
      "const envFailure = new WardError('WARD_CA_TYPO2', 'a call is not data');",
      "const env2 = { code: 'WARD_CA_TYPO3' }, other = { c: 'WARD_CA_TYPO4' };",
    ].join('\n');
    expect(codeLiterals('x.ts', text)).toEqual([
      { value: 'WARD_CA_FORBIDDEN', line: 1 },
      { value: 'WARD_CA_TYPO', line: 2 },
      { value: 'WARD_PKI_NOPE', line: 3 },
      { value: 'WARD_CA_TYPO2', line: 11 },
      { value: 'WARD_CA_TYPO4', line: 12 },
    ]);
  });
});
