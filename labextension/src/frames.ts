/**
 * The project's wire format, as the lab reads and writes it.
 *
 * A frame is a msgpack map (the header) immediately followed, in the same
 * binary message, by an optional msgpack-encoded body (see
 * `spindel_jupyter/wire.py`). The header is decoded on its own after measuring
 * how many bytes it takes; the body is decoded with the codec's extension
 * types mapped to plain JavaScript values.
 */
import { decode, encode, ExtensionCodec } from '@msgpack/msgpack';

/** A frame header: `t` names its type (see `spindel_jupyter/protocol.py`). */
export interface IHeader {
  t: string;
  [key: string]: unknown;
}

/** A decoded frame. */
export interface IFrame {
  header: IHeader;
  /** The decoded body, or `undefined` when the frame has none. */
  body: unknown;
}

/** Raised for a message that is not a valid frame. */
export class FrameError extends Error {}

/** Extension type codes of `wire.Ext`: part of the wire format. */
const enum Ext {
  TUPLE = 1,
  SET = 2,
  FROZENSET = 3,
  COMPLEX = 4,
  DATETIME = 5,
  DATE = 6,
  TIME = 7,
  TIMEDELTA = 8,
  DECIMAL = 9,
  BIGINT = 10,
  NDARRAY = 11,
  NPSCALAR = 12
}

/** A body that carries raw buffers starts with this byte, which msgpack never uses. */
const OUT_OF_BAND = 0xc1;
const OOB_PREFIX = 9; // struct "<BQ"

const text = new TextDecoder();
const codec = new ExtensionCodec();

function sequence(data: Uint8Array): unknown {
  return decode(data, { extensionCodec: codec });
}

for (const type of [Ext.TUPLE, Ext.SET, Ext.FROZENSET]) {
  codec.register({ type, encode: () => null, decode: sequence });
}
codec.register({
  type: Ext.COMPLEX,
  encode: () => null,
  decode: data => {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const re = view.getFloat64(0, true);
    const im = view.getFloat64(8, true);
    return `(${re}${im < 0 ? '-' : '+'}${Math.abs(im)}j)`;
  }
});
for (const type of [Ext.DATETIME, Ext.DATE, Ext.TIME, Ext.DECIMAL, Ext.BIGINT]) {
  codec.register({ type, encode: () => null, decode: data => text.decode(data) });
}
codec.register({
  type: Ext.TIMEDELTA,
  encode: () => null,
  decode: data => {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const days = Number(view.getBigInt64(0, true));
    return days * 86400 + view.getInt32(8, true) + view.getInt32(12, true) / 1e6;
  }
});
codec.register({ type: Ext.NDARRAY, encode: () => null, decode: () => '<ndarray>' });
codec.register({ type: Ext.NPSCALAR, encode: () => null, decode: () => '<numpy scalar>' });

/**
 * The number of bytes the msgpack object starting at `offset` takes.
 *
 * Walks the encoding without building values, so the header can be decoded on
 * its own and the body found right after it.
 */
export function objectLength(bytes: Uint8Array, offset = 0): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = offset;
  let pending = 1; // objects still to skip
  const need = (n: number): void => {
    if (pos + n > bytes.length) {
      throw new FrameError('truncated msgpack value');
    }
  };
  while (pending > 0) {
    need(1);
    const b = bytes[pos];
    pending -= 1;
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) {
      pos += 1;
    } else if (b <= 0x8f) {
      pending += 2 * (b & 0x0f);
      pos += 1;
    } else if (b <= 0x9f) {
      pending += b & 0x0f;
      pos += 1;
    } else if (b <= 0xbf) {
      pos += 1 + (b & 0x1f);
    } else {
      const u8 = (): number => view.getUint8(pos + 1);
      const u16 = (): number => view.getUint16(pos + 1);
      const u32 = (): number => view.getUint32(pos + 1);
      switch (b) {
        case 0xc4: // bin 8
        case 0xd9: // str 8
          need(2);
          pos += 2 + u8();
          break;
        case 0xc5:
        case 0xda:
          need(3);
          pos += 3 + u16();
          break;
        case 0xc6:
        case 0xdb:
          need(5);
          pos += 5 + u32();
          break;
        case 0xc7: // ext 8: length, type, data
          need(2);
          pos += 3 + u8();
          break;
        case 0xc8:
          need(3);
          pos += 4 + u16();
          break;
        case 0xc9:
          need(5);
          pos += 6 + u32();
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          pos += 5;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          pos += 9;
          break;
        case 0xcc:
        case 0xd0:
          pos += 2;
          break;
        case 0xcd:
        case 0xd1:
          pos += 3;
          break;
        case 0xd4: // fixext 1, 2, 4, 8, 16: type byte + data
          pos += 3;
          break;
        case 0xd5:
          pos += 4;
          break;
        case 0xd6:
          pos += 6;
          break;
        case 0xd7:
          pos += 10;
          break;
        case 0xd8:
          pos += 18;
          break;
        case 0xdc: // array 16 / 32
          need(3);
          pending += u16();
          pos += 3;
          break;
        case 0xdd:
          need(5);
          pending += u32();
          pos += 5;
          break;
        case 0xde: // map 16 / 32
          need(3);
          pending += 2 * u16();
          pos += 3;
          break;
        case 0xdf:
          need(5);
          pending += 2 * u32();
          pos += 5;
          break;
        default:
          throw new FrameError(`byte 0x${b.toString(16)} does not start a msgpack value`);
      }
    }
  }
  if (pos > bytes.length) {
    throw new FrameError('truncated msgpack value');
  }
  return pos - offset;
}

/** Decode a body produced by `wire.encode` (raw buffers stay unread). */
export function decodeBody(bytes: Uint8Array): unknown {
  if (bytes.length && bytes[0] === OUT_OF_BAND) {
    if (bytes.length < OOB_PREFIX) {
      throw new FrameError('truncated body');
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const length = Number(view.getBigUint64(1, true));
    if (OOB_PREFIX + length > bytes.length) {
      throw new FrameError('truncated body');
    }
    bytes = bytes.subarray(OOB_PREFIX, OOB_PREFIX + length);
  }
  return decode(bytes, { extensionCodec: codec });
}

/** Split and decode one binary message into its header and body. */
export function unpackFrame(data: ArrayBuffer | Uint8Array): IFrame {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const length = objectLength(bytes);
  const header = decode(bytes.subarray(0, length));
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new FrameError('a frame starts with a map');
  }
  const rest = bytes.subarray(length);
  return { header: header as IHeader, body: rest.length ? decodeBody(rest) : undefined };
}

/** Encode a frame: the header map, then the body if there is one. */
export function packFrame(header: IHeader, body?: unknown): Uint8Array {
  const head = encode(header);
  if (body === undefined) {
    return head;
  }
  const tail = encode(body);
  const frame = new Uint8Array(head.length + tail.length);
  frame.set(head, 0);
  frame.set(tail, head.length);
  return frame;
}
