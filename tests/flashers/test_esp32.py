"""ESP32: the shared flasher contract through the fake `Esp32Link`, plus real NVS images parsed back.

esptool cannot run against a pty, so (as the module docstrings say) the flasher is driven through
`flashers.simulators.esp32` (an in-memory flash behind the narrow write/verify interface, failing with
esptool's own error texts), and the images are real: built by Espressif's generator, parsed back with an
independent NVS reader, and compared byte for byte with the generator's CLI output. `EsptoolLink` itself is
exercised on real ptys where esptool can run: opening ports, and its failure paths (silence, garbage).

A flash write is not atomic and has no staging, so a failed verify or a drop-out mid-write cannot leave the
old credentials: the family does not declare `atomic_commit`, the contract skips its two atomic-commit tests by
capability, and two tests of its own in `TestEsp32Contract` assert what the family does instead.
"""

from __future__ import annotations

import ast
import builtins
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flasher_contract import FlasherContract, _key_body, key_text

from flashers.base import (
    DeviceDisconnected,
    DeviceGarbage,
    DeviceNotAnswering,
    DeviceRejected,
    Flasher,
    PortUnavailable,
    ProofMismatch,
)
from flashers.esp32 import (
    DEFAULT_NVS_OFFSET,
    DEFAULT_NVS_SIZE,
    Esp32Flasher,
    Esp32Link,
    EsptoolLink,
    NvsLayout,
    app_description,
    build_nvs_image,
    esptool_error,
    nvs_csv,
    parse_partition_table,
)
from flashers.simulators.esp32 import (
    FakeEsp32,
    Faults,
    SparseFlash,
    app_image,
    partition_table,
    read_nvs,
)
from flashers.simulators.pty import PtyDevice
from station.errors import StationFault, UnitFault
from station.identity import new_identity
from station.model import Identity

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ harness


class Esp32Handle:
    """One fake ESP32 as the contract sees it."""

    def __init__(self, device: FakeEsp32) -> None:
        self.device = device
        self.port = device.port
        self.device_id: str | None = device.device_id

    def live(self) -> dict[str, str | None]:
        return self.device.live()

    def staged(self) -> tuple[str, ...]:
        return ()  # flash has no staging

    def set_faults(self, **faults: Any) -> None:
        self.device.faults = Faults.from_spec(faults)

    def restart(self) -> Esp32Handle:
        return Esp32Handle(self.device.restart())

    def stop(self) -> None:
        self.device.stop()


@pytest.fixture
def make_device() -> Iterator[Callable[..., Esp32Handle]]:
    handles: list[Esp32Handle] = []

    def make(faults: dict[str, Any] | None = None, pace: bool = False, **kwargs: Any) -> Esp32Handle:
        handle = Esp32Handle(FakeEsp32(faults=Faults.from_spec(faults), **kwargs))
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture
def open_flasher() -> Iterator[Callable[..., Esp32Flasher]]:
    opened: list[Esp32Flasher] = []

    def open_(port: str, quick: bool = True, **kwargs: Any) -> Esp32Flasher:
        flasher = Esp32Flasher(port, **kwargs)
        opened.append(flasher)
        return flasher

    yield open_
    for flasher in opened:
        flasher.close()


@pytest.fixture
def flasher_class() -> type[Flasher]:
    return Esp32Flasher


@pytest.fixture(name="sign_csr")
def _sign_csr() -> Callable[[str], str]:
    def refuse(csr: str) -> str:
        raise AssertionError("an ESP32 makes no CSR")

    return refuse


