/**
 * A small, strict DER reader and writer, the PEM armour around DER, and the handful of X.509
 * structures (Name, GeneralNames, Time) that certificate.ts and csr.ts read and write by hand.
 *
 * Why by hand: issuance is a hot path (see LeafSigner), and the generic ASN.1 libraries cost more
 * per certificate than the ECDSA signature itself. The reader is written for hostile input: every
 * length is checked against its enclosing element, only definite minimal-length DER is accepted,
 * and nothing recurses on input-controlled depth, so garbage fails fast instead of hanging.
 *
 * Reader errors are DerError; callers wrap them in the WardError code that fits their input.
 */

/** Malformed DER. Internal: callers turn it into WARD_PKI_CERT_INVALID / WARD_PKI_CSR_INVALID. */
export class DerError extends Error {
  override name = 'DerError';
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  TELETEX_STRING: 0x14,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  UNIVERSAL_STRING: 0x1c,
  BMP_STRING: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

// ---------------------------------------------------------------------------------------------
// Reader

/** One element: `offset` is its first header byte, [start, end) its content. */
export interface Tlv {
  readonly tag: number;
  readonly offset: number;
  readonly start: number;
  readonly end: number;
}

/** Reads the element header at `pos`; its content must end at or before `limit`. */
export function readTlv(buf: Buffer, pos: number, limit: number): Tlv {
  if (pos >= limit) throw new DerError(`unexpected end of data at offset ${pos}`);
  if (pos + 2 > limit) throw new DerError(`truncated element header at offset ${pos}`);
  const tag = buf[pos];
  if ((tag & 0x1f) === 0x1f) throw new DerError(`unsupported high tag number at offset ${pos}`);
  let len = buf[pos + 1];
  let start = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw new DerError(`indefinite length at offset ${pos} is not DER`);
    // 4 length bytes already describe 4 GiB; anything longer is garbage or an attack.
    if (n > 4) throw new DerError(`length of ${n} bytes at offset ${pos} is too large`);
    if (start + n > limit) throw new DerError(`truncated length at offset ${pos}`);
    if (buf[start] === 0) throw new DerError(`non-minimal length at offset ${pos}`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i];
    if (len < 0x80) throw new DerError(`non-minimal length at offset ${pos}`);
    start += n;
  }
  const end = start + len;
  if (end > limit) {
    throw new DerError(`truncated: element at offset ${pos} declares ${len} content bytes, only ${limit - start} remain`);
  }
  return { tag, offset: pos, start, end };
}

/** Walks the elements inside one constructed element (or a whole buffer), in order. */
export class DerCursor {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  static inside(buf: Buffer, t: Tlv): DerCursor {
    return new DerCursor(buf, t.start, t.end);
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  peekTag(): number | undefined {
    return this.pos < this.end ? this.buf[this.pos] : undefined;
  }

  next(what: string): Tlv {
    if (this.pos >= this.end) throw new DerError(`${what} is missing`);
    const t = readTlv(this.buf, this.pos, this.end);
    this.pos = t.end;
    return t;
  }

  expect(tag: number, what: string): Tlv {
    if (this.pos >= this.end) throw new DerError(`${what} is missing`);
    if (this.buf[this.pos] !== tag) {
      throw new DerError(`${what}: expected tag 0x${hex2(tag)}, found 0x${hex2(this.buf[this.pos])} at offset ${this.pos}`);
    }
    return this.next(what);
  }

  /** The next element if it carries `tag`, else undefined (nothing consumed). */
  optional(tag: number, what: string): Tlv | undefined {
    return this.peekTag() === tag ? this.next(what) : undefined;
  }

