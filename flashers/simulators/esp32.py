"""A fake ESP32 behind the narrow `Esp32Link` interface, with an in-memory flash; and readers for what it holds.

The fast, in-process ESP32 for fault tests and the demo (the real esptool runs against `esp32rom`, the ROM
loader on a pty): `FakeEsp32Link` implements
`flashers.esp32.Esp32Link` over a `FakeEsp32`, whose flash is a sparse in-memory image of a 4 MB SPI flash that
starts out like a unit with the product's firmware: a partition table at 0x8000 (nvs at 0x9000, phy_init,
factory app at 0x10000) and an app image whose `esp_app_desc_t` names the firmware. Writes behave like
esptool's with the stub: the region is erased, then written in 16 KB blocks, each block tried up to 3 times
(esptool's WRITE_BLOCK_ATTEMPTS). Failures are raised as esptool raises them (its FatalError texts, pyserial's
SerialException) through `flashers.esp32.esptool_errors`, so the flasher sees exactly what the real link
would give it.

Ports are URLs `esp32sim://<name>`: importing this module registers the scheme with `flashers.esp32`, so
`Esp32Flasher("esp32sim://unit-1")` works in-process (tests, the demo). A port is claimed by one link at a
time ("in use"), and an unknown name is "no such port".

Readers: `read_nvs(image)` parses an NVS partition (page headers, entry bitmaps, CRC-32s, strings,
multi-page blobs) the way the firmware's `nvs_get_str`/`nvs_get_blob` would see it; `partition_table(...)`
and `app_image(...)` build what a unit's flash starts with.

Faults (`Faults`): silent, garbage, flood, wrong_boot_mode (the unit booted its app), disconnect_mid_write
(drops off after the first block of a write: the partition is left erased and half-written, as a real one
would be), bad_store (keeps a damaged copy, so verify fails), slow=S (per operation), corrupt=P / lose=P (a
write block fails and is retried by esptool), seed.

This module is for tests, the demo and training: nothing in the station's core may import it.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from flashers.base import PortUnavailable
from flashers.esp32 import (
    DEFAULT_NVS_OFFSET,
    DEFAULT_NVS_SIZE,
    DEFAULT_PARTITION_TABLE_OFFSET,
    NvsLayout,
    esptool_errors,
    register_link_scheme,
)

SCHEME = "esp32sim"
CHIP = "ESP32-D0WD-V3 (revision v3.1)"
FLASH_SIZE = 4 * 1024 * 1024
SECTOR = 0x1000
BLOCK = 0x4000  # esptool stub's FLASH_WRITE_SIZE
BLOCK_ATTEMPTS = 3  # esptool's WRITE_BLOCK_ATTEMPTS
APP_OFFSET = 0x10000
_UNIT_COUNTER = itertools.count(1)


@dataclass
class Faults:
    """What goes wrong on this unit; `None`/0/False means never."""

    silent: bool = False
    garbage: bool = False
    flood: bool = False
    wrong_boot_mode: bool = False
    disconnect_mid_write: bool = False
    bad_store: bool = False
    slow: float = 0.0
    corrupt: float = 0.0
    lose: float = 0.0
    silent_s: float = 0.3  # how long a silent unit takes to be given up (esptool's sync attempts, shortened)
    seed: int | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Faults:
        faults = cls()
        known = {f.name for f in fields(cls)}
        for name, value in (spec or {}).items():
            if name not in known:
                raise ValueError(f"the ESP32 fake has no fault {name!r}")
            setattr(faults, name, value)
        return faults


# ------------------------------------------------------------------------------------------------- flash


class SparseFlash:
    """A NOR flash of `size` bytes, erased to 0xFF, stored per 4 KB sector."""

    def __init__(self, size: int = FLASH_SIZE) -> None:
        self.size = size
        self._sectors: dict[int, bytearray] = {}
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        self._check(offset, size)
        out = bytearray()
        with self._lock:
            pos = offset
            while pos < offset + size:
                index, inner = divmod(pos, SECTOR)
                take = min(SECTOR - inner, offset + size - pos)
                sector = self._sectors.get(index)
                out += sector[inner : inner + take] if sector is not None else b"\xff" * take
                pos += take
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        """Program bytes (NOR: bits only go 1 → 0; an unerased write ANDs into what is there)."""
        self._check(offset, len(data))
        with self._lock:
            for i, byte in enumerate(data):
                index, inner = divmod(offset + i, SECTOR)
                sector = self._sectors.setdefault(index, bytearray(b"\xff" * SECTOR))
                sector[inner] &= byte

    def erase(self, offset: int, size: int) -> None:
        if offset % SECTOR or size % SECTOR:
            raise ValueError("erase is per 4 KB sector")
        self._check(offset, size)
        with self._lock:
            for index in range(offset // SECTOR, (offset + size) // SECTOR):
                self._sectors.pop(index, None)

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError("outside the flash")


def partition_table(entries: Sequence[tuple[str, int, int, int, int]]) -> bytes:
    """A binary partition table (label, type, subtype, offset, size) with its MD5 entry, padded to 0xC00."""
    table = b"".join(
        b"\xaa\x50"
        + struct.pack("<BBII", ptype, subtype, offset, size)
        + label.encode("ascii").ljust(16, b"\x00")
        + struct.pack("<I", 0)
        for label, ptype, subtype, offset, size in entries
    )
    table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return table.ljust(0xC00, b"\xff")


def app_image(project: str, version: str) -> bytes:
    """The start of an app image: image header, first segment header, esp_app_desc_t (256 bytes)."""
    header = bytes([0xE9, 1, 2, 0x20]) + b"\x00" * 20
    segment = struct.pack("<II", 0x3F400020, 256)
    desc = bytearray(256)
    struct.pack_into("<II", desc, 0, 0xABCD5432, 0)
    desc[16:48] = version.encode("ascii")[:31].ljust(32, b"\x00")
    desc[48:80] = project.encode("ascii")[:31].ljust(32, b"\x00")
    desc[80:96] = b"12:00:00".ljust(16, b"\x00")
    desc[96:112] = b"Jan  1 2026".ljust(16, b"\x00")
    desc[112:144] = b"v5.4".ljust(32, b"\x00")
    return header + segment + bytes(desc)


# ---------------------------------------------------------------------------------------------- devices

_DEVICES: dict[str, FakeEsp32] = {}
_DEVICES_LOCK = threading.Lock()


class FakeEsp32:
    """One simulated ESP32 module. `port` is its URL; `stop()` takes it off the line."""

    def __init__(
        self,
        name: str | None = None,
        *,
        mac: bytes | None = None,
        flash: SparseFlash | None = None,
        faults: Faults | None = None,
        nvs_offset: int = DEFAULT_NVS_OFFSET,
        nvs_size: int = DEFAULT_NVS_SIZE,
        nvs_label: str = "nvs",
        project: str = "station-demo",
        version: str = "1.4.2",
        blank: bool = False,
    ) -> None:
        self.name = name or f"unit-{next(_UNIT_COUNTER)}-{random.getrandbits(32):08x}"
        self.port = f"{SCHEME}://{self.name}"
        self.mac = (
            mac if mac is not None else bytes([0x24, 0x0A, 0xC4]) + random.getrandbits(24).to_bytes(3, "big")
        )
        self.nvs_offset = nvs_offset
        self.nvs_size = nvs_size
        self.faults = faults or Faults()
        self.rng = random.Random(self.faults.seed)
        self.ops: list[str] = []  # every link operation, in order
        self.gone = False  # stopped or dropped off the line
        self.claimed = False
        if flash is None:
            flash = SparseFlash()
            if not blank:
                flash.write(
                    DEFAULT_PARTITION_TABLE_OFFSET,
                    partition_table(
                        [
                            (nvs_label, 1, 2, nvs_offset, nvs_size),
                            ("phy_init", 1, 1, nvs_offset + nvs_size, 0x1000),
                            ("factory", 0, 0, APP_OFFSET, 0x100000),
                        ]
                    ),
                )
                flash.write(APP_OFFSET, app_image(project, version))
        self.flash = flash
        with _DEVICES_LOCK:
            _DEVICES[self.name] = self

    @property
    def device_id(self) -> str:
        return self.mac.hex().upper()

    def nvs(self) -> dict[tuple[str, str], bytes | int]:
        """What the firmware would find in its NVS partition now."""
        return read_nvs(self.flash.read(self.nvs_offset, self.nvs_size))

    def live(self, layout: NvsLayout | None = None) -> dict[str, str | None]:
        """The credentials the firmware would use now (None where an entry is missing or damaged)."""
        layout = layout or NvsLayout()
        try:
            entries = self.nvs()
        except ValueError:
            return {"cert": None, "key": None, "ca": None}
        out: dict[str, str | None] = {}
        for slot, key in (("cert", layout.cert_key), ("key", layout.key_key), ("ca", layout.ca_key)):
            value = entries.get((layout.namespace, key))
            if isinstance(value, bytes):
                text = value[:-1] if value.endswith(b"\x00") else value
                out[slot] = text.decode("ascii", "replace")
            else:
                out[slot] = None
        return out

    def restart(self) -> FakeEsp32:
        """Power-cycle: the same flash and MAC on a new port, no faults. This one is stopped."""
        self.stop()
        return FakeEsp32(mac=self.mac, flash=self.flash, nvs_offset=self.nvs_offset, nvs_size=self.nvs_size)

    def stop(self) -> None:
        self.gone = True
        with _DEVICES_LOCK:
            if _DEVICES.get(self.name) is self:
                del _DEVICES[self.name]


def open_fake_link(port: str, **options: Any) -> FakeEsp32Link:
    """The link factory registered for `esp32sim://`."""
    name = port.partition("://")[2]
    with _DEVICES_LOCK:
        device = _DEVICES.get(name)
        if device is None:
            raise PortUnavailable(port, "no such port (is the jig's cable plugged in?)")
        if device.claimed:
            raise PortUnavailable(port, "it is in use by another program or slot")
        device.claimed = True
    return FakeEsp32Link(device, **options)


class FakeEsp32Link:
    """`Esp32Link` over a `FakeEsp32`, failing the way esptool and pyserial do."""

    def __init__(
        self, device: FakeEsp32, *, baudrate: int = 115200, connect_mode: str = "default-reset"
    ) -> None:
        self.device = device
        self.baudrate = baudrate
        self.connect_mode = connect_mode
        self._synced = False
        self._stub = False
        self._closed = False

    # Every operation runs inside esptool_errors(): the same translation as the real link.
    def _op(self, name: str) -> None:
        from esptool.util import FatalError

        device = self.device
        device.ops.append(name)
        if self._closed:
            raise FatalError("Port is closed")
        if device.gone:
            import serial

            raise serial.SerialException("device reports readiness to read but returned no data")
        if device.faults.slow:
            time.sleep(device.faults.slow)
        if name != "detect_chip" and not self._synced:
            raise FatalError("Timed out waiting for packet header")

    def detect_chip(self) -> str:
        from esptool.util import FatalError

        with esptool_errors():
            self._op("detect_chip")
            faults = self.device.faults
            if faults.silent:
                time.sleep(faults.silent_s)
                raise FatalError("Failed to connect to ESP32: No serial data received.")
            if faults.garbage or faults.flood:
                raise FatalError(
                    "Failed to connect to ESP32: Invalid head of packet (0x1B): Possible serial noise or corruption."
                )
            if faults.wrong_boot_mode:
                raise FatalError(
                    "Failed to connect to ESP32: Wrong boot mode detected (0x13)! "
                    "The chip needs to be in download mode."
                )
            self._synced = True
        return CHIP

    def run_stub(self) -> None:
        with esptool_errors():
            self._op("run_stub")
            self._stub = True

    def attach_flash(self) -> int:
        with esptool_errors():
            self._op("attach_flash")
        return self.device.flash.size

    def read_flash(self, offset: int, size: int) -> bytes:
        with esptool_errors():
            self._op("read_flash")
            return self.device.flash.read(offset, size)

    def write_flash(self, parts: Sequence[tuple[int, bytes]]) -> None:
        from esptool.util import FatalError

        with esptool_errors():
            self._op("write_flash")
            device = self.device
            faults = device.faults
            for offset, data in parts:
                if offset % SECTOR:
                    raise FatalError("Flash write address is not aligned to the sector size")
                erase = (len(data) + SECTOR - 1) // SECTOR * SECTOR
                device.flash.erase(offset, erase)
                for index, start in enumerate(range(0, len(data), BLOCK)):
                    block = data[start : start + BLOCK]
                    if faults.disconnect_mid_write and index == 1:
                        device.gone = True
                        import serial

                        raise serial.SerialException("write failed: [Errno 5] Input/output error")
                    for attempt in range(BLOCK_ATTEMPTS):
                        p = faults.corrupt + faults.lose
                        if not p or device.rng.random() >= p:
                            break
                        if attempt == BLOCK_ATTEMPTS - 1:
                            raise FatalError(
                                "Serial data stream stopped: Possible serial noise or corruption."
                            )
                    if faults.bad_store:
                        # A cell that does not program: the first byte that should get a 0 bit keeps it 1.
                        # (Erased bytes are not programmed at all, so an erase still "works".)
                        spot = next((i for i, b in enumerate(block) if b != 0xFF), None)
                        if spot is not None:
                            byte = block[spot]
                            stuck = byte | (~byte & (byte + 1) & 0xFF)  # its lowest 0 bit stays 1
                            block = block[:spot] + bytes([stuck]) + block[spot + 1 :]
                    device.flash.write(offset + start, block)

    def verify_flash(self, parts: Sequence[tuple[int, bytes]]) -> bool:
        with esptool_errors():
            self._op("verify_flash")
            # esptool compares the chip's MD5 of the region with the data's: nothing is read back.
            return all(
                hashlib.md5(self.device.flash.read(offset, len(data))).digest() == hashlib.md5(data).digest()
                for offset, data in parts
            )

    def read_mac(self) -> bytes:
        with esptool_errors():
            self._op("read_mac")
        return self.device.mac

    def reset(self) -> None:
        with esptool_errors():
            self._op("reset")
            self._synced = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.device.ops.append("close")
        with _DEVICES_LOCK:
            self.device.claimed = False


register_link_scheme(SCHEME, open_fake_link)


# ------------------------------------------------------------------------------------------- NVS reader

_PAGE = 4096
_ENTRY = 32
_ENTRIES = 126
_PAGE_EMPTY = 0xFFFFFFFF
_PAGE_ACTIVE = 0xFFFFFFFE
_PAGE_FULL = 0xFFFFFFFC
_TYPE_U8, _TYPE_SZ, _TYPE_BLOB, _TYPE_BLOB_DATA, _TYPE_BLOB_IDX = 0x01, 0x21, 0x41, 0x42, 0x48
_PRIMITIVES = {0x01: "<B", 0x11: "<b", 0x02: "<H", 0x12: "<h", 0x04: "<I", 0x14: "<i", 0x08: "<Q", 0x18: "<q"}


def _crc(data: bytes) -> int:
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def read_nvs(image: bytes) -> dict[tuple[str, str], bytes | int]:
    """Every entry of an NVS partition: {(namespace, key): value}. Strings keep their NUL; a blob is the
    concatenation of its chunks. Raises ValueError on a damaged page header, entry or data CRC."""
    if len(image) % _PAGE:
        raise ValueError("not a whole number of NVS pages")
    namespaces: dict[int, str] = {}
    raw: list[
        tuple[int, int, str, int, bytes | int, int, int]
    ] = []  # ns, type, key, chunk, value, size, start
    pages = []
    for page_no in range(len(image) // _PAGE):
        page = image[page_no * _PAGE : (page_no + 1) * _PAGE]
        state, seq = struct.unpack_from("<II", page, 0)
        if state == _PAGE_EMPTY:
            continue
        if state not in (_PAGE_ACTIVE, _PAGE_FULL):
            raise ValueError(f"page {page_no}: state {state:#x} is not active or full")
        if _crc(page[4:28]) != struct.unpack_from("<I", page, 28)[0]:
            raise ValueError(f"page {page_no}: header CRC mismatch")
        pages.append((seq, page_no, page))
    for _, page_no, page in sorted(pages):
        bitmap = page[32:64]
        i = 0
        while i < _ENTRIES:
            bits = (bitmap[i // 4] >> ((i % 4) * 2)) & 0b11
            if bits != 0b10:  # 11 empty, 00 erased: nothing written here
                i += 1
                continue
            entry = page[64 + i * _ENTRY : 64 + (i + 1) * _ENTRY]
            ns, etype, span, chunk = entry[0], entry[1], entry[2], entry[3]
            if _crc(entry[0:4] + entry[8:32]) != struct.unpack_from("<I", entry, 4)[0]:
                raise ValueError(f"page {page_no} entry {i}: CRC mismatch")
            key = entry[8:24].split(b"\x00", 1)[0].decode("ascii")
            if span < 1 or i + span > _ENTRIES:
                raise ValueError(f"page {page_no} entry {i}: bad span")
            if etype in (_TYPE_SZ, _TYPE_BLOB, _TYPE_BLOB_DATA):
                size, _, data_crc = struct.unpack_from("<HHI", entry, 24)
                start = 64 + (i + 1) * _ENTRY
                data = page[start : start + size]
                if len(data) != size or _crc(data) != data_crc:
                    raise ValueError(f"page {page_no} entry {i}: data CRC mismatch")
                raw.append((ns, etype, key, chunk, data, size, 0))
            elif etype == _TYPE_BLOB_IDX:
                size, count, start_chunk = struct.unpack_from("<IBB", entry, 24)
                raw.append((ns, etype, key, count, b"", size, start_chunk))
            elif etype in _PRIMITIVES:
                value = struct.unpack_from(_PRIMITIVES[etype], entry, 24)[0]
                if ns == 0:
                    namespaces[value] = key
                else:
                    raw.append((ns, etype, key, chunk, value, 0, 0))
            else:
                raise ValueError(f"page {page_no} entry {i}: unknown type {etype:#x}")
            i += span
    out: dict[tuple[str, str], bytes | int] = {}
    chunks: dict[tuple[int, str], dict[int, bytes]] = {}
    for ns, etype, key, chunk, value, _size, _start in raw:
        if etype == _TYPE_BLOB_DATA:
            assert isinstance(value, bytes)
            chunks.setdefault((ns, key), {})[chunk] = value
    for ns, etype, key, chunk, value, size, start in raw:
        if ns not in namespaces:
            raise ValueError(f"entry {key!r} is in an unknown namespace {ns}")
        name = (namespaces[ns], key)
        if etype == _TYPE_BLOB_IDX:
            parts = chunks.get((ns, key), {})
            data = b"".join(parts.get(start + n, b"") for n in range(chunk))
            if len(data) != size:
                raise ValueError(f"blob {key!r}: {len(data)} of {size} bytes")
            out[name] = data
        elif etype != _TYPE_BLOB_DATA:
            out[name] = value
    return out