class TestEsp32Contract(FlasherContract):
    """ESP32 passes the shared contract through the fake link, plus what it does instead of an atomic commit
    (see the docstring)."""

    def test_no_atomic_commit_is_declared(self, flasher_class: type[Flasher]) -> None:
        assert flasher_class.capabilities.atomic_commit is False

    def test_failed_verify_erases_the_partition(
        self,
        make_device: Callable[..., Any],
        open_flasher: Callable[..., Any],
        identity: Identity,
        new_identity: Callable[[], Identity],
    ) -> None:
        """A failed verify means the flash holds a damaged image; it is written once more, then erased, so
        the firmware finds no half-credentials."""
        device = make_device()
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
        device.set_faults(bad_store=True)
        second = new_identity()
        with open_flasher(device.port) as flasher, pytest.raises(ProofMismatch) as caught:
            flasher.write_identity(second)
        assert "differs" in caught.value.message and "erased" in caught.value.message
        assert device.device.ops.count("write_flash") == 1 + 3  # first session, two tries, the erase
        assert device.device.flash.read(DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE) == b"\xff" * DEFAULT_NVS_SIZE
        assert device.live() == {"cert": None, "key": None, "ca": None}
        assert _key_body(second) not in str(caught.value)

    def test_disconnect_mid_write_says_the_partition_may_be_partly_written(
        self,
        make_device: Callable[..., Any],
        open_flasher: Callable[..., Any],
        identity: Identity,
        new_identity: Callable[[], Identity],
    ) -> None:
        """A flash write is not atomic. The operator is told the partition may be partly written; after a
        power cycle the unit is provisioned afresh."""
        device = make_device()
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
        device.set_faults(disconnect_mid_write=True)
        second = new_identity()
        started = time.monotonic()
        flasher = open_flasher(device.port)
        try:
            with pytest.raises(DeviceDisconnected) as caught:
                flasher.write_identity(second)
        finally:
            flasher.close()
            flasher.close()
        assert time.monotonic() - started < self.garbage_bound_s
        assert "partly written" in caught.value.message
        assert _key_body(second) not in str(caught.value)
        again = device.restart()
        assert again.live()["key"] != key_text(identity)  # the old partition is gone (erased, half-written)
        with open_flasher(again.port) as flasher:
            flasher.write_identity(second)
        assert again.live() == {"cert": second.certificate_pem, "key": key_text(second), "ca": None}


# ------------------------------------------------------------------------------------------- NVS images


def _strings(entries: dict[tuple[str, str], bytes | int], namespace: str) -> dict[str, bytes | int]:
    return {key: value for (ns, key), value in entries.items() if ns == namespace}


def test_image_holds_cert_key_and_ca_at_their_keys(identity: Identity) -> None:
    ca = new_identity("server-ca").certificate_pem
    layout = NvsLayout()
    image = build_nvs_image(layout.rows(identity.certificate_pem, key_text(identity), ca), DEFAULT_NVS_SIZE)
    assert len(image) == DEFAULT_NVS_SIZE
    entries = read_nvs(image)
    assert set(entries) == {("aws_iot", "certificate"), ("aws_iot", "private_key"), ("aws_iot", "root_ca")}
    values = _strings(entries, "aws_iot")
    assert values["certificate"] == identity.certificate_pem.encode() + b"\x00"  # nvs_get_str's NUL
    assert values["private_key"] == key_text(identity).encode() + b"\x00"
    assert values["root_ca"] == ca.encode() + b"\x00"
    # The reserved last page is left erased, as NVS needs it.
    assert image[-4096:] == b"\xff" * 4096


def test_custom_layout_and_binary_encoding_with_a_multipage_blob() -> None:
    big = new_identity("big-unit", key_type="rsa-3072")
    chain = big.certificate_pem * 3  # > 4000 bytes: too long for an NVS string
    layout = NvsLayout(namespace="certs", cert_key="crt", key_key="pk", ca_key="ca", encoding="binary")
    image = build_nvs_image(layout.rows(chain, key_text(big)), 0x10000)
    values = _strings(read_nvs(image), "certs")
    assert values == {"crt": chain.encode(), "pk": key_text(big).encode()}
    with pytest.raises(StationFault) as caught:
        build_nvs_image(NvsLayout().rows(chain, key_text(big)), 0x10000)
    assert "nvs_encoding = binary" in caught.value.next_action


def test_in_memory_image_equals_the_generator_cli_on_files(tmp_path: Path, identity: Identity) -> None:
    """The station's in-memory path gives the same bytes as `generate in.csv out.bin 0x6000` on files (test
    files under tmp_path; the station never writes them)."""
    ca = new_identity("server-ca").certificate_pem
    rows = NvsLayout().rows(identity.certificate_pem, key_text(identity), ca)
    paths = {}
    for row in rows:
        if row.type == "file":
            path = tmp_path / row.source
            path.write_text(row.value)
            paths[row.key] = str(path)
    csv_text = nvs_csv(rows, paths)
    assert csv_text.splitlines()[:2] == ["key,type,encoding,value", "aws_iot,namespace,,"]
    assert "BEGIN" not in nvs_csv(rows)  # the CSV names files, never their content
    (tmp_path / "in.csv").write_text(csv_text)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "esp_idf_nvs_partition_gen",
            "generate",
            "in.csv",
            "out.bin",
            hex(DEFAULT_NVS_SIZE),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.bin").read_bytes() == build_nvs_image(rows, DEFAULT_NVS_SIZE)