  finish(what: string): void {
    if (this.pos < this.end) throw new DerError(`unexpected data after the last element of ${what} at offset ${this.pos}`);
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** Reads exactly one element that must fill `buf` completely (no trailing bytes). */
export function readWhole(buf: Buffer, tag: number, what: string): Tlv {
  const t = readTlv(buf, 0, buf.length);
  if (t.tag !== tag) throw new DerError(`${what}: expected tag 0x${hex2(tag)}, found 0x${hex2(t.tag)}`);
  if (t.end !== buf.length) throw new DerError(`${buf.length - t.end} bytes of trailing data after ${what}`);
  return t;
}

export function content(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.start, t.end);
}

/** The whole element, header included. */
export function raw(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.offset, t.end);
}

/** INTEGER content bytes (two's complement), checked for minimal encoding. */
export function readIntegerBytes(buf: Buffer, t: Tlv, what: string): Buffer {
  if (t.tag !== TAG.INTEGER) throw new DerError(`${what} is not an INTEGER`);
  const len = t.end - t.start;
  if (len === 0) throw new DerError(`${what} is an empty INTEGER`);
  if (len > 1) {
    const a = buf[t.start];
    const b = buf[t.start + 1];
    if ((a === 0x00 && (b & 0x80) === 0) || (a === 0xff && (b & 0x80) !== 0)) {
      throw new DerError(`${what} is a non-minimal INTEGER`);
    }
  }
  return buf.subarray(t.start, t.end);
}

/** A non-negative INTEGER small enough for a JS number (versions, path lengths). */
export function readSmallInteger(buf: Buffer, t: Tlv, what: string): number {
  const bytes = readIntegerBytes(buf, t, what);
  if (bytes[0] & 0x80) throw new DerError(`${what} is negative`);
  if (bytes.length > 4) throw new DerError(`${what} is too large`);
  let n = 0;
  for (const b of bytes) n = n * 256 + b;
  return n;
}

export function readBoolean(buf: Buffer, t: Tlv, what: string): boolean {
  if (t.tag !== TAG.BOOLEAN || t.end - t.start !== 1) throw new DerError(`${what} is not a BOOLEAN`);
  return buf[t.start] !== 0;
}

/** Dotted-decimal OID. Arcs past 2^53 are refused rather than rounded. */
export function readOid(buf: Buffer, t: Tlv, what: string): string {
  if (t.tag !== TAG.OID) throw new DerError(`${what} is not an OBJECT IDENTIFIER`);
  return decodeOidContent(buf, t.start, t.end, what);
}

function decodeOidContent(buf: Buffer, start: number, end: number, what: string): string {
  if (end <= start) throw new DerError(`${what} is an empty OBJECT IDENTIFIER`);
  const arcs: number[] = [];
  let value = 0;
  let fresh = true;
  for (let i = start; i < end; i++) {
    const b = buf[i];
    if (fresh && b === 0x80) throw new DerError(`${what} has a non-minimal OID arc`);
    value = value * 128 + (b & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER) throw new DerError(`${what} has an OID arc that is too large`);
    fresh = (b & 0x80) === 0;
    if (fresh) {
      if (arcs.length === 0) {
        const first = value < 40 ? 0 : value < 80 ? 1 : 2;
        arcs.push(first, value - first * 40);
      } else {
        arcs.push(value);
      }
      value = 0;
    }
  }
  if (!fresh) throw new DerError(`${what} has a truncated OID arc`);
  return arcs.join('.');
}

/** BIT STRING: number of unused bits in the last byte, and the bytes. */
export function readBitString(buf: Buffer, t: Tlv, what: string): { unused: number; bytes: Buffer } {
  if (t.tag !== TAG.BIT_STRING) throw new DerError(`${what} is not a BIT STRING`);
  if (t.end <= t.start) throw new DerError(`${what} is an empty BIT STRING`);
  const unused = buf[t.start];
  if (unused > 7 || (unused > 0 && t.end - t.start === 1)) throw new DerError(`${what} has an invalid unused-bits count`);
  return { unused, bytes: buf.subarray(t.start + 1, t.end) };
}

/** Named bits of a BIT STRING (bit 0 is the most significant bit of the first byte). */
export function bitIsSet(bytes: Buffer, bit: number): boolean {
  const i = bit >> 3;
  return i < bytes.length && (bytes[i] & (0x80 >> (bit & 7))) !== 0;
}

const DIGITS = /^[0-9]+$/;

/** UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), exactly as RFC 5280 requires. */
export function readTime(buf: Buffer, t: Tlv, what: string): Date {
  const s = buf.toString('latin1', t.start, t.end);
  let year: number;
  let rest: string;
  if (t.tag === TAG.UTC_TIME) {
    if (s.length !== 13 || s[12] !== 'Z' || !DIGITS.test(s.slice(0, 12))) throw new DerError(`${what}: malformed UTCTime`);
    const yy = Number(s.slice(0, 2));
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
    rest = s.slice(2, 12);
  } else if (t.tag === TAG.GENERALIZED_TIME) {
    if (s.length !== 15 || s[14] !== 'Z' || !DIGITS.test(s.slice(0, 14))) throw new DerError(`${what}: malformed GeneralizedTime`);
    year = Number(s.slice(0, 4));
    rest = s.slice(4, 14);
  } else {
    throw new DerError(`${what} is not a UTCTime or GeneralizedTime`);
  }
  const month = Number(rest.slice(0, 2));
  const day = Number(rest.slice(2, 4));
  const hour = Number(rest.slice(4, 6));
  const minute = Number(rest.slice(6, 8));
  const second = Number(rest.slice(8, 10));
  // setUTCFullYear, unlike Date.UTC, does not map years 0..99 to 1900..1999.
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  d.setUTCHours(hour, minute, second, 0);
  // Out-of-range fields (month 13, Feb 30, hour 24) roll over; a round trip catches them.
  if (
    d.getUTCFullYear() !== year ||
    d.getUTCMonth() !== month - 1 ||
    d.getUTCDate() !== day ||
    d.getUTCHours() !== hour ||
    d.getUTCMinutes() !== minute ||
    d.getUTCSeconds() !== second
  ) {
    throw new DerError(`${what}: invalid date ${s}`);
  }
  return d;
}

/** Decodes the directory string types found in Names. */
export function readString(buf: Buffer, t: Tlv, what: string): string {
  switch (t.tag) {
    case TAG.UTF8_STRING:
      try {
        return UTF8.decode(buf.subarray(t.start, t.end));
      } catch {
        throw new DerError(`${what} is not valid UTF-8`);
      }
    case TAG.PRINTABLE_STRING:
    case TAG.IA5_STRING:
      return readAscii(buf, t, what);
    case TAG.TELETEX_STRING:
      // T.61 is in practice Latin-1 in every certificate that uses it.
      return buf.toString('latin1', t.start, t.end);
    case TAG.BMP_STRING: {
      if ((t.end - t.start) % 2 !== 0) throw new DerError(`${what} is a BMPString of odd length`);
      const b = Buffer.from(buf.subarray(t.start, t.end));
      return b.swap16().toString('utf16le');
    }
    case TAG.UNIVERSAL_STRING: {
      if ((t.end - t.start) % 4 !== 0) throw new DerError(`${what} is a UniversalString of bad length`);
      let s = '';
      for (let i = t.start; i < t.end; i += 4) {
        const cp = buf.readUInt32BE(i);
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new DerError(`${what} has an invalid code point`);
        s += String.fromCodePoint(cp);
      }
      return s;
    }
    default:
      throw new DerError(`${what} is not a string type (tag 0x${hex2(t.tag)})`);
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** IA5String and PrintableString content: 7-bit bytes only. */
export function readAscii(buf: Buffer, t: Tlv, what: string): string {
  for (let i = t.start; i < t.end; i++) {
    if (buf[i] > 0x7f) throw new DerError(`${what} contains a non-ASCII byte`);
  }
  return buf.toString('latin1', t.start, t.end);
}

// ---------------------------------------------------------------------------------------------
// Writer

export function encodeLength(len: number): Buffer {
  if (len < 0x80) return Buffer.from([len]);
  if (len < 0x100) return Buffer.from([0x81, len]);
  if (len < 0x10000) return Buffer.from([0x82, len >> 8, len & 0xff]);
  if (len < 0x1000000) return Buffer.from([0x83, len >> 16, (len >> 8) & 0xff, len & 0xff]);
  return Buffer.from([0x84, len >>> 24, (len >> 16) & 0xff, (len >> 8) & 0xff, len & 0xff]);
}

function lengthSize(len: number): number {
  return len < 0x80 ? 1 : len < 0x100 ? 2 : len < 0x10000 ? 3 : len < 0x1000000 ? 4 : 5;
}

/** Size of a whole element (tag + length + content) with `len` content bytes. */
export function elementSize(len: number): number {
  return 1 + lengthSize(len) + len;
}

/** Writes a tag and a DER length at `pos`; returns the position of the content. */
export function writeHeader(out: Buffer, pos: number, tag: number, len: number): number {
  out[pos++] = tag;
  const ls = lengthSize(len);
  if (ls === 1) {
    out[pos++] = len;
  } else {
    out[pos++] = 0x80 | (ls - 1);
    for (let i = ls - 2; i >= 0; i--) out[pos++] = (len >>> (8 * i)) & 0xff;
  }
  return pos;
}

/** One element from a tag and its content parts, written into a single allocation. */
export function tlv(tag: number, ...parts: Buffer[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = Buffer.allocUnsafe(elementSize(len));
  let o = writeHeader(out, 0, tag, len);
  for (const p of parts) {
    p.copy(out, o);
    o += p.length;
  }
  return out;
}

export const seq = (...parts: Buffer[]): Buffer => tlv(TAG.SEQUENCE, ...parts);

export function encodeOid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  if (arcs.length < 2 || arcs.some((a) => !Number.isSafeInteger(a) || a < 0) || arcs[0] > 2 || (arcs[0] < 2 && arcs[1] >= 40)) {
    throw new Error(`BUG: invalid OID ${dotted}`);
  }
  const bytes: number[] = [];
  const push = (v: number): void => {
    const chunk: number[] = [v % 128];
    for (v = Math.floor(v / 128); v > 0; v = Math.floor(v / 128)) chunk.unshift(0x80 | v % 128);
    bytes.push(...chunk);
  };
  push(arcs[0] * 40 + arcs[1]);
  for (const a of arcs.slice(2)) push(a);
  return tlv(TAG.OID, Buffer.from(bytes));
}

/** INTEGER from an unsigned big-endian magnitude (leading zeros stripped, 00 prefixed if needed). */
export function encodeUnsigned(magnitude: Buffer): Buffer {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const m = magnitude.subarray(i);
  return m.length > 0 && m[0] & 0x80 ? tlv(TAG.INTEGER, Buffer.from([0]), m) : tlv(TAG.INTEGER, m.length ? m : Buffer.from([0]));
}

export function encodeSmallInteger(n: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`BUG: encodeSmallInteger(${n})`);
  const bytes: number[] = [];
  do {
    bytes.unshift(n & 0xff);
    n = Math.floor(n / 256);
  } while (n > 0);
  if (bytes[0] & 0x80) bytes.unshift(0);
  return tlv(TAG.INTEGER, Buffer.from(bytes));
}

export const DER_TRUE = Buffer.from([TAG.BOOLEAN, 1, 0xff]);

export function encodeBitString(bytes: Buffer, unused = 0): Buffer {
  return tlv(TAG.BIT_STRING, Buffer.from([unused]), bytes);
}

/** A named-bit BIT STRING (KeyUsage) with trailing zero bits removed, as DER requires. */
export function encodeNamedBits(bits: number[]): Buffer {
  const max = Math.max(...bits);
  const bytes = Buffer.alloc((max >> 3) + 1);
  for (const b of bits) bytes[b >> 3] |= 0x80 >> (b & 7);
  return encodeBitString(bytes, 7 - (max & 7));
}

/**
 * RFC 5280 §4.1.2.5: UTCTime for 1950 through 2049, GeneralizedTime otherwise.
 * Sub-second precision is dropped; callers that report the dates use floorToSecond().
 */
export function encodeTime(d: Date): Buffer {
  const out = Buffer.allocUnsafe(timeSize(d));
  writeTime(out, 0, d);
  return out;
}

function isUtcTimeYear(year: number): boolean {
  return year >= 1950 && year < 2050;
}

/** Size of the whole Time element for `d` (15 for UTCTime, 17 for GeneralizedTime). */
export function timeSize(d: Date): number {
  return isUtcTimeYear(d.getUTCFullYear()) ? 15 : 17;
}

/** Writes the Time element for `d` at `pos`; returns the position after it. */
export function writeTime(out: Buffer, pos: number, d: Date): number {
  const year = d.getUTCFullYear();
  if (!Number.isFinite(d.getTime()) || year < 0 || year > 9999) throw new Error(`BUG: cannot encode time ${String(d)}`);
  const utc = isUtcTimeYear(year);
  out[pos++] = utc ? TAG.UTC_TIME : TAG.GENERALIZED_TIME;
  out[pos++] = utc ? 13 : 15;
  const put2 = (v: number): void => {
    out[pos++] = 0x30 + Math.floor(v / 10);
    out[pos++] = 0x30 + (v % 10);
  };
  if (!utc) put2(Math.floor(year / 100));
  put2(year % 100);
  put2(d.getUTCMonth() + 1);
  put2(d.getUTCDate());
  put2(d.getUTCHours());
  put2(d.getUTCMinutes());
  put2(d.getUTCSeconds());
  out[pos++] = 0x5a; // 'Z'
  return pos;
}

export function floorToSecond(d: Date): Date {
  const ms = d.getTime();
  return new Date(ms - (((ms % 1000) + 1000) % 1000));
}

// ---------------------------------------------------------------------------------------------
// X.509 Name

const NAME_ATTRIBUTES: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.4': 'SN',
  '2.5.4.5': 'serialNumber',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.9': 'street',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.12': 'title',
  '2.5.4.42': 'GN',
  '0.9.2342.19200300.100.1.1': 'UID',
  '0.9.2342.19200300.100.1.25': 'DC',
  '1.2.840.113549.1.9.1': 'emailAddress',
};

const NAME_OIDS: Record<string, Buffer> = {
  CN: encodeOid('2.5.4.3'),
  O: encodeOid('2.5.4.10'),
};

/** A Name of single-valued RDNs in the given order, values as UTF8String. */
export function encodeName(rdns: Array<['CN' | 'O', string]>): Buffer {
  return seq(...rdns.map(([k, v]) => tlv(TAG.SET, seq(NAME_OIDS[k], tlv(TAG.UTF8_STRING, Buffer.from(v, 'utf8'))))));
}

/**
 * Human-readable Name in encoding order ("O=Ward, CN=Ward Root CA"), like `openssl x509 -subject`
 * without the spaces around "=". Separators and control characters inside values are
 * backslash-escaped so a crafted value cannot masquerade as another attribute.
 */
export function formatName(buf: Buffer, name: Tlv, what: string): string {
  if (name.tag !== TAG.SEQUENCE) throw new DerError(`${what} is not a Name`);
  const rdns: string[] = [];
  const c = DerCursor.inside(buf, name);
  while (!c.done) {
    const set = c.expect(TAG.SET, `${what} RDN`);
    const attrs: string[] = [];
    const ac = DerCursor.inside(buf, set);
    while (!ac.done) {
      const atv = ac.expect(TAG.SEQUENCE, `${what} attribute`);
      const vc = DerCursor.inside(buf, atv);
      const oid = readOid(buf, vc.next(`${what} attribute type`), `${what} attribute type`);
      const v = vc.next(`${what} attribute value`);
      vc.finish(`${what} attribute`);
      let value: string;
      try {
        value = escapeNameValue(readString(buf, v, `${what} ${oid}`));
      } catch (err) {
        if (!(err instanceof DerError) || !/not a string type/.test(err.message)) throw err;
        value = `#${raw(buf, v).toString('hex')}`;
      }
      attrs.push(`${NAME_ATTRIBUTES[oid] ?? oid}=${value}`);
    }
    if (attrs.length === 0) throw new DerError(`${what} has an empty RDN`);
    rdns.push(attrs.join('+'));
  }
  return rdns.join(', ');
}

function escapeNameValue(v: string): string {
  return v.replace(/[,+\\"<>;=\x00-\x1f\x7f]/g, (ch) => {
    const code = ch.charCodeAt(0);
    return code < 0x20 || code === 0x7f ? `\\${code.toString(16).padStart(2, '0')}` : `\\${ch}`;
  });
}

// ---------------------------------------------------------------------------------------------
// X.509 GeneralNames (subjectAltName)

export interface GeneralNames {
  uris: string[];
  dnsNames: string[];
  ipAddresses: string[];
  emails: string[];
  /** otherName, x400Address, directoryName, ediPartyName, registeredID. */
  otherCount: number;
}

/** Parses a GeneralNames SEQUENCE (the content of a subjectAltName extension). */
export function readGeneralNames(buf: Buffer, t: Tlv, what: string): GeneralNames {
  if (t.tag !== TAG.SEQUENCE) throw new DerError(`${what} is not a SEQUENCE of GeneralName`);
  const out: GeneralNames = { uris: [], dnsNames: [], ipAddresses: [], emails: [], otherCount: 0 };
  const c = DerCursor.inside(buf, t);
  if (c.done) throw new DerError(`${what} is empty`);
  while (!c.done) {
    const g = c.next(`${what} entry`);
    switch (g.tag) {
      case 0x81:
        out.emails.push(readAscii(buf, g, `${what} rfc822Name`));
        break;
      case 0x82:
        out.dnsNames.push(readAscii(buf, g, `${what} dNSName`));
        break;
      case 0x86:
        out.uris.push(readAscii(buf, g, `${what} uniformResourceIdentifier`));
        break;
      case 0x87:
        out.ipAddresses.push(formatIp(content(buf, g), what));
        break;
      case 0xa0: // otherName
      case 0xa3: // x400Address
      case 0xa4: // directoryName
      case 0xa5: // ediPartyName
      case 0x88: // registeredID
        out.otherCount++;
        break;
      default:
        throw new DerError(`${what} has an unknown GeneralName tag 0x${hex2(g.tag)}`);
    }
  }
  return out;
}

/** IPv4 dotted quad, or IPv6 in RFC 5952 canonical text (lowercase, longest zero run as "::"). */
export function formatIp(b: Buffer, what: string): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) throw new DerError(`${what} has an iPAddress of ${b.length} bytes`);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i));
  let bestStart = -1;
  let bestLen = 1; // a single zero group is not compressed (RFC 5952 §4.2.2)
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

