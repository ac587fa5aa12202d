"""An ESP32 in its serial download mode, simulated on a real pty: the ROM loader's SLIP protocol, for unmodified esptool.

`Esp32RomDevice` is a device model for `flashers.simulators.pty.PtyDevice` that speaks what the ESP32's ROM
bootloader speaks on UART0 (esptool's documentation, "Serial Protocol"; request/response layout checked against
esptool's own loader): SLIP frames (0xC0 delimiters, 0xDB 0xDC / 0xDB 0xDD escapes), a request
`<BBHI` (0x00, command, length, checksum) + data, a response `<BBHI` (0x01, command, length, value) + data ending
in status bytes (4 from the ROM: status, error, 0, 0; an error is status 1 + an error code).

Commands served: SYNC (answered 8 times, as the ROM does), READ_REG / WRITE_REG over a small register file (the
chip-detect magic 0x00F01D83 at 0x40001000, eFuses giving an ESP32-D0WD-V3 rev v3.1 and the unit's MAC, the UART
clock divider for a 40 MHz crystal, and the SPI0 "user command" registers, through which esptool reads the flash
ID (RDID → a 4 MB flash) and status), SPI_ATTACH, SPI_SET_PARAMS, FLASH_BEGIN/DATA/END (erase first, 0x400-byte
blocks with the ROM's XOR checksum checked), FLASH_DEFL_BEGIN/DATA/END (zlib stream), SPI_FLASH_MD5 (32 hex
digits from the ROM, 16 raw bytes from the stub), READ_FLASH_SLOW (64-byte blocks), CHANGE_BAUDRATE, and the
RAM upload MEM_BEGIN/DATA/END. After MEM_END with an entry point it behaves as esptool's flasher stub would
(greets with "OHAI", SYNC value 0, READ_FLASH streamed in sectors with the host's acknowledgements and an MD5
trailer, ERASE_REGION / ERASE_FLASH): the uploaded code is not run, only the stub's protocol is served. Any other
command is refused with error 0x05 (invalid message), as the ROM refuses GET_SECURITY_INFO.

The flash is a 4 MB file `esp32-<MAC>.bin` under the state dir (NOR semantics: a write only clears bits; erase
sets 0xFF per 4 KB sector), starting with a partition table at 0x8000 and an application image like a unit with
the product's firmware. A pty has no DTR/RTS lines: the chip is "already in download mode", so esptool needs
`--before no-reset` (and `--after no-reset`, since the hard reset toggles RTS), and the station's ESP32 family
`connect_mode = "no-reset"` and `reset_after = false`.

Faults (`Faults`, `station sim esp32 --fault`): silent (never answers), bad_store (the flash keeps a damaged copy
of every block, so MD5 checks fail), disconnect_on_write=N (drops off the line at the Nth flash data block).

A simulator for tests, the demo and training: nothing in the station's core may import it. eFuses are read-only
here; no command burns one.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flashers.esp32 import DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE, DEFAULT_PARTITION_TABLE_OFFSET
from flashers.simulators._common import parse_faults
from flashers.simulators.esp32 import APP_OFFSET, app_image, partition_table
from flashers.simulators.pty import Link

FLASH_SIZE: Final = 4 * 1024 * 1024
SECTOR: Final = 0x1000
FLASH_ID: Final = 0x1640EF  # JEDEC RDID: Winbond (0xEF), 0x40, capacity 0x16 = 4 MB
MAGIC_ADDR: Final = 0x40001000
ESP32_MAGIC: Final = 0x00F01D83
EFUSE_BASE: Final = 0x3FF5A000
APB_CTL_DATE: Final = 0x3FF6607C
UART_CLKDIV: Final = 0x3FF40014
RTCCALICFG1: Final = 0x3FF5F06C
SPI_BASE: Final = 0x3FF42000
SPI_CMD_USR: Final = 1 << 18
XTAL_HZ: Final = 40_000_000
READ_SLOW_BLOCK: Final = 64
MAX_FRAME: Final = 0x10000  # longer "frames" are noise, not requests

SYNC, READ_REG, WRITE_REG = 0x08, 0x0A, 0x09
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END, SPI_FLASH_MD5 = 0x10, 0x11, 0x12, 0x13
ERASE_FLASH, ERASE_REGION, READ_FLASH = 0xD0, 0xD1, 0xD2

ERR_INVALID_MESSAGE: Final = 0x05
ERR_BAD_DATA_LEN: Final = 0xC0
ERR_BAD_DATA_CHECKSUM: Final = 0xC1
ERR_BAD_BLOCKSIZE: Final = 0xC2
ERR_FAILED_SPI_OP: Final = 0xC5
ERR_NOT_IN_FLASH_MODE: Final = 0xC7
ERR_INFLATE: Final = 0xC8


@dataclass
class Faults:
    """What goes wrong on this unit; False/None means never."""

    silent: bool = False
    bad_store: bool = False
    disconnect_on_write: int | None = None  # drop off the line at this flash data block (1 = the first)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> Faults:
        """From `NAME[=VALUE]` strings, e.g. `silent`, `bad_store`, `disconnect_on_write=3`."""
        return parse_faults(cls, specs, ranges={"disconnect_on_write": (1, None)})


def slip_encode(frame: bytes) -> bytes:
    return b"\xc0" + frame.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def slip_decode(body: bytes) -> bytes:
    return body.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")


def flash_file(state_dir: str | os.PathLike[str], mac: bytes) -> Path:
    return Path(state_dir) / f"esp32-{mac.hex().upper()}.bin"


class FlashFile:
    """The unit's SPI NOR flash as a file of `size` bytes (erased = 0xFF). Thread-safe."""

    def __init__(self, path: Path, size: int = FLASH_SIZE) -> None:
        self.path = path
        self.size = size
        self._lock = threading.Lock()
        self.created = not path.exists()
        if self.created:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as out:
                out.write(b"\xff" * size)
        elif path.stat().st_size != size:
            raise ValueError(f"{path} is not a {size // (1024 * 1024)} MB flash image")

    def read(self, offset: int, size: int) -> bytes:
        self._check(offset, size)
        with self._lock, open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def program(self, offset: int, data: bytes) -> None:
        """NOR programming: bits only go from 1 to 0 (an unerased write ANDs into what is there)."""
        self._check(offset, len(data))
        with self._lock, open(self.path, "r+b") as f:
            f.seek(offset)
            old = f.read(len(data))
            f.seek(offset)
            f.write(bytes(a & b for a, b in zip(old, data, strict=True)))

    def erase(self, offset: int, size: int) -> None:
        """Erase every 4 KB sector touching [offset, offset + size)."""
        start = offset - offset % SECTOR
        end = min(self.size, -(-(offset + size) // SECTOR) * SECTOR)
        self._check(start, end - start)
        with self._lock, open(self.path, "r+b") as f:
            f.seek(start)
            f.write(b"\xff" * (end - start))

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError("outside the flash")


class Esp32RomDevice:
    """The ESP32 ROM loader (and, after a RAM upload, the stub's protocol) over one pty."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        mac: bytes | None = None,
        faults: Faults | None = None,
        nvs_offset: int = DEFAULT_NVS_OFFSET,
        nvs_size: int = DEFAULT_NVS_SIZE,
        nvs_label: str = "nvs",
        project: str = "station-demo",
        version: str = "1.4.2",
        esp_secure_cert: bool = False,
    ) -> None:
        self.mac = mac if mac is not None else bytes([0x24, 0x0A, 0xC4]) + os.urandom(3)
        if len(self.mac) != 6:
            raise ValueError("a MAC address is 6 bytes")
        self.faults = faults or Faults()
        self.nvs_offset, self.nvs_size = nvs_offset, nvs_size if not esp_secure_cert else 0xD000 - nvs_offset
        self.flash = FlashFile(flash_file(state_dir, self.mac))
        if self.flash.created:  # a new unit: the product's firmware is on it
            entries = [
                (nvs_label, 1, 2, nvs_offset, nvs_size),
                ("phy_init", 1, 1, nvs_offset + nvs_size, 0x1000),
                ("factory", 0, 0, APP_OFFSET, 0x100000),
            ]
            if esp_secure_cert:  # esp_secure_cert_mgr's layout: the TLV partition at 0xD000, NVS before it
                entries[0:2] = [
                    (nvs_label, 1, 2, nvs_offset, 0xD000 - nvs_offset),
                    ("esp_secure_cert", 0x3F, 0, 0xD000, 0x2000),
                    ("phy_init", 1, 1, 0xF000, 0x1000),
                ]
            self.flash.program(DEFAULT_PARTITION_TABLE_OFFSET, partition_table(entries))
            self.flash.program(APP_OFFSET, app_image(project, version))
        self._rx = bytearray()
        self._stub = False
        self._baud = 115200
        self._regs: dict[int, int] = {}
        self._write: dict[str, Any] | None = None  # the flash write in progress (FLASH_BEGIN / DEFL_BEGIN)
        self._reading: dict[str, Any] | None = None  # the stub's READ_FLASH stream in progress
        self._blocks_written = 0
        self._rng = random.Random(0)
        self.commands: list[int] = []  # command codes in order of arrival (for tests)

    @property
    def device_id(self) -> str:
        return self.mac.hex().upper()

    @property
    def flash_path(self) -> Path:
        return self.flash.path

    def live(self, layout: Any = None) -> dict[str, str | None]:
        """The credentials the firmware would read from its NVS partition now (None where missing/damaged)."""
        from flashers.esp32 import NvsLayout
        from flashers.simulators.esp32 import read_nvs

        layout = layout or NvsLayout()
        try:
            entries = read_nvs(self.flash.read(self.nvs_offset, self.nvs_size))
        except ValueError:
            return {"cert": None, "key": None, "ca": None}
        out: dict[str, str | None] = {}
        for slot, key in (("cert", layout.cert_key), ("key", layout.key_key), ("ca", layout.ca_key)):
            value = entries.get((layout.namespace, key))
            out[slot] = value.rstrip(b"\x00").decode("ascii", "replace") if isinstance(value, bytes) else None
        return out

    # ---------------------------------------------------------------------------------------- registers
    def _read_reg(self, addr: int) -> int:
        mac = self.mac
        fixed = {
            MAGIC_ADDR: ESP32_MAGIC,
            EFUSE_BASE + 4: int.from_bytes(mac[2:6], "big"),  # MAC bytes 2..5
            EFUSE_BASE + 8: (mac[0] << 8) | mac[1],  # MAC bytes 0..1 (CRC byte left 0)
            EFUSE_BASE + 12: (1 << 9) | (1 << 15),  # package D0WD, revision bit 0
            EFUSE_BASE + 16: 128,  # 8 MHz clock calibration, for the ROM's crystal estimate
            EFUSE_BASE + 20: (1 << 20) | (1 << 24),  # revision bit 1, minor revision 1
            APB_CTL_DATE: 1 << 31,  # revision bit 2 → v3
            UART_CLKDIV: XTAL_HZ // self._baud,
            RTCCALICFG1: 800 << 7,  # with the 8 MHz calibration above: a 40 MHz crystal
        }
        if addr in fixed:
            return fixed[addr]
        return self._regs.get(addr, 0)

    def _write_reg(self, addr: int, value: int, mask: int) -> None:
        old = self._regs.get(addr, 0)
        self._regs[addr] = (old & ~mask) | (value & mask)
        if addr == SPI_BASE and value & SPI_CMD_USR:
            self._spi_user_command()

    def _spi_user_command(self) -> None:
        """esptool's run_spiflash_command: the opcode is in SPI_USR2's low byte, the answer goes to SPI_W0."""
        opcode = self._regs.get(SPI_BASE + 0x24, 0) & 0xFF
        answer = {0x9F: FLASH_ID}.get(opcode, 0)  # RDID; status registers (0x05, 0x35, …) read 0
        self._regs[SPI_BASE + 0x80] = answer
        self._regs[SPI_BASE] = 0  # the user command is done

    # ---------------------------------------------------------------------------------------------- line
    def on_receive(self, data: bytes, link: Link) -> None:
        self._rx += data
        while True:
            start = self._rx.find(b"\xc0")
            if start < 0:
                self._rx.clear()
                return
            end = self._rx.find(b"\xc0", start + 1)
            if end < 0:
                del self._rx[:start]
                if len(self._rx) > 2 * MAX_FRAME:
                    self._rx.clear()
                return
            body = bytes(self._rx[start + 1 : end])
            del self._rx[:end]  # the closing 0xC0 may open the next frame
            if not body:
                continue
            self._frame(slip_decode(body), link)

    def _frame(self, frame: bytes, link: Link) -> None:
        if len(frame) == 4 and self._reading is not None:
            self._read_ack(struct.unpack("<I", frame)[0], link)
            return
        if len(frame) < 8 or frame[0] != 0x00:
            return  # not a request (noise): the ROM ignores it
        _, op, size, checksum = struct.unpack("<BBHI", frame[:8])
        data = frame[8:]
        self.commands.append(op)
        if self.faults.silent:
            return
        if len(data) != size:
            self._reply(link, op, error=ERR_BAD_DATA_LEN)
            return
        handler = getattr(self, f"_op_{op:02x}", None)
        if handler is None:
            self._reply(link, op, error=ERR_INVALID_MESSAGE)
            return
        handler(op, data, checksum, link)

    def _reply(self, link: Link, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        status = bytes([1, error]) if error else b"\x00\x00"
        body = data + status + (b"" if self._stub else b"\x00\x00")
        link.send(slip_encode(struct.pack("<BBHI", 0x01, op, len(body), value) + body))

    # ---------------------------------------------------------------------------------------- commands
    def _op_08(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # SYNC
        if data[:4] != b"\x07\x07\x12\x20":
            self._reply(link, op, error=ERR_INVALID_MESSAGE)
            return
        for _ in range(8):  # esptool reads 8 answers; a value of 0 tells it the stub is already running
            self._reply(link, op, value=0 if self._stub else 0x20120707)

    def _op_0a(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # READ_REG
        (addr,) = struct.unpack("<I", data[:4])
        self._reply(link, op, value=self._read_reg(addr))

    def _op_09(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # WRITE_REG
        for i in range(0, len(data) - 15, 16):
            addr, value, mask, _delay = struct.unpack("<IIII", data[i : i + 16])
            self._write_reg(addr, value, mask)
        self._reply(link, op)

    def _op_0d(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # SPI_ATTACH
        self._reply(link, op)

    def _op_0b(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # SPI_SET_PARAMS
        if len(data) != 24:
            self._reply(link, op, error=ERR_BAD_DATA_LEN)
            return
        self._reply(link, op)

    def _op_0f(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # CHANGE_BAUDRATE
        new_baud, _old = struct.unpack("<II", data[:8])
        self._reply(link, op)
        if new_baud:
            self._baud = (
                new_baud  # a pty ignores baud; the UART divider follows it for esptool's crystal check
            )

    def _op_05(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # MEM_BEGIN
        self._reply(link, op)

    def _op_07(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # MEM_DATA
        if self.checksum(data[16:]) != checksum:
            self._reply(link, op, error=ERR_BAD_DATA_CHECKSUM)
            return
        self._reply(link, op)

    def _op_06(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # MEM_END
        no_entry, entry = struct.unpack("<II", data[:8])
        self._reply(link, op)
        if not no_entry and entry:
            self._stub = True  # esptool's flasher stub "runs": serve its protocol from now on
            link.send(slip_encode(b"OHAI"))

    def _op_02(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # FLASH_BEGIN
        self._begin(op, data, link, compressed=False)

    def _op_10(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # FLASH_DEFL_BEGIN
        self._begin(op, data, link, compressed=True)

    def _begin(self, op: int, data: bytes, link: Link, *, compressed: bool) -> None:
        if len(data) < 16:
            self._reply(link, op, error=ERR_BAD_DATA_LEN)
            return
        erase_size, _blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        if block_size == 0 or offset % SECTOR or offset + erase_size > self.flash.size:
            self._reply(link, op, error=ERR_BAD_BLOCKSIZE if block_size == 0 else ERR_FAILED_SPI_OP)
            return
        if erase_size:
            self.flash.erase(offset, erase_size)  # ROM and stub both leave the region erased before data
        self._write = {
            "offset": offset,
            "position": offset,
            "block_size": block_size,
            "next_seq": 0,
            "inflate": zlib.decompressobj() if compressed else None,
        }
        self._reply(link, op)

    def _op_03(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # FLASH_DATA
        self._data(op, data, checksum, link)

    def _op_11(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # FLASH_DEFL_DATA
        self._data(op, data, checksum, link)

    def _data(self, op: int, data: bytes, checksum: int, link: Link) -> None:
        write = self._write
        if write is None:
            self._reply(link, op, error=ERR_NOT_IN_FLASH_MODE)
            return
        size, seq = struct.unpack("<II", data[:8])
        payload = data[16:]
        if len(payload) != size:
            self._reply(link, op, error=ERR_BAD_DATA_LEN)
            return
        if self.checksum(payload) != checksum:
            self._reply(link, op, error=ERR_BAD_DATA_CHECKSUM)
            return
        self._blocks_written += 1
        if self.faults.disconnect_on_write and self._blocks_written >= self.faults.disconnect_on_write:
            link.disconnect()  # power lost mid-write: whatever reached the flash stays there
            return
        if seq != write["next_seq"]:
            if seq == write["next_seq"] - 1:  # a retried block whose answer was lost: already written
                self._reply(link, op)
                return
            self._reply(link, op, error=ERR_INVALID_MESSAGE)
            return
        if write["inflate"] is not None:
            try:
                chunk = write["inflate"].decompress(payload)
            except zlib.error:
                self._reply(link, op, error=ERR_INFLATE)
                return
        else:
            chunk = payload
        if self.faults.bad_store and chunk:
            damaged = bytearray(chunk)
            damaged[self._rng.randrange(len(damaged))] ^= 0x01
            chunk = bytes(damaged)
        if write["position"] + len(chunk) > self.flash.size:
            self._reply(link, op, error=ERR_FAILED_SPI_OP)
            return
        self.flash.program(write["position"], chunk)
        write["position"] += len(chunk)
        write["next_seq"] += 1
        self._reply(link, op)

    def _op_04(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # FLASH_END
        self._write = None
        self._reply(link, op)
        if self._stub and data[:4] == b"\x00\x00\x00\x00":
            self._stub = False  # the stub's "reboot": the ROM loader is back (esptool's --after no-reset)

    def _op_12(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # FLASH_DEFL_END
        self._write = None
        self._reply(link, op)

    def _op_13(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # SPI_FLASH_MD5
        offset, size = struct.unpack("<II", data[:8])
        try:
            digest = hashlib.md5(self.flash.read(offset, size)).digest()
        except ValueError:
            self._reply(link, op, error=ERR_FAILED_SPI_OP)
            return
        self._reply(link, op, data=digest if self._stub else digest.hex().encode("ascii"))

    def _op_0e(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # READ_FLASH_SLOW (ROM)
        offset, size = struct.unpack("<II", data[:8])
        if self._stub or size > READ_SLOW_BLOCK:
            self._reply(link, op, error=ERR_INVALID_MESSAGE)
            return
        try:
            block = self.flash.read(offset, size)
        except ValueError:
            self._reply(link, op, error=ERR_FAILED_SPI_OP)
            return
        self._reply(link, op, data=block.ljust(READ_SLOW_BLOCK, b"\xff"))

    def _op_d2(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # READ_FLASH (stub)
        if not self._stub:
            self._reply(link, op, error=ERR_INVALID_MESSAGE)
            return
        offset, size, packet, in_flight = struct.unpack("<IIII", data[:16])
        try:
            content = self.flash.read(offset, size)
        except ValueError:
            self._reply(link, op, error=ERR_FAILED_SPI_OP)
            return
        self._reply(link, op)
        # The stub streams packet-sized pieces, at most `in_flight` ahead of the host's acknowledgements (each a
        # 4-byte total of what it has received); once everything is acknowledged, a 16-byte MD5 closes it.
        packet = max(1, packet)
        self._reading = {"content": content, "packet": packet, "sent": 0, "in_flight": max(1, in_flight)}
        if not content:
            self._read_ack(0, link)  # nothing to stream: the digest at once
            return
        self._read_pump(link, acked=0)

    def _read_pump(self, link: Link, *, acked: int) -> None:
        reading = self._reading
        assert reading is not None
        content, packet = reading["content"], reading["packet"]
        while reading["sent"] < len(content) and reading["sent"] - acked < reading["in_flight"] * packet:
            start = reading["sent"]
            link.send(slip_encode(content[start : start + packet]))
            reading["sent"] = min(len(content), start + packet)

    def _read_ack(self, acked: int, link: Link) -> None:
        reading = self._reading
        assert reading is not None
        if acked >= len(reading["content"]):
            self._reading = None
            link.send(slip_encode(hashlib.md5(reading["content"]).digest()))
            return
        self._read_pump(link, acked=acked)

    def _op_d1(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # ERASE_REGION (stub)
        offset, size = struct.unpack("<II", data[:8])
        if not self._stub or offset % SECTOR or size % SECTOR:
            self._reply(link, op, error=ERR_INVALID_MESSAGE if not self._stub else ERR_FAILED_SPI_OP)
            return
        self.flash.erase(offset, size)
        self._reply(link, op)

    def _op_d0(self, op: int, data: bytes, checksum: int, link: Link) -> None:  # ERASE_FLASH (stub)
        if not self._stub:
            self._reply(link, op, error=ERR_INVALID_MESSAGE)
            return
        self.flash.erase(0, self.flash.size)
        self._reply(link, op)

    @staticmethod
    def checksum(data: bytes) -> int:
        state = 0xEF
        for byte in data:
            state ^= byte
        return state


# ----------------------------------------------------------------------------------------------------------
# `station sim esp32`


def add_sim_arguments(parser: Any) -> None:
    """The options of `station sim esp32` (the command itself lives in station.commands.sim)."""
    parser.add_argument(
        "--state-dir", default="sim-state", help="where the unit's flash image lives (default ./sim-state)"
    )
    parser.add_argument("--mac", help="the unit's base MAC, 12 hex digits (default: a new random one)")
    parser.add_argument(
        "--baud", type=int, default=115200, help="baud rate to pace the line at (default 115200)"
    )
    parser.add_argument("--no-pace", action="store_true", help="answer at pty speed instead of wire speed")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="inject a fault (repeatable): silent bad_store disconnect_on_write=N",
    )


def build_sim(args: Any) -> tuple[Any, str]:
    """(PtyDevice, flash file) for `station sim esp32`; ValueError/OSError for unusable options."""
    from flashers.simulators.pty import PtyDevice

    if args.baud <= 0:
        raise ValueError(f"{args.baud} is not a baud rate")
    mac = None
    if args.mac:
        text = args.mac.replace(":", "").replace("-", "")
        if len(text) != 12:
            raise ValueError(f"{args.mac} is not a MAC address (12 hex digits)")
        mac = bytes.fromhex(text)
    model = Esp32RomDevice(args.state_dir, mac=mac, faults=Faults.parse(args.fault))
    return PtyDevice(model, baudrate=args.baud, pace=not args.no_pace), str(model.flash_path)
