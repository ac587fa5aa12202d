"""ESP32: the unit's certificate and key go into an NVS partition image that esptool writes and verifies.

There is no provisioning protocol on this family: the station builds the unit's NVS partition image in memory
with Espressif's generator (PyPI `esp-idf-nvs-partition-gen`) and writes it with esptool's Python API
(esptool 5) at the offset of the product's NVS partition, then proves it with `verify_flash`. The unit's
firmware reads the entries with `nvs_get_str` (or `nvs_get_blob` with `nvs_encoding = "binary"`).

The image is what the generator makes from this CSV (`nvs_csv` renders it; the generator's rules: a header
`key,type,encoding,value`, a namespace row first, keys of at most 15 characters, PEM as `file,string`)::

    key,type,encoding,value
    aws_iot,namespace,,
    certificate,file,string,<certificate PEM>
    private_key,file,string,<private key PEM>
    root_ca,file,string,<server CA PEM>          (when a CA is given)

Private keys never reach the station's disk: the generator's CLI reads `file` rows from files, so the station
calls its Python API instead (`nvs_open` on an `io.BytesIO`, `write_entry(..., "data", <encoding>, <text>)`,
`nvs_close`) with the file contents it holds in memory. That is the generator's own code path for a `file`
row once the file is read (its `write_entry` reads the file, then writes the same entry); a test proves the
bytes equal the CLI's output for the same CSV and files.

Writing goes through a narrow interface, `Esp32Link` (detect_chip → run_stub → attach_flash → read_flash →
write_flash → verify_flash → read_mac → reset), implemented over esptool's public API by `EsptoolLink`.
The unit id is the base MAC (12 upper-case hex digits, the label format). Before the first write the station
reads the unit's partition table (at `partition_table_offset`) and refuses to write unless it has a data/nvs
partition at exactly `nvs_offset` / `nvs_size` (and named `nvs_partition`, if given): an offset that is wrong
for this firmware would overwrite the application. The firmware version comes from the app image's
`esp_app_desc_t`. Use a partition of its own for credentials (e.g. `nvs_certs`): the image replaces the whole
partition.

Proof: `verify_flash` without `diff`, so esptool asks the chip for the MD5 of the written region and compares it
with the image's; the key region is never read back over the wire. A mismatch is written once more; a second
mismatch erases the partition (no half-credentials for the firmware to try) and is a `ProofMismatch`. A flash
write is not atomic: a unit that drops off the line mid-write has a damaged partition and must be provisioned
again (the operator is told so). `wipe()` writes the partition erased (all 0xFF, which NVS reads as empty) if
this session wrote it. The chip is hard-reset into its application on `close()` after a write.

eFuses are never touched: the interface has no eFuse operation, this module never imports espefuse, and no
esptool call here can burn one (flash encryption and secure boot keys are out of scope: they are irreversible).

Testing: the unmodified esptool runs against `flashers.simulators.esp32rom` (the ROM loader's and the flasher
stub's SLIP protocol on a real pty, flash image in a file), and this family provisions through it with
`connect_mode = "no-reset"` and `reset_after = false`: a pty has no DTR/RTS lines, so nothing there can reset a
chip into download mode or back into its application (on hardware keep the defaults). Fault tests that need
many failure shapes also drive `Esp32Flasher` through a fake `Esp32Link` with an in-memory flash
(`flashers.simulators.esp32`, port URLs `esp32sim://<name>`); images are parsed back with
`flashers.simulators.esp32.read_nvs`.

This module must not import boto3 or awscrt, write a key to disk, or put key text in a message or log.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from flashers.base import (
    PROOF_DEVICE_HASH,
    PROOF_READ_BACK,
    Capabilities,
    DeviceDisconnected,
    DeviceGarbage,
    DeviceInfo,
    DeviceNotAnswering,
    DeviceRejected,
    Flasher,
    ObjectProof,
    ProofMismatch,
    WriteProof,
)
from flashers.serialio import open_port
from station.errors import StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.model import Identity

SECTOR: Final = 0x1000
DEFAULT_NVS_OFFSET: Final = 0x9000
DEFAULT_NVS_SIZE: Final = 0x6000
DEFAULT_PARTITION_TABLE_OFFSET: Final = 0x8000
PARTITION_TABLE_SIZE: Final = 0xC00
NVS_PAGE: Final = 4096
NVS_MIN_SIZE: Final = 0x3000  # the generator's minimum for a read/write NVS partition
NVS_KEY_MAX: Final = 15
ROM_BAUD: Final = 115200

PART_TYPE_APP: Final = 0x00
PART_TYPE_DATA: Final = 0x01
PART_SUBTYPE_NVS: Final = 0x02
_PART_MAGIC: Final = b"\xaa\x50"
_MD5_MAGIC: Final = b"\xeb\xeb"
_APP_DESC_MAGIC: Final = 0xABCD5432
_IMAGE_MAGIC: Final = 0xE9
APP_HEADER_READ: Final = 0x20 + 256  # image header + first segment header + esp_app_desc_t

_KEY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,14}")
_RESEAT = N_(
    "Reseat the unit in the jig, check its power, and try again; if it fails again, put it in the rework bin."
)


# ----------------------------------------------------------------------------------------------- NVS image


@dataclass(frozen=True)
class NvsRow:
    """One CSV row. For a `file` row, `value` is the file's content (held in memory), `source` its name."""

    key: str
    type: str  # "namespace" | "file" | "data"
    encoding: str = ""
    value: str = ""
    source: str = ""