def test_building_and_writing_opens_no_file(
    make_device: Callable[..., Esp32Handle], identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = make_device()
    flasher = Esp32Flasher(device.port)
    flasher.identify()
    opened: list[Any] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(args[0])
        return real_open(*args, **kwargs)

    def spy_os_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(args[0])
        return real_os_open(*args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    try:
        flasher.write_identity(identity)
    finally:
        monkeypatch.undo()
        flasher.close()
    assert opened == []  # the key went from memory to the link, never through a file
    assert device.live()["key"] == key_text(identity)


def test_the_reader_catches_damage(identity: Identity) -> None:
    image = bytearray(build_nvs_image(NvsLayout().rows(identity.certificate_pem, key_text(identity)), 0x6000))
    for spot in (4 + 1, 64 + 32 + 9, 64 + 2 * 32 + 5):  # page header, an entry header, string data
        damaged = bytearray(image)
        damaged[spot] ^= 0x04
        with pytest.raises(ValueError):
            read_nvs(bytes(damaged))


@pytest.mark.parametrize("size", [0x2000, 0x6800, 0])
def test_bad_partition_sizes_are_station_faults(size: int) -> None:
    with pytest.raises(StationFault):
        build_nvs_image([], size)


@pytest.mark.parametrize(
    "layout",
    [
        NvsLayout(namespace="a" * 16),
        NvsLayout(cert_key="sta.ssid"),
        NvsLayout(cert_key="k", key_key="k"),
        NvsLayout(key_key="has space"),
        NvsLayout(encoding="base64"),
    ],
)
def test_bad_layouts_are_refused(layout: NvsLayout) -> None:
    with pytest.raises(StationFault):
        layout.check()


# --------------------------------------------------------------------------------- partition table, app


def test_partition_table_round_trip_and_damage() -> None:
    table = partition_table([("nvs", 1, 2, 0x9000, 0x6000), ("factory", 0, 0, 0x10000, 0x100000)])
    parts = parse_partition_table(table)
    assert [(p.label, p.type, p.subtype, p.offset, p.size) for p in parts] == [
        ("nvs", 1, 2, 0x9000, 0x6000),
        ("factory", 0, 0, 0x10000, 0x100000),
    ]
    damaged = bytearray(table)
    damaged[6] ^= 0x10  # nvs offset: the MD5 entry no longer matches
    for bad in (bytes(damaged), b"\xff" * 0xC00, b"\x00" * 0xC00):
        with pytest.raises(ValueError):
            parse_partition_table(bad)


def test_app_description() -> None:
    assert app_description(app_image("door-sensor", "2.0.1")) == "door-sensor 2.0.1"
    assert app_description(b"\xff" * 400) is None
    assert app_description(app_image("x", "1")[:100]) is None


# --------------------------------------------------------------------------------------- flasher flows


def test_identify_reads_mac_and_firmware_through_the_link_in_order(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher]
) -> None:
    device = make_device(mac=bytes.fromhex("240AC4A1B2C3"))
    with open_flasher(device.port) as flasher:
        info = flasher.identify()
        assert flasher.chip == "ESP32-D0WD-V3 (revision v3.1)"
    assert info.device_id == "240AC4A1B2C3" and info.family == "esp32"
    assert info.firmware == "station-demo 1.4.2"
    assert device.device.ops == [
        "detect_chip",
        "run_stub",
        "attach_flash",
        "read_mac",
        "read_flash",  # partition table
        "read_flash",  # app header
        "reset",  # on close, back into the application
        "close",
    ]


def test_write_goes_to_the_products_offset_and_verifies(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher], identity: Identity
) -> None:
    offset, size = 0x3F0000, 0x10000
    device = make_device(nvs_offset=offset, nvs_size=size, nvs_label="nvs_certs")
    options = {"nvs_offset": "0x3F0000", "nvs_size": size, "nvs_partition": "nvs_certs"}
    with open_flasher(device.port, **options) as flasher:
        proof = flasher.write_identity(identity)
    assert proof.frames == 1 and proof.retries == 0 and proof.wire_bytes == size
    image = device.device.flash.read(offset, size)
    assert read_nvs(image)[("aws_iot", "private_key")] == key_text(identity).encode() + b"\x00"
    assert device.device.flash.read(DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE) == b"\xff" * DEFAULT_NVS_SIZE
    ops = device.device.ops
    assert ops.index("write_flash") < ops.index("verify_flash") < ops.index("reset")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"nvs_offset": 0xA000}, "Partition layout differs"),
        ({"nvs_size": 0x5000}, "Partition layout differs"),
        ({"nvs_partition": "nvs_keys"}, "Partition layout differs"),
    ],
)
def test_an_offset_the_units_partition_table_lacks_is_never_written(
    make_device: Callable[..., Esp32Handle],
    open_flasher: Callable[..., Esp32Flasher],
    identity: Identity,
    options: dict[str, Any],
    expected: str,
) -> None:
    device = make_device()
    with open_flasher(device.port, **options) as flasher, pytest.raises(UnitFault) as caught:
        flasher.write_identity(identity)
    assert caught.value.title == expected
    assert "write_flash" not in device.device.ops


