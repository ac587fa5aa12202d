"""MQTT 3.1.1 control packets, as far as the lab's data plane needs them: framing, parsing, encoding.

`PacketReader` frames a byte stream into packets (remaining-length varint, packets split across reads or
batched in one read); the parse/encode pairs cover CONNECT, PUBLISH, SUBSCRIBE/SUBACK, UNSUBSCRIBE and the
two-byte acks. Every parser rejects what MQTT 3.1.1 forbids with `MalformedPacket` (the data plane then hangs
up, as AWS IoT does on a protocol error), and `UnsupportedProtocol` for MQTT 3.1 / MQTT 5 CONNECTs.

Pure functions on bytes: no sockets, no policy, no logging. A CONNECT's password never appears in a repr.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

SUBACK_FAILURE = 0x80
# AWS IoT Core message broker quota: 128 KB per PUBLISH payload (not adjustable).
AWS_MAX_PAYLOAD = 128 * 1024
# Remaining-length ceiling the fronts accept from a device: the largest PUBLISH AWS would accept, plus room
# for the longest topic and the packet id. A bigger announced length is refused before buffering it.
MAX_DEVICE_PACKET = AWS_MAX_PAYLOAD + 2 + 65535 + 2
MAX_REMAINING_LENGTH = 268_435_455  # the varint's ceiling in MQTT 3.1.1


class MalformedPacket(ValueError):
    """Bytes that are not a valid MQTT 3.1.1 control packet."""


class UnsupportedProtocol(MalformedPacket):
    """A CONNECT for a protocol level the lab's broker cannot serve (MQTT 3.1, MQTT 5)."""


@dataclass(frozen=True)
class Packet:
    """One complete control packet: its type, the fixed-header flags, the body and the exact bytes."""

    kind: int
    flags: int
    body: bytes
    raw: bytes


class PacketReader:
    """Incremental MQTT framing: feed it bytes as they arrive, get complete packets back.

    Handles packets split across reads (a CONNECT over several TLS records) and several packets in one read.
    Raises `MalformedPacket` for a remaining length over 4 bytes or above `max_remaining_length`.
    """

    def __init__(self, max_remaining_length: int = MAX_REMAINING_LENGTH) -> None:
        self._buffer = bytearray()
        self._max = max_remaining_length

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets: list[Packet] = []
        while True:
            framed = self._next()
            if framed is None:
                return packets
            packets.append(framed)

    def _next(self) -> Packet | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length = 0
        header = 0
        for i in range(4):
            if 1 + i >= len(buf):
                return None  # the varint itself is still incomplete
            byte = buf[1 + i]
            length |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                header = 2 + i
                break
        else:
            raise MalformedPacket("remaining length longer than 4 bytes")
        if length > self._max:
            raise MalformedPacket(f"packet of {length} bytes exceeds the {self._max}-byte limit")
        total = header + length
        if len(buf) < total:
            return None
        raw = bytes(buf[:total])
        del buf[:total]
        return Packet(kind=raw[0] >> 4, flags=raw[0] & 0x0F, body=raw[header:], raw=raw)


def encode_remaining_length(length: int) -> bytes:
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {length} out of range")
    out = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def encode_packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_remaining_length(len(body)) + body


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedPacket("packet ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket("string is not valid UTF-8") from exc
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")  # [MQTT-1.5.3-2]
        return text

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def done(self) -> bool:
        return self.pos == len(self.data)


@dataclass(frozen=True)
class Connect:
    protocol_name: str
    protocol_level: int
    clean_session: bool
    keep_alive: int
    client_id: str
    will_topic: str | None = None
    will_message: bytes | None = field(default=None, repr=False)
    will_qos: int = 0
    will_retain: bool = False
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)  # never in logs or reprs


def parse_connect(packet: Packet) -> Connect:
    """Parse an MQTT 3.1.1 CONNECT; `UnsupportedProtocol` for 3.1/5, `MalformedPacket` for anything invalid."""
    if packet.kind != CONNECT:
        raise MalformedPacket(f"expected CONNECT, got packet type {packet.kind}")
    if packet.flags:
        raise MalformedPacket("CONNECT fixed-header flags must be 0")
    c = _Cursor(packet.body)
    name = c.string()
    level = c.u8()
    if (name, level) != ("MQTT", 4):
        if (name, level) in (("MQTT", 5), ("MQIsdp", 3)):
            raise UnsupportedProtocol(f"{name} protocol level {level} (the lab serves MQTT 3.1.1 only)")
        raise MalformedPacket(f"unknown protocol {name!r} level {level}")
    flags = c.u8()
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set")  # [MQTT-3.1.2-3]
    keep_alive = c.u16()
    client_id = c.string()
    will_topic = will_message = None
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("Will QoS 3")
        will_topic = c.string()
        will_message = c.binary()
    elif flags & 0x38:
        raise MalformedPacket("Will QoS/Retain set without the Will flag")  # [MQTT-3.1.2-11/13/15]
    username = c.string() if flags & 0x80 else None
    if flags & 0x40 and not flags & 0x80:
        raise MalformedPacket("password without user name")  # [MQTT-3.1.2-22]
    password = c.binary() if flags & 0x40 else None
    if not c.done():
        raise MalformedPacket("bytes after the CONNECT payload")
    return Connect(
        protocol_name=name,
        protocol_level=level,
        clean_session=bool(flags & 0x02),
        keep_alive=keep_alive,
        client_id=client_id,
        will_topic=will_topic,
        will_message=will_message,
        will_qos=will_qos if will_topic is not None else 0,
        will_retain=will_retain,
        username=username,
        password=password,
    )