@dataclass(frozen=True)
class NvsLayout:
    """Where the firmware looks for its credentials: the namespace and the key of each object."""

    namespace: str = "aws_iot"
    cert_key: str = "certificate"
    key_key: str = "private_key"
    ca_key: str = "root_ca"
    encoding: str = "string"  # "string" (nvs_get_str, ≤ 4000 bytes) or "binary" (nvs_get_blob, multi-page)

    def check(self) -> None:
        names = (self.namespace, self.cert_key, self.key_key, self.ca_key)
        for name in names:
            # The generator gives keys starting ap./sta. Wi-Fi side effects; NVS keys are at most 15 bytes.
            if not _KEY_NAME.fullmatch(name) or name.startswith(("ap.", "sta.")):
                raise StationFault(
                    _("Bad NVS layout"),
                    _(
                        "NVS name {name!r} is not usable: 1–15 letters, digits or _ . - (not ap./sta.)."
                    ).format(name=name),
                    _("Call a technician to fix nvs_namespace / nvs_*_key in the product's options."),
                )
        if len(set(names[1:])) != 3:
            raise StationFault(
                _("Bad NVS layout"),
                _("The certificate, key and CA need three different NVS keys."),
                _("Call a technician to fix nvs_*_key in the product's options."),
            )
        if self.encoding not in ("string", "binary"):
            raise StationFault(
                _("Bad NVS layout"),
                _("NVS encoding {encoding!r} is not string or binary.").format(encoding=self.encoding),
                _("Call a technician to fix nvs_encoding in the product's options."),
            )

    def rows(self, cert_pem: str, key_pem: str, ca_pem: str | None = None) -> list[NvsRow]:
        rows = [
            NvsRow(self.namespace, "namespace"),
            NvsRow(self.cert_key, "file", self.encoding, cert_pem, "certificate.pem"),
            NvsRow(self.key_key, "file", self.encoding, key_pem, "private_key.pem"),
        ]
        if ca_pem:
            rows.append(NvsRow(self.ca_key, "file", self.encoding, ca_pem, "root_ca.pem"))
        return rows