def test_a_blank_unit_has_no_partition_table(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher], identity: Identity
) -> None:
    device = make_device(blank=True)
    with open_flasher(device.port) as flasher, pytest.raises(UnitFault) as caught:
        flasher.identify()
    assert (
        caught.value.title == "No partition table"
        and "Flash the product's firmware" in caught.value.next_action
    )
    with open_flasher(device.port, check_partition_table=False) as flasher:
        assert flasher.identify().firmware is None
        flasher.write_identity(identity)
    assert device.live()["cert"] == identity.certificate_pem


@pytest.mark.parametrize(
    "options",
    [
        {"nvs_offset": 0x8000},  # the partition table itself
        {"nvs_offset": 0x1000},  # the bootloader
        {"nvs_offset": 0x9100},  # not sector-aligned
        {"nvs_size": 0x2000},
        {"nvs_offset": "nine"},
        {"nvs_namespace": "x" * 20},
    ],
)
def test_dangerous_or_bad_options_are_refused_before_touching_the_unit(
    make_device: Callable[..., Esp32Handle], options: dict[str, Any]
) -> None:
    device = make_device()
    with pytest.raises(StationFault):
        Esp32Flasher(device.port, **options)
    assert device.device.ops == [] and not device.device.claimed


def test_verify_failure_then_success_on_the_second_write(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher], identity: Identity
) -> None:
    device = make_device()

    with open_flasher(device.port) as flasher:
        flasher.identify()
        device.device.faults = Faults(bad_store=True)
        real_write = flasher._link.write_flash

        def write_then_heal(parts: Any) -> None:
            real_write(parts)
            device.device.faults = Faults()  # the first write stored a damaged copy; the second is fine

        flasher._link.write_flash = write_then_heal  # type: ignore[method-assign]
        proof = flasher.write_identity(identity)
    assert proof.frames == 2 and proof.retries == 1
    assert device.live()["key"] == key_text(identity)


def test_wipe_erases_only_a_partition_this_session_wrote(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher], identity: Identity
) -> None:
    device = make_device()
    with open_flasher(device.port) as flasher:
        flasher.write_identity(identity)
    with open_flasher(device.port) as flasher:
        flasher.wipe()  # nothing written in this session: the unit's identity stays
    assert device.live()["cert"] == identity.certificate_pem
    with open_flasher(device.port) as flasher:
        flasher.write_identity(identity)
        flasher.wipe()
    assert device.device.flash.read(DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE) == b"\xff" * DEFAULT_NVS_SIZE


def test_noisy_line_is_survived_by_block_retries_then_given_up(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher], identity: Identity
) -> None:
    device = make_device(faults={"corrupt": 0.3, "seed": 1})
    with open_flasher(device.port) as flasher:
        flasher.write_identity(identity)
    assert device.live()["key"] == key_text(identity)
    hopeless = make_device(faults={"corrupt": 1.0})
    with open_flasher(hopeless.port) as flasher, pytest.raises(DeviceGarbage):
        flasher.write_identity(identity)


def test_wrong_boot_mode_and_a_changed_unit_are_unit_faults(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher]
) -> None:
    device = make_device(faults={"wrong_boot_mode": True})
    with open_flasher(device.port) as flasher, pytest.raises(UnitFault) as caught:
        flasher.identify()
    assert caught.value.title == "Device not in download mode"
    other = make_device()
    with open_flasher(other.port) as flasher:
        flasher.identify()
        other.device.mac = bytes(6)
        with pytest.raises(UnitFault) as changed:
            flasher.identify()
    assert changed.value.title == "A different unit"