def encode_connect(connect: Connect) -> bytes:
    flags = 0x02 if connect.clean_session else 0
    payload = _string(connect.client_id)
    if connect.will_topic is not None:
        flags |= 0x04 | (connect.will_qos << 3) | (0x20 if connect.will_retain else 0)
        will = connect.will_message or b""
        payload += _string(connect.will_topic) + len(will).to_bytes(2, "big") + will
    if connect.username is not None:
        flags |= 0x80
        payload += _string(connect.username)
    if connect.password is not None:
        flags |= 0x40
        payload += len(connect.password).to_bytes(2, "big") + connect.password
    variable = _string(connect.protocol_name) + bytes([connect.protocol_level, flags])
    variable += connect.keep_alive.to_bytes(2, "big")
    return encode_packet(CONNECT << 4, variable + payload)


@dataclass(frozen=True)
class Publish:
    topic: str
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    payload: bytes = field(repr=False)


def parse_publish(packet: Packet) -> Publish:
    if packet.kind != PUBLISH:
        raise MalformedPacket(f"expected PUBLISH, got packet type {packet.kind}")
    qos = (packet.flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH QoS 3")
    c = _Cursor(packet.body)
    topic = c.string()
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH topic empty or with wildcards")  # [MQTT-3.3.2-2]
    packet_id = c.u16() if qos else None
    return Publish(
        topic=topic,
        qos=qos,
        retain=bool(packet.flags & 0x01),
        dup=bool(packet.flags & 0x08),
        packet_id=packet_id,
        payload=c.rest(),
    )


def encode_publish(publish: Publish) -> bytes:
    first = (
        (PUBLISH << 4) | (0x08 if publish.dup else 0) | (publish.qos << 1) | (0x01 if publish.retain else 0)
    )
    body = _string(publish.topic)
    if publish.qos:
        assert publish.packet_id is not None
        body += publish.packet_id.to_bytes(2, "big")
    return encode_packet(first, body + publish.payload)


def parse_subscribe(packet: Packet) -> tuple[int, list[tuple[str, int]]]:
    """(packet id, [(topic filter, requested QoS)]) of a SUBSCRIBE."""
    if packet.kind != SUBSCRIBE or packet.flags != 0x02:
        raise MalformedPacket("SUBSCRIBE with wrong type or flags")  # [MQTT-3.8.1-1]
    c = _Cursor(packet.body)
    packet_id = c.u16()
    subscriptions: list[tuple[str, int]] = []
    while not c.done():
        topic_filter = c.string()
        options = c.u8()
        if options & 0xFC or (options & 0x03) == 3:
            raise MalformedPacket("SUBSCRIBE options byte invalid")  # [MQTT-3-8.3-4]
        if not topic_filter:
            raise MalformedPacket("empty topic filter")
        subscriptions.append((topic_filter, options))
    if not subscriptions:
        raise MalformedPacket("SUBSCRIBE without topic filters")  # [MQTT-3.8.3-3]
    return packet_id, subscriptions


def encode_subscribe(packet_id: int, subscriptions: Iterable[tuple[str, int]]) -> bytes:
    body = packet_id.to_bytes(2, "big")
    for topic_filter, qos in subscriptions:
        body += _string(topic_filter) + bytes([qos])
    return encode_packet((SUBSCRIBE << 4) | 0x02, body)


def parse_unsubscribe(packet: Packet) -> tuple[int, list[str]]:
    if packet.kind != UNSUBSCRIBE or packet.flags != 0x02:
        raise MalformedPacket("UNSUBSCRIBE with wrong type or flags")
    c = _Cursor(packet.body)
    packet_id = c.u16()
    filters = []
    while not c.done():
        filters.append(c.string())
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE without topic filters")
    return packet_id, filters


def encode_unsubscribe(packet_id: int, filters: Iterable[str]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_string(f) for f in filters)
    return encode_packet((UNSUBSCRIBE << 4) | 0x02, body)


def parse_suback(packet: Packet) -> tuple[int, list[int]]:
    if packet.kind != SUBACK:
        raise MalformedPacket("expected SUBACK")
    c = _Cursor(packet.body)
    packet_id = c.u16()
    return packet_id, list(c.rest())


def encode_suback(packet_id: int, return_codes: Iterable[int]) -> bytes:
    return encode_packet(SUBACK << 4, packet_id.to_bytes(2, "big") + bytes(return_codes))


def encode_ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0b0010) or PUBCOMP for `packet_id`."""
    first = (kind << 4) | (0x02 if kind == PUBREL else 0)
    return bytes([first, 2]) + packet_id.to_bytes(2, "big")


def packet_id_of(packet: Packet) -> int:
    """The packet id of a two-byte ack (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK)."""
    return _Cursor(packet.body).u16()
