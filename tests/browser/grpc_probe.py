"""What the assignment service itself answers, beside what the page shows: one unary gRPC call
over plaintext HTTP/2 (prior knowledge), spoken with the standard library alone, since the
tests' venv holds no gRPC client. It sends a request message encoded by hand and reads the
answer's message; it decodes no response headers, so an error status reads as "no message".
"""

from __future__ import annotations

import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK, PADDED = 0x1, 0x4, 0x1, 0x8


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = [limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _hpack_literal(name: str, value: str) -> bytes:
    """A header field as a literal without indexing, its name and value as plain strings."""
    encoded = b"\x00"
    for text in (name.encode(), value.encode()):
        encoded += _hpack_int(len(text), 7) + text
    return encoded


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_message(fields: list[tuple[int, object]]) -> bytes:
    """Protobuf fields in order: a str or bytes as length-delimited, a bool or int as a varint."""
    out = b""
    for number, value in fields:
        if isinstance(value, (str, bytes)):
            data = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(data)) + data
        else:
            out += _varint(number << 3) + _varint(int(value))
    return out


def decode_message(data: bytes) -> dict[int, list]:
    """Each field number's values: bytes for length-delimited fields, ints otherwise."""
    fields: dict[int, list] = {}
    at = 0

    def varint() -> int:
        nonlocal at
        shift = result = 0
        while True:
            byte = data[at]
            at += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: object = varint()
        elif wire == 2:
            length = varint()
            value = data[at : at + length]
            at += length
        elif wire == 1:
            value = int.from_bytes(data[at : at + 8], "little")
            at += 8
        elif wire == 5:
            value = int.from_bytes(data[at : at + 4], "little")
            at += 4
        else:
            raise ValueError(f"wire type {wire} in field {number}")
        fields.setdefault(number, []).append(value)
    return fields


def unary(addr: str, method: str, request: bytes, token: str, timeout: float = 10.0) -> bytes:
    """Calls `method` (`/package.Service/Method`) at `addr` (host:port); the answer's message."""
    host, port = addr.rsplit(":", 1)
    headers = b"".join(
        _hpack_literal(name, value)
        for name, value in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", addr),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", f"Bearer {token}"),
        ]
    )
    body = b"\x00" + struct.pack(">I", len(request)) + request
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(
            PREFACE
            + _frame(SETTINGS, 0, 0, b"")
            + _frame(HEADERS, END_HEADERS, 1, headers)
            + _frame(DATA, END_STREAM, 1, body)
        )
        received = b""
        buffer = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags = buffer[3], buffer[4]
                stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                if kind == SETTINGS and not flags & ACK:
                    conn.sendall(_frame(SETTINGS, ACK, 0, b""))
                elif kind == PING and not flags & ACK:
                    conn.sendall(_frame(PING, ACK, 0, payload))
                elif kind == DATA and stream == 1:
                    if flags & PADDED:
                        payload = payload[1 : len(payload) - payload[0]]
                    received += payload
                elif kind in (RST_STREAM, GOAWAY) or (kind == HEADERS and stream == 1 and flags & END_STREAM):
                    if len(received) < 5:
                        raise RuntimeError(f"{method} answered no message (an error status)")
                    size = int.from_bytes(received[1:5], "big")
                    return received[5 : 5 + size]
            chunk = conn.recv(65536)
            if not chunk:
                break
            buffer += chunk
    raise RuntimeError(f"{method} did not answer within {timeout} s")


PRESENCES = {0: "unspecified", 1: "available", 2: "away", 3: "offline"}


def list_agents(platform, org: str) -> dict[str, dict]:
    """AssignmentService.ListAgents as an admin of `org`: each agent's presence and capacity."""
    token = platform.leads("token", "--org", org, "--role", "admin", "--ttl", "10m").strip()
    answer = unary(
        platform.addrs["assignment"],
        "/leads.v1.AssignmentService/ListAgents",
        encode_message([(1, org)]),
        token,
    )
    agents = {}
    for raw in decode_message(answer).get(1, []):
        agent = decode_message(raw)
        agent_id = agent[2][0].decode()
        agents[agent_id] = {
            "presence": PRESENCES.get(agent.get(10, [0])[0], "unknown"),
            # Absent when the organisation's default applies.
            "capacity": agent[8][0] if 8 in agent else None,
            "effective_capacity": agent.get(9, [0])[0],
        }
    return agents