def test_station_made_keys_only(
    make_device: Callable[..., Esp32Handle], open_flasher: Callable[..., Esp32Flasher]
) -> None:
    device = make_device()
    with open_flasher(device.port) as flasher, pytest.raises(StationFault):
        flasher.write_identity(Identity(certificate_pem="x", certificate_id="y"))
    assert "write_flash" not in device.device.ops


def test_unknown_simulated_port_is_a_port_fault() -> None:
    with pytest.raises(PortUnavailable) as caught:
        Esp32Flasher("esp32sim://nobody-here")
    assert "no such port" in caught.value.message


def test_sparse_flash_behaves_like_nor() -> None:
    flash = SparseFlash(0x10000)
    assert flash.read(0x100, 4) == b"\xff" * 4
    flash.write(0x100, b"\x0f\xf0")
    flash.write(0x100, b"\xf0\xf0")  # without an erase, bits only go from 1 to 0
    assert flash.read(0x100, 2) == b"\x00\xf0"
    flash.erase(0, 0x1000)
    assert flash.read(0x100, 2) == b"\xff\xff"
    with pytest.raises(ValueError):
        flash.read(0xFFFF, 2)


# ------------------------------------------------------------------------------------------ never eFuses


def test_no_code_path_can_burn_an_efuse() -> None:
    source = (ROOT / "flashers" / "esp32.py").read_text()
    tree = ast.parse(source)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not any("efuse" in name.lower() for name in imported)
    from_cmds = {name.rsplit(".", 1)[1] for name in imported if name.startswith("esptool.cmds.")}
    assert from_cmds <= {
        "detect_chip",
        "run_stub",
        "attach_flash",
        "read_flash",
        "write_flash",
        "verify_flash",
        "reset_chip",
    }
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not {a for a in attributes if "efuse" in a.lower() or "burn" in a.lower()}
    link_methods = {name for name in dir(Esp32Link) if not name.startswith("_")}
    assert not {m for m in link_methods if "efuse" in m.lower() or "burn" in m.lower()}
    # And esptool's write path is never asked to encrypt (which needs flash-encryption eFuses).
    assert "encrypt" not in source.split('"""', 2)[2]


# ----------------------------------------------------------------------------- EsptoolLink on real ptys


class _Silent:
    def on_receive(self, data: bytes, link: Any) -> None:
        pass


class _Chatty:
    def on_receive(self, data: bytes, link: Any) -> None:
        link.send(b"I (31) boot: ESP-IDF v5.4 2nd stage bootloader\r\nhello from the app\r\n")


@pytest.mark.parametrize(("model", "error"), [(_Silent(), DeviceNotAnswering), (_Chatty(), DeviceGarbage)])
def test_esptool_link_failures_on_a_pty_map_to_unit_faults(model: Any, error: type[Exception]) -> None:
    """esptool really runs here: a pty cannot be a ROM loader, but esptool's failure paths work on one."""
    with PtyDevice(model) as device:
        link = EsptoolLink(device.port, connect_mode="no-reset", connect_attempts=1)
        try:
            started = time.monotonic()
            with pytest.raises(error):
                link.detect_chip()
            assert time.monotonic() - started < 10
        finally:
            link.close()
            link.close()


def test_esptool_link_port_faults(tmp_path: Path) -> None:
    with pytest.raises(PortUnavailable) as missing:
        Esp32Flasher(str(tmp_path / "ttyUSB9"))
    assert "no such port" in missing.value.message
    with PtyDevice(_Silent()) as device:
        first = EsptoolLink(device.port)
        try:
            with pytest.raises(PortUnavailable) as busy:
                EsptoolLink(device.port)
            assert "in use" in busy.value.message
        finally:
            first.close()
        EsptoolLink(device.port).close()  # released on close


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Failed to connect to ESP32: No serial data received.", DeviceNotAnswering),
        ("Timed out waiting for packet header", DeviceNotAnswering),
        ("Packet content transfer stopped (received 8 bytes).", DeviceNotAnswering),
        ("Invalid head of packet (0x41): Possible serial noise or corruption.", DeviceGarbage),
        ("Serial data stream stopped: Possible serial noise or corruption.", DeviceGarbage),
        ("Response doesn't match request.", DeviceGarbage),
        ("Failed to write to target RAM (result was 01070000: Operation timed out)", DeviceRejected),
    ],
)
def test_esptool_messages_become_operator_errors(text: str, error: type[Exception]) -> None:
    from esptool.util import FatalError

    mapped = esptool_error(FatalError(text))
    assert type(mapped) is error
    boot = esptool_error(
        FatalError("Wrong boot mode detected (0x13)! The chip needs to be in download mode.")
    )
    assert boot.title == "Device not in download mode"


