"""TEST-ONLY: one unary CRI call to containerd's socket with the Python standard library, run
on a lab node (`python3 - METHOD [REQUEST_HEX]` with this file on stdin): what `crictl info`
asks, for nodes that have containerd but no crictl (the lab cannot get the real crictl).

gRPC over HTTP/2 cleartext on a unix socket: the client preface, an empty SETTINGS frame, one
HEADERS frame (HPACK literal fields, no Huffman, no indexing) and one DATA frame holding the
length-prefixed protobuf request; then frames are read until the stream ends. Prints JSON:
{"status": grpc-status or null, "message": grpc-message, "response": hex of the protobuf}.
Response headers are HPACK-decoded only as far as literal fields go (Go's server sends
grpc-status and grpc-message as literals); anything else is skipped.
"""

import json
import socket
import struct
import sys

SOCKET = "/run/containerd/containerd.sock"
DATA, HEADERS, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x7, 0x8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    """HPACK 'literal header field without indexing, new name' (RFC 7541 6.2.2)."""
    out = b"\x00"
    for s in (name.encode(), value.encode()):
        out += integer(len(s), 7) + s
    return out


def integer(n, bits, first=0):
    top = (1 << bits) - 1
    if n < top:
        return bytes([first | n])
    out, n = [first | top], n - top
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])


def read_int(data, i, bits):
    n = data[i] & ((1 << bits) - 1)
    i += 1
    if n < (1 << bits) - 1:
        return n, i
    shift = 0
    while True:
        b = data[i]
        i += 1
        n += (b & 127) << shift
        shift += 7
        if b < 128:
            return n, i


def literals(block):
    """The literal, non-Huffman header fields of an HPACK block (others are skipped)."""
    out, i = {}, 0
    while i < len(block):
        b = block[i]
        if b & 0x80:                      # indexed field
            _, i = read_int(block, i, 7)
            continue
        if b & 0xE0 == 0x20:              # dynamic table size update
            _, i = read_int(block, i, 5)
            continue
        bits = 6 if b & 0x40 else 4       # with / without (or never) indexing
        index, i = read_int(block, i, bits)
        name = None
        if index == 0:
            huff = block[i] & 0x80
            n, i = read_int(block, i, 7)
            name = None if huff else block[i:i + n].decode("latin-1")
            i += n
        huff = block[i] & 0x80
        n, i = read_int(block, i, 7)
        value = None if huff else block[i:i + n].decode("latin-1")
        i += n
        if name is not None and value is not None:
            out[name] = value
    return out


def call(method, request=b""):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(SOCKET)
    headers = b"".join(literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "localhost"),
        ("content-type", "application/grpc"), ("te", "trailers")))
    message = b"\x00" + struct.pack(">I", len(request)) + request
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0)
              + frame(HEADERS, END_HEADERS, 1, headers) + frame(DATA, END_STREAM, 1, message))
    buf, body, fields, done = b"", b"", {}, False
    while not done:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = s.recv(65536)
            if not chunk:
                done = True
                break
            buf += chunk
        if done:
            break
        size = int.from_bytes(buf[:3], "big")
        kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9:9 + size], buf[9 + size:]
        if kind == SETTINGS and not flags & ACK:
            s.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            s.sendall(frame(PING, ACK, 0, payload))
        elif kind == DATA and stream == 1:
            body += payload
            if payload:
                s.sendall(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload)))
                          + frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", len(payload))))
        elif kind == HEADERS and stream == 1:
            fields.update(literals(payload))
        elif kind == GOAWAY:
            done = True
        if stream == 1 and kind in (DATA, HEADERS) and flags & END_STREAM:
            done = True
    s.close()
    response = body[5:5 + int.from_bytes(body[1:5], "big")] if len(body) >= 5 else b""
    status = fields.get("grpc-status")
    return {"status": int(status) if status is not None else None,
            "message": fields.get("grpc-message", ""), "response": response.hex()}


if __name__ == "__main__" and len(sys.argv) > 1:
    print(json.dumps(call(sys.argv[1], bytes.fromhex(sys.argv[2]) if len(sys.argv) > 2 else b"")))