// ---------------------------------------------------------------------------------------------
// PEM (RFC 7468)

export interface PemBlock {
  label: string;
  der: Buffer;
}

const BEGIN = /^-----BEGIN ([^-]*(?:-[^-]+)*)-----$/;
const END = /^-----END ([^-]*(?:-[^-]+)*)-----$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Every PEM block in `text`, in order. `textOutside` says whether anything but whitespace sits
 * outside the blocks (RFC 7468 allows explanatory text; callers decide whether they do).
 * Throws DerError on a malformed block: unterminated, mismatched END, headers (encrypted PEM),
 * or anything that is not strict base64.
 */
export function readPemBlocks(text: string): { blocks: PemBlock[]; textOutside: boolean } {
  const blocks: PemBlock[] = [];
  let textOutside = false;
  let label: string | undefined;
  let body: string[] = [];
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (label === undefined) {
      const m = BEGIN.exec(line);
      if (m) {
        label = m[1];
        body = [];
      } else if (line.includes('-----BEGIN') || line.includes('-----END')) {
        throw new DerError(`line ${n + 1} is a malformed PEM boundary`);
      } else if (line !== '') {
        textOutside = true;
      }
      continue;
    }
    const end = END.exec(line);
    if (end) {
      if (end[1] !== label) throw new DerError(`PEM block "${label}" ends with "END ${end[1]}"`);
      const b64 = body.join('');
      if (b64.length === 0) throw new DerError(`PEM block "${label}" is empty`);
      if (b64.length % 4 !== 0 || !BASE64.test(b64)) throw new DerError(`PEM block "${label}" is not valid base64`);
      blocks.push({ label, der: Buffer.from(b64, 'base64') });
      label = undefined;
      continue;
    }
    if (line.includes('-----')) throw new DerError(`PEM block "${label}" has no END line before line ${n + 1}`);
    if (line.includes(':')) throw new DerError(`PEM block "${label}" has headers (encrypted or legacy PEM is not supported)`);
    body.push(line.replace(/\s+/g, ''));
  }
  if (label !== undefined) throw new DerError(`PEM block "${label}" has no END line (truncated?)`);
  return { blocks, textOutside };
}

export function toPem(der: Buffer, label = 'CERTIFICATE'): string {
  const b64 = der.toString('base64');
  let out = `-----BEGIN ${label}-----\n`;
  for (let i = 0; i < b64.length; i += 64) out += `${b64.slice(i, i + 64)}\n`;
  return `${out}-----END ${label}-----\n`;
}