# ------------------------------------------------------------------------- station provision, end to end

RIG_REGION = "eu-west-1"  # the region of tests/pipeline/cloud_rig.py's station.toml


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    control = pytest.importorskip("station.lab.control")
    dataplane = pytest.importorskip("station.lab.dataplane")
    plane = control.ControlPlane(throttling=False).start()
    data = None
    try:
        data = dataplane.DataPlane(
            {(control.DEFAULT_ACCOUNT_ID, RIG_REGION): 0}, tmp_path_factory.mktemp("lab")
        )
        data.start()
        yield plane, data, data.port_for(control.DEFAULT_ACCOUNT_ID, RIG_REGION)
    finally:
        if data is not None:
            data.stop()
        plane.stop()


def _station_config(directory: Path, lab: Any, options: str) -> Path:
    """The pipeline tests' station.toml (tests/pipeline/cloud_rig.py) with the esp32 flasher."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cloud_rig_for_esp32", ROOT / "tests" / "pipeline" / "cloud_rig.py"
    )
    assert spec is not None and spec.loader is not None
    rig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rig)
    assert rig.REGION == RIG_REGION
    plane, data, port = lab
    path: Path = rig.write_config(
        directory,
        plane.endpoint_url,
        data_port=port,
        ca_file=str(data.ca_file),
        policy_document=(ROOT / "fixtures" / "policies" / "thing-policy.json").read_text(),
        key_source="station",
    )
    text = path.read_text().replace('flasher = "prov1"', 'flasher = "esp32"')
    path.write_text(text.replace('key_source = "station"\n', f'key_source = "station"\n{options}'))
    return path


@pytest.mark.lab
def test_station_provision_passes_an_esp32_and_the_unit_then_connects_on_its_own(
    lab: Any, tmp_path: Path
) -> None:
    """The real StationContext and pipeline, the lab, and the fake link: PASS, then the credentials the
    firmware would read from its NVS partition connect and publish as the thing."""
    from awscrt import mqtt
    from awsiot import mqtt_connection_builder

    from station.config import load_config
    from station.context import StationContext
    from station.ledger import open_ledger
    from station.registry import Registry

    _, data, port = lab
    options = 'check_device_id = false\nnvs_offset = "0x9000"\nnvs_size = 24576\n'
    config = load_config(_station_config(tmp_path, lab, options))
    ledger = open_ledger(config.ledger_path)
    context = StationContext(
        config, ledger=ledger, registry_factory=lambda target: Registry(target, station_id="esp")
    )
    unit = FakeEsp32()
    try:
        result = context.provision(f"SIM{uuid.uuid4().int % 10**6:06d}", unit.port, slot="s1")
        assert result.outcome.value == "PASS", (result.title, result.message)
        assert result.family == "esp32" and result.device_id == unit.device_id
        assert result.firmware == "station-demo 1.4.2"
        live = unit.live()
        assert live["cert"] == result.certificate_pem and live["ca"] == data.ca_bytes.decode()
        assert live["key"] and "PRIVATE KEY" in live["key"]
        assert unit.ops[-2:] == ["reset", "close"]  # back into the application after the write
        time.sleep(1.1)  # AWS allows one CONNECT per second per client id; the verify just connected
        connection = mqtt_connection_builder.mtls_from_bytes(
            endpoint="localhost",
            port=port,
            cert_bytes=live["cert"].encode(),
            pri_key_bytes=live["key"].encode(),
            ca_bytes=(live["ca"] or "").encode(),
            client_id=result.thing_name,
            clean_session=True,
        )
        connection.connect().result(10)
        try:
            future, _ = connection.publish(f"things/{result.thing_name}/hello", "{}", mqtt.QoS.AT_LEAST_ONCE)
            future.result(10)
        finally:
            connection.disconnect().result(5)
    finally:
        unit.stop()
        ledger.close()