def nvs_csv(rows: Sequence[NvsRow], paths: dict[str, str] | None = None) -> str:
    """The generator's CSV for `rows`; a `file` row names `paths[key]` (default: its source name), never its
    content. For documentation and the equivalence test: the station itself never writes these files."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "type", "encoding", "value"])
    for row in rows:
        if row.type == "namespace":
            writer.writerow([row.key, "namespace", "", ""])
        elif row.type == "file":
            writer.writerow([row.key, "file", row.encoding, (paths or {}).get(row.key, row.source)])
        else:
            writer.writerow([row.key, row.type, row.encoding, row.value])
    return out.getvalue()


# ------------------------------------------------------------------------------------ esp_secure_cert (TLV)

IDENTITY_FORMATS: Final = ("nvs", "esp_secure_cert")
# esp_secure_cert variants that keep the key in the DS peripheral or derive it from an eFuse key: burning that
# eFuse is irreversible, so the station refuses them instead of ever doing it.
REFUSED_FORMATS: Final = (
    "esp_secure_cert_ds",
    "esp_secure_cert_rsa_ds",
    "esp_secure_cert_ecdsa_peripheral",
    "esp_secure_cert_hmac",
    "esp_secure_cert_hmac_ecdsa",
)
SECURE_CERT_SIZE: Final = 0x2000  # esp-secure-cert-tool's partition size
DEFAULT_SECURE_CERT_OFFSET: Final = 0xD000  # esp_secure_cert_mgr's example partition tables
PART_TYPE_SECURE_CERT: Final = 0x3F  # esp_secure_cert partition: type 0x3F, subtype 0
TLV_MAGIC: Final = 0xBA5EBA11
TLV_CA_CERT: Final = 0
TLV_DEV_CERT: Final = 1
TLV_PRIV_KEY: Final = 2
_TLV_ALIGN: Final = 16


def secure_cert_tlv(tlv_type: int, data: bytes, flags: int = 0) -> bytes:
    """One TLV of the esp_secure_cert format (esp_secure_cert_mgr's `esp_secure_cert_tlv_header_t` / footer):
    magic 0xBA5EBA11, flags (u32), type (u16), length (u16), the data padded with zeros to 16 bytes, then the
    CRC-32 of all of that (zlib's, seed 0xFFFFFFFF, as esp-secure-cert-tool writes it)."""
    import zlib

    tlv = struct.pack("<IIHH", TLV_MAGIC, flags, tlv_type, len(data)) + data
    tlv += b"\x00" * (-len(data) % _TLV_ALIGN)
    return tlv + struct.pack("<I", zlib.crc32(tlv, 0xFFFFFFFF))


def build_secure_cert_image(
    cert_pem: str, key_pem: str, ca_pem: str | None = None, size: int = SECURE_CERT_SIZE
) -> bytes:
    """The esp_secure_cert partition for a plain (not DS / not eFuse-protected) key, in memory.

    The same TLVs in the same order as esp-secure-cert-tool's `generate_partition_no_ds`: device certificate,
    CA certificate (if any), private key; PEM texts NUL-terminated, the key in "traditional" PEM as the tool
    re-encodes it; the rest of the partition erased (0xFF). The tool itself is not called: it reads the key from
    a file (the station never writes a key to disk) and prints to stdout.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii")).public_bytes(serialization.Encoding.PEM)
    key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    tlvs = secure_cert_tlv(TLV_DEV_CERT, cert + b"\x00")
    if ca_pem:
        ca = x509.load_pem_x509_certificate(ca_pem.encode("ascii")).public_bytes(serialization.Encoding.PEM)
        tlvs += secure_cert_tlv(TLV_CA_CERT, ca + b"\x00")
    tlvs += secure_cert_tlv(TLV_PRIV_KEY, key + b"\x00")
    if len(tlvs) > size:
        raise StationFault(
            _("Credentials do not fit"),
            _(
                "The certificate, CA and key take {count} bytes; the esp_secure_cert partition has {size}."
            ).format(count=len(tlvs), size=size),
            _(
                "Call a technician: use an EC key or a shorter CA chain, or a bigger esp_secure_cert partition."
            ),
        )
    return tlvs + b"\xff" * (size - len(tlvs))


def parse_secure_cert(image: bytes) -> dict[int, bytes]:
    """TLV type → data of an esp_secure_cert partition, checking magic and CRC the way esp_secure_cert_mgr does;
    ValueError for a damaged TLV. Stops at the first erased (0xFF) header."""
    import zlib

    found: dict[int, bytes] = {}
    offset = 0
    while offset + 12 <= len(image):
        magic, _flags, tlv_type, length = struct.unpack_from("<IIHH", image, offset)
        if magic != TLV_MAGIC:
            break
        end = offset + 12 + length + (-length % _TLV_ALIGN)
        if end + 4 > len(image):
            raise ValueError(f"TLV at {offset:#x} runs past the partition")
        (crc,) = struct.unpack_from("<I", image, end)
        if zlib.crc32(image[offset:end], 0xFFFFFFFF) != crc:
            raise ValueError(f"TLV at {offset:#x} fails its CRC")
        found[tlv_type] = image[offset + 12 : offset + 12 + length]
        offset = end + 4
    return found


def check_nvs_size(size: int) -> None:
    if size % NVS_PAGE or size < NVS_MIN_SIZE:
        raise StationFault(
            _("Bad NVS partition size"),
            _(
                "An NVS partition of {size:#x} bytes cannot be generated: it must be a multiple of 0x1000 and "
                "at least {NVS_MIN_SIZE:#x}."
            ).format(size=size, NVS_MIN_SIZE=NVS_MIN_SIZE),
            _("Call a technician to fix nvs_size in the product's options (from the partition table)."),
        )


def build_nvs_image(rows: Sequence[NvsRow], size: int) -> bytes:
    """The NVS partition image (NVS format version 2) for `rows`, built in memory with the generator's API."""
    from esp_idf_nvs_partition_gen import nvs_partition_gen as gen

    check_nvs_size(size)
    out = io.BytesIO()
    try:
        # As the generator's CLI does: one 4 KB page is kept back as NVS's reserved page.
        nvs = gen.nvs_open(out, size - NVS_PAGE, gen.Page.VERSION2)
        for row in rows:
            if row.type == "namespace":
                gen.write_entry(nvs, row.key, "namespace", "", "")
            else:
                value: str | bytes = row.value.encode("ascii") if row.encoding == "binary" else row.value
                gen.write_entry(nvs, row.key, "data", row.encoding, value)
        gen.nvs_close(nvs)
    except gen.InsufficientSizeError:
        raise StationFault(
            _("NVS partition too small"),
            _("The credentials do not fit an NVS partition of {size:#x} bytes.").format(size=size),
            _("Call a technician: use a bigger NVS partition or a smaller key type (EC P-256)."),
        ) from None
    except gen.InputError:
        # Its message names the key and sizes only; never the value.
        raise StationFault(
            _("Credential too big for an NVS string"),
            _("An NVS string holds at most 4000 bytes; a credential is longer."),
            _("Call a technician: use nvs_encoding = binary or a smaller key type (EC P-256)."),
        ) from None
    image = out.getvalue()
    if len(image) != size:
        raise StationFault(
            _("NVS image has the wrong size"),
            _("The generator made {count} bytes for a {size}-byte partition.").format(
                count=len(image), size=size
            ),
            _("Call a technician: the NVS generator version may not fit this station."),
        )
    return image


# ------------------------------------------------------------------------------------ partition table


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0


def parse_partition_table(data: bytes) -> list[Partition]:
    """The binary partition table (ESP-IDF format: 32-byte entries, an optional MD5 entry, 0xFF end).

    Raises ValueError if it is not one (blank flash, garbage, an MD5 that does not match)."""
    parts: list[Partition] = []
    for pos in range(0, len(data) - 31, 32):
        entry = data[pos : pos + 32]
        if entry[:2] == _PART_MAGIC:
            ptype, subtype, offset, size = struct.unpack_from("<BBII", entry, 2)
            label = entry[12:28].split(b"\x00", 1)[0].decode("ascii", "replace")
            parts.append(
                Partition(label, ptype, subtype, offset, size, struct.unpack_from("<I", entry, 28)[0])
            )
        elif entry[:2] == _MD5_MAGIC:
            if hashlib.md5(data[:pos]).digest() != entry[16:32]:
                raise ValueError("partition table MD5 mismatch")
        elif entry == b"\xff" * 32:
            break
        else:
            raise ValueError("not a partition table")
    if not parts:
        raise ValueError("no partition table")
    return parts


def app_description(data: bytes) -> str | None:
    """ "<project> <version>" from an app image's esp_app_desc_t, or None if it has none."""
    if len(data) < APP_HEADER_READ or data[0] != _IMAGE_MAGIC:
        return None
    desc = data[0x20 : 0x20 + 256]
    if struct.unpack_from("<I", desc, 0)[0] != _APP_DESC_MAGIC:
        return None

    def text(start: int, length: int) -> str:
        raw = desc[start : start + length].split(b"\x00", 1)[0]
        return "".join(ch for ch in raw.decode("ascii", "replace") if ch.isprintable()).strip()

    version, project = text(16, 32), text(48, 32)
    return f"{project} {version}".strip() or None


# ------------------------------------------------------------------------------------------------- link


class Esp32Link(Protocol):
    """The narrow write/verify interface the flasher needs; `EsptoolLink` over esptool, or a fake.

    Every method raises a `StationError` (a `UnitFault` for the unit, `PortUnavailable` for the port), never a
    library exception. There is deliberately no eFuse operation here.
    """

    def detect_chip(self) -> str:
        """Reset into the ROM download mode, sync, and return the chip's description."""

    def run_stub(self) -> None:
        """Upload and start the flasher stub (faster, compressed writes)."""

    def attach_flash(self) -> int:
        """Attach the SPI flash; return its size in bytes (0 if unknown)."""

    def read_flash(self, offset: int, size: int) -> bytes: ...

    def write_flash(self, parts: Sequence[tuple[int, bytes]]) -> None: ...

    def verify_flash(self, parts: Sequence[tuple[int, bytes]]) -> bool:
        """True if the flash holds `parts` (the chip's MD5 of each region equals the data's)."""

    def read_mac(self) -> bytes:
        """The base MAC (6 bytes)."""

    def reset(self) -> None:
        """Hard-reset into the application."""

    def close(self) -> None: ...


LinkFactory = Callable[..., Esp32Link]
_SCHEMES: dict[str, LinkFactory] = {}
_SCHEMES_LOCK = threading.Lock()


def register_link_scheme(scheme: str, factory: LinkFactory) -> None:
    """Route ports `<scheme>://...` to `factory(port, baudrate=..., connect_mode=...)` (the simulator does)."""
    with _SCHEMES_LOCK:
        _SCHEMES[scheme] = factory


def _link_for(port: str) -> LinkFactory:
    scheme, sep, _ = port.partition("://")
    if sep:
        with _SCHEMES_LOCK:
            factory = _SCHEMES.get(scheme)
        if factory is not None:
            return factory
    return EsptoolLink


_ESPTOOL_QUIET = threading.Lock()
_esptool_silenced = False


def _silence_esptool() -> None:
    """esptool prints progress to stdout through a process-wide logger: the station's screen is not for it."""
    global _esptool_silenced
    with _ESPTOOL_QUIET:
        if not _esptool_silenced:
            from esptool.logger import log

            log.set_verbosity("silent")
            _esptool_silenced = True


class EsptoolLink:
    """`Esp32Link` over esptool 5's public API (`esptool.cmds`), on a port this object opens and holds.

    The port is opened (exclusively) here, so a missing or busy port is a `PortUnavailable` before any unit
    is blamed; esptool's `ESPLoader` takes an open pyserial port as well as a name.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = ROM_BAUD,
        connect_mode: str = "default-reset",
        connect_attempts: int = 3,
        exclusive: bool = True,
    ) -> None:
        _silence_esptool()
        self.port = port
        self.baudrate = baudrate
        self.connect_mode = connect_mode
        self.connect_attempts = connect_attempts
        self._serial: Any = open_port(port, baudrate=ROM_BAUD, exclusive=exclusive)
        self._esp: Any = None

    def _need(self) -> Any:
        if self._esp is None:
            raise StationFault(
                _("ESP32 not connected"),
                _("The station used the ESP32 before connecting."),
                _("Call a technician."),
            )
        return self._esp

    def detect_chip(self) -> str:
        from esptool.cmds import detect_chip

        with esptool_errors():
            self._esp = detect_chip(
                self._serial,  # an open port: ESPLoader uses it as is
                ROM_BAUD,
                self.connect_mode,
                connect_attempts=self.connect_attempts,
            )
            return str(self._esp.get_chip_description())

    def run_stub(self) -> None:
        from esptool.cmds import run_stub

        with esptool_errors():
            self._esp = run_stub(self._need())
            if self.baudrate != ROM_BAUD:
                self._esp.change_baud(self.baudrate)

    def attach_flash(self) -> int:
        from esptool.cmds import attach_flash

        with esptool_errors():
            esp = self._need()
            attach_flash(esp)
            size_id = (int(esp.flash_id()) >> 16) & 0xFF
        return 1 << size_id if 0x12 <= size_id <= 0x1A else 0

    def read_flash(self, offset: int, size: int) -> bytes:
        from esptool.cmds import read_flash

        with esptool_errors():
            data = read_flash(self._need(), offset, size, None, no_progress=True)
        return bytes(data or b"")

    def write_flash(self, parts: Sequence[tuple[int, bytes]]) -> None:
        from esptool.cmds import write_flash
        from esptool.util import FatalError

        try:
            with esptool_errors(passthrough=FatalError):
                write_flash(self._need(), [(offset, bytes(data)) for offset, data in parts], no_progress=True)
        except FatalError as exc:
            # esptool checks the chip's MD5 after writing; a mismatch is for verify_flash (and the flasher's
            # write-again-then-erase rule) to judge, not a refused command.
            if "MD5 of file does not match" not in str(exc):
                raise esptool_error(exc) from None

    def verify_flash(self, parts: Sequence[tuple[int, bytes]]) -> bool:
        from esptool.cmds import verify_flash
        from esptool.util import FatalError

        try:
            with esptool_errors(passthrough=FatalError):
                verify_flash(self._need(), [(offset, bytes(data)) for offset, data in parts])
        except FatalError as exc:
            if "Verification failed" in str(exc):
                return False
            raise esptool_error(exc) from None
        return True

    def read_mac(self) -> bytes:
        with esptool_errors():
            mac = self._need().read_mac("BASE_MAC")
        return bytes(mac or b"")

    def reset(self) -> None:
        from esptool.cmds import reset_chip

        with esptool_errors():
            reset_chip(self._need(), "hard-reset")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a unit that is gone has nothing left to release
            self._serial.close()


@contextlib.contextmanager
def esptool_errors(passthrough: type[BaseException] | None = None) -> Iterator[None]:
    """Turn esptool's and pyserial's exceptions into the station's (unit or port faults)."""
    import serial
    from esptool.util import FatalError

    try:
        yield
    except StationError:
        raise
    except FatalError as exc:
        if passthrough is not None and isinstance(exc, passthrough):
            raise
        raise esptool_error(exc) from None
    except (serial.SerialException, OSError):
        raise DeviceDisconnected() from None


def esptool_error(exc: BaseException) -> StationError:
    """The operator's version of an esptool FatalError (its text is esptool's own, never flash contents)."""
    text = str(exc)
    if "Wrong boot mode" in text:
        return UnitFault(
            _("Device not in download mode"),
            _("The ESP32 started its application instead of the ROM download mode."),
            _(
                "Check the jig's reset wiring (EN and IO0), or hold BOOT while reseating; if it fails again, rework."
            ),
        )
    if "No serial data received" in text or "Timed out" in text or "transfer stopped" in text:
        return DeviceNotAnswering()
    if (
        "Invalid head of packet" in text
        or "Serial data stream stopped" in text
        or "Invalid SLIP" in text
        or "doesn't match request" in text
        or "Unexpected chip" in text
    ):
        return DeviceGarbage()
    first = text.strip().splitlines()[0][:120] if text.strip() else type(exc).__name__
    return DeviceRejected(
        _("The ESP32 loader refused an operation ({first}).").format(first=first), _(_RESEAT)
    )


# ---------------------------------------------------------------------------------------------- flasher


def _as_int(value: int | str, what: str) -> int:
    try:
        return int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise StationFault(
            _("Bad ESP32 option"),
            _("{what} must be a number (e.g. 0x9000), not {value!r}.").format(what=what, value=value),
            _("Call a technician to fix the product's options."),
        ) from None


class Esp32Flasher(Flasher):
    """Host side of an ESP32 on one port: NVS image with the credentials, written and verified by esptool.

    Product options (`[products.NAME.options]`): `nvs_offset` (0x9000), `nvs_size` (0x6000), `nvs_partition`
    (label to insist on; default any data/nvs partition at that offset), `nvs_namespace` ("aws_iot"),
    `nvs_cert_key` ("certificate"), `nvs_key_key` ("private_key"), `nvs_ca_key` ("root_ca"), `nvs_encoding`
    ("string"), `partition_table_offset` (0x8000), `check_partition_table` (true), `connect_mode`
    ("default-reset"; "no-reset" where nothing can reset the chip, such as a pty), `reset_after` (true),
    `identity_format` ("nvs", or "esp_secure_cert": the TLV partition ESP-IDF's esp_secure_cert_mgr reads, at
    `secure_cert_offset` (0xD000), 8 KB, type 0x3F). DS-peripheral and eFuse-key variants are refused.
    """

    family = "esp32"
    capabilities = Capabilities(
        writes_key=True, device_keygen=False, device_verify=False, reads_certificate=False
    )

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = ROM_BAUD,
        nvs_offset: int | str = DEFAULT_NVS_OFFSET,
        nvs_size: int | str = DEFAULT_NVS_SIZE,
        nvs_partition: str | None = None,
        nvs_namespace: str = "aws_iot",
        nvs_cert_key: str = "certificate",
        nvs_key_key: str = "private_key",
        nvs_ca_key: str = "root_ca",
        nvs_encoding: str = "string",
        partition_table_offset: int | str = DEFAULT_PARTITION_TABLE_OFFSET,
        check_partition_table: bool = True,
        connect_mode: str = "default-reset",
        reset_after: bool = True,
        link_factory: LinkFactory | None = None,
        identity_format: str = "nvs",
        secure_cert_offset: int | str = DEFAULT_SECURE_CERT_OFFSET,
    ) -> None:
        self.port = port
        if identity_format in REFUSED_FORMATS:
            raise StationFault(
                _("Identity format not supported"),
                _(
                    "identity_format {identity_format!r} keeps the key in the DS peripheral or derives it from an "
                    "eFuse key; burning eFuses is irreversible and the station never does it."
                ).format(identity_format=identity_format),
                _(
                    'Call a technician: use identity_format = "esp_secure_cert" (plain key) or "nvs", and burn '
                    "eFuses, if wanted, in a separate, deliberate step outside the station."
                ),
            )
        if identity_format not in IDENTITY_FORMATS:
            raise StationFault(
                _("Bad ESP32 option"),
                _("identity_format must be one of {IDENTITY_FORMATS}, not {identity_format!r}.").format(
                    IDENTITY_FORMATS=", ".join(IDENTITY_FORMATS), identity_format=identity_format
                ),
                _("Call a technician to fix identity_format in the product's options."),
            )
        self.identity_format = identity_format
        self.nvs_offset = _as_int(nvs_offset, "nvs_offset")
        self.nvs_size = _as_int(nvs_size, "nvs_size")
        self.partition_table_offset = _as_int(partition_table_offset, "partition_table_offset")
        self.nvs_partition = nvs_partition
        self.layout = NvsLayout(nvs_namespace, nvs_cert_key, nvs_key_key, nvs_ca_key, nvs_encoding)
        self.layout.check()
        check_nvs_size(self.nvs_size)
        if self.nvs_offset % SECTOR or self.nvs_offset < self.partition_table_offset + SECTOR:
            raise StationFault(
                _("Bad NVS offset"),
                _(
                    "NVS offset {nvs_offset:#x} is not sector-aligned or would overwrite the bootloader or "
                    "the partition table (at {partition_table_offset:#x})."
                ).format(nvs_offset=self.nvs_offset, partition_table_offset=self.partition_table_offset),
                _("Call a technician to fix nvs_offset in the product's options (from the partition table)."),
            )
        # The partition this product's credentials go to: NVS, or esp_secure_cert.
        self.part_offset, self.part_size = self.nvs_offset, self.nvs_size
        if identity_format == "esp_secure_cert":
            self.part_offset, self.part_size = (
                _as_int(secure_cert_offset, "secure_cert_offset"),
                SECURE_CERT_SIZE,
            )
            if self.part_offset % SECTOR or self.part_offset < self.partition_table_offset + SECTOR:
                raise StationFault(
                    _("Bad esp_secure_cert offset"),
                    _(
                        "secure_cert_offset {part_offset:#x} is not sector-aligned or would overwrite the "
                        "bootloader or the partition table."
                    ).format(part_offset=self.part_offset),
                    _(
                        "Call a technician to fix secure_cert_offset in the product's options (from the partition "
                        "table)."
                    ),
                )
        self.check_partition_table = bool(check_partition_table)
        self.reset_after = bool(reset_after)
        factory = link_factory or _link_for(port)
        self._link: Esp32Link = factory(port, baudrate=baudrate, connect_mode=connect_mode)
        self._connected = False
        self._info: DeviceInfo | None = None
        self.chip: str | None = None
        self._written = False  # this session wrote the NVS partition (or tried to)
        self._closed = False

    # ------------------------------------------------------------------------------------------ public
    def identify(self) -> DeviceInfo:
        if self._connected:
            mac = self._link.read_mac()  # still the same unit, still there
            firmware = self._info.firmware if self._info else None
            if self._info is not None and mac.hex().upper() != self._info.device_id:
                raise UnitFault(
                    _("A different unit"),
                    _("The unit on this port changed since it was identified."),
                    _("Take both units out and start again with one."),
                )
        else:
            self.chip = self._link.detect_chip()
            self._link.run_stub()
            flash_size = self._link.attach_flash()
            mac = self._link.read_mac()
            if flash_size and self.part_offset + self.part_size > flash_size:
                raise UnitFault(
                    _("Flash too small"),
                    _(
                        "The unit's flash ({flash_size} KB) ends before the credentials partition does."
                    ).format(flash_size=flash_size // 1024),
                    _("Put the unit in the rework bin (wrong module fitted?)."),
                )
            firmware = self._check_layout() if self.check_partition_table else None
            self._connected = True
        if len(mac) != 6:
            raise DeviceGarbage(_("It gave a MAC address of the wrong length."))
        self._info = DeviceInfo(device_id=mac.hex().upper(), firmware=firmware, family=self.family)
        return self._info

    def read_unit_id(self) -> str | None:
        # The ROM loader answers the MAC itself: no stub upload, no flash attach, no partition table read.
        if not self._connected:
            self.chip = self._link.detect_chip()
        mac = self._link.read_mac()
        if len(mac) != 6:
            raise DeviceGarbage("It gave a MAC address of the wrong length.")
        return mac.hex().upper()

    def write_identity(self, identity: Identity, *, ca_pem: str | None = None) -> WriteProof:
        if identity.private_key is None:
            raise StationFault(
                _("No key to write"),
                _("An ESP32 cannot make its own key; the identity has none."),
                _("Call a technician: this product needs station-made keys (key_source = station)."),
            )
        try:
            key_pem = identity.private_key.reveal().decode("ascii")
        except UnicodeDecodeError:
            raise StationFault(
                _("Key not writable"),
                _("The private key is not PEM text."),
                _("Call a technician: the identity's key must be PEM."),
            ) from None
        objects = [("cert", identity.certificate_pem), ("key", key_pem)]
        if ca_pem:
            objects.append(("ca", ca_pem))
        if self.identity_format == "esp_secure_cert":
            image = build_secure_cert_image(identity.certificate_pem, key_pem, ca_pem, self.part_size)
        else:
            image = build_nvs_image(
                self.layout.rows(identity.certificate_pem, key_pem, ca_pem), self.nvs_size
            )
        self._ensure_connected()
        started = time.perf_counter()
        parts = [(self.part_offset, image)]
        self._written = True
        writes = 0
        try:
            for _attempt in range(2):
                writes += 1
                self._link.write_flash(parts)
                if self._link.verify_flash(parts):
                    break
            else:
                self._erase_best_effort()
                raise ProofMismatch(
                    _("NVS partition"),
                    _(
                        "The chip's digest of the written partition differs from the image after two writes; "
                        "the partition has been erased."
                    ),
                )
        except DeviceDisconnected:
            raise DeviceDisconnected(
                _("Its NVS partition may be partly written: provision the unit again once it is back.")
            ) from None
        proofs = tuple(
            ObjectProof(
                slot,
                len(text.encode("ascii")),
                _sha256(text),
                PROOF_DEVICE_HASH if slot == "key" else PROOF_READ_BACK,
            )
            for slot, text in objects
        )
        return WriteProof(
            family=self.family,
            device_id=self._info.device_id if self._info else None,
            objects=proofs,
            duration_s=time.perf_counter() - started,
            frames=writes,
            retries=writes - 1,
            wire_bytes=writes * len(image),
        )

    def wipe(self) -> None:
        """Write the NVS partition erased if this session wrote it (a partition it never touched stays)."""
        if not self._written:
            return
        self._ensure_connected()
        erased = [(self.part_offset, b"\xff" * self.part_size)]
        self._link.write_flash(erased)
        if not self._link.verify_flash(erased):
            raise ProofMismatch(_("NVS partition"), _("It did not read back erased after the wipe."))
        self._written = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._connected and self.reset_after:
                with contextlib.suppress(StationError):  # a unit that is gone cannot be reset
                    self._link.reset()
        finally:
            self._link.close()

    # ----------------------------------------------------------------------------------------- helpers
    def _ensure_connected(self) -> None:
        if not self._connected:
            self.identify()

    def _erase_best_effort(self) -> None:
        with contextlib.suppress(StationError):
            self._link.write_flash([(self.part_offset, b"\xff" * self.part_size)])

    def _check_layout(self) -> str | None:
        """Refuse to write unless the unit's partition table has the product's NVS partition; return the
        application's version (from its esp_app_desc_t) for the record."""
        raw = self._link.read_flash(self.partition_table_offset, PARTITION_TABLE_SIZE)
        try:
            table = parse_partition_table(raw)
        except ValueError:
            raise UnitFault(
                _("No partition table"),
                _(
                    "The unit has no valid partition table at {partition_table_offset:#x}: it has no "
                    "application firmware yet, or a damaged one."
                ).format(partition_table_offset=self.partition_table_offset),
                _("Flash the product's firmware first; if it fails again, put the unit in the rework bin."),
            ) from None
        if self.identity_format == "esp_secure_cert":
            if not any(
                p.type == PART_TYPE_SECURE_CERT and p.offset == self.part_offset and p.size >= self.part_size
                for p in table
            ):
                raise UnitFault(
                    _("Partition layout differs"),
                    _(
                        "The unit's partition table has no esp_secure_cert partition (type 0x3F) at "
                        "{part_offset:#x}: its firmware is not this product's."
                    ).format(part_offset=self.part_offset),
                    _(
                        "Flash the product's firmware; if every unit says this, call a technician to check "
                        "secure_cert_offset."
                    ),
                )
        else:
            matches = [
                p
                for p in table
                if p.type == PART_TYPE_DATA
                and p.subtype == PART_SUBTYPE_NVS
                and p.offset == self.nvs_offset
                and p.size == self.nvs_size
                and (self.nvs_partition is None or p.label == self.nvs_partition)
            ]
            if not matches:
                where = f"{self.nvs_offset:#x} ({self.nvs_size:#x} bytes)"
                name = f" named {self.nvs_partition}" if self.nvs_partition else ""
                raise UnitFault(
                    _("Partition layout differs"),
                    _(
                        "The unit's partition table has no NVS partition{name} at {where}: its firmware is not "
                        "this product's."
                    ).format(name=name, where=where),
                    _(
                        "Flash the product's firmware; if every unit says this, call a technician to check nvs_offset."
                    ),
                )
        apps = sorted((p for p in table if p.type == PART_TYPE_APP), key=lambda p: p.offset)
        if not apps:
            return None
        return app_description(self._link.read_flash(apps[0].offset, APP_HEADER_READ))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()
