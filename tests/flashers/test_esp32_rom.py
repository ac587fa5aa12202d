"""The ESP32 ROM-loader simulator on a real pty, driven by the unmodified esptool (issue 11).

esptool (the installed package) runs as a subprocess and through its Python API against the simulator with
`--before no-reset` (a pty has no DTR/RTS to reset the chip into download mode, and `--after no-reset`, since
a hard reset toggles RTS): chip-id, write-flash of a real NVS image, verify-flash, read-flash round trip
byte-equal, both through the flasher stub (esptool's default: RAM upload, then the stub's protocol) and the
ROM alone (`--no-stub`: READ_FLASH_SLOW, hex MD5). `station sim esp32` prints its port first and serves esptool.
Then the ESP32 family (real `EsptoolLink`) identifies, writes and verifies over the pty, and the simulator's
faults reach it as esptool reports them. The partition is read back from the simulated flash file and parsed
the way the firmware would read it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flashers.base import DeviceNotAnswering, ProofMismatch
from flashers.esp32 import (
    DEFAULT_NVS_OFFSET,
    DEFAULT_NVS_SIZE,
    DEFAULT_SECURE_CERT_OFFSET,
    SECURE_CERT_SIZE,
    TLV_CA_CERT,
    TLV_DEV_CERT,
    TLV_PRIV_KEY,
    Esp32Flasher,
    NvsLayout,
    build_nvs_image,
    build_secure_cert_image,
    parse_secure_cert,
)
from flashers.simulators.esp32 import read_nvs
from flashers.simulators.esp32rom import (
    ESP32_MAGIC,
    FLASH_SIZE,
    Esp32RomDevice,
    Faults,
    flash_file,
    slip_decode,
    slip_encode,
)
from flashers.simulators.pty import PtyDevice
from station.errors import StationFault, UnitFault
from station.identity import new_identity

MAC = bytes.fromhex("240AC4A1B2C3")
PTY_OPTIONS = {"connect_mode": "no-reset", "reset_after": False}


@pytest.fixture
def unit(tmp_path: Path) -> Iterator[tuple[str, Esp32RomDevice]]:
    model = Esp32RomDevice(tmp_path / "state", mac=MAC)
    with PtyDevice(model) as device:
        yield device.port, model


def esptool(port: str, *args: str, stub: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "esptool", "--port", port, "--before", "no-reset", "--after", "no-reset"]
    return subprocess.run(
        [*command, *([] if stub else ["--no-stub"]), *args], capture_output=True, text=True, timeout=60
    )


def nvs_image() -> tuple[bytes, str]:
    identity = new_identity("esp32-rom-unit")
    assert identity.private_key is not None
    key_pem = identity.private_key.reveal().decode()
    return build_nvs_image(
        NvsLayout().rows(identity.certificate_pem, key_pem), DEFAULT_NVS_SIZE
    ), identity.certificate_pem


def test_slip_framing_round_trips_the_special_bytes() -> None:
    frame = b"\x00\xc0\xdb\xdc\xdd\xc0\xc0"
    encoded = slip_encode(frame)
    assert encoded[0] == encoded[-1] == 0xC0 and b"\xc0" not in encoded[1:-1]
    assert slip_decode(encoded[1:-1]) == frame


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "rom"])
def test_unmodified_esptool_cli_chip_id_write_verify_read(
    unit: tuple[str, Esp32RomDevice], tmp_path: Path, stub: bool
) -> None:
    port, model = unit
    identified = esptool(port, "chip-id", stub=stub)
    assert identified.returncode == 0, identified.stdout + identified.stderr
    assert "ESP32-D0WD-V3 (revision v3.1)" in identified.stdout
    assert "24:0a:c4:a1:b2:c3" in identified.stdout

    image, certificate = nvs_image()
    image_file = tmp_path / "nvs.bin"
    image_file.write_bytes(image)
    started = time.perf_counter()
    written = esptool(port, "write-flash", hex(DEFAULT_NVS_OFFSET), str(image_file), stub=stub)
    assert written.returncode == 0, written.stdout + written.stderr
    assert "Hash of data verified" in written.stdout
    write_s = time.perf_counter() - started
    verified = esptool(port, "verify-flash", hex(DEFAULT_NVS_OFFSET), str(image_file), stub=stub)
    assert verified.returncode == 0 and "digest matched" in verified.stdout, verified.stdout
    back = tmp_path / "back.bin"
    read = esptool(port, "read-flash", hex(DEFAULT_NVS_OFFSET), hex(DEFAULT_NVS_SIZE), str(back), stub=stub)
    assert read.returncode == 0, read.stdout + read.stderr
    assert back.read_bytes() == image  # byte-equal round trip
    # The flash file holds it too, and the firmware's view of it has the certificate.
    stored = model.flash.read(DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE)
    assert stored == image
    assert read_nvs(stored)[("aws_iot", "certificate")].rstrip(b"\x00").decode() == certificate
    assert write_s < 30


def test_a_long_stub_read_keeps_to_the_packets_in_flight(
    unit: tuple[str, Esp32RomDevice], tmp_path: Path
) -> None:
    """1 MB is 256 sectors, four times what the stub may have in flight: it must wait for acknowledgements."""
    port, model = unit
    back = tmp_path / "first-mb.bin"
    started = time.perf_counter()
    read = esptool(port, "read-flash", "0", hex(0x100000), str(back))
    assert read.returncode == 0, read.stdout + read.stderr
    assert back.read_bytes() == model.flash.read(0, 0x100000)
    assert time.perf_counter() - started < 30


def test_verify_flash_fails_on_a_unit_that_stores_damaged_data(
    unit: tuple[str, Esp32RomDevice], tmp_path: Path
) -> None:
    port, model = unit
    image, _ = nvs_image()
    image_file = tmp_path / "nvs.bin"
    image_file.write_bytes(image)
    model.faults = Faults(bad_store=True)
    written = esptool(port, "write-flash", hex(DEFAULT_NVS_OFFSET), str(image_file))
    assert written.returncode != 0
    assert "verif" in (written.stdout + written.stderr).lower()


def test_esptool_python_api(unit: tuple[str, Esp32RomDevice]) -> None:
    from esptool.cmds import attach_flash, detect_chip, read_flash, run_stub, verify_flash, write_flash

    port, model = unit
    image, _ = nvs_image()
    esp = detect_chip(port, 115200, "no-reset")
    try:
        assert esp.CHIP_NAME == "ESP32"
        assert esp.read_reg(0x40001000) == ESP32_MAGIC
        esp = run_stub(esp)
        attach_flash(esp)
        assert 1 << ((esp.flash_id() >> 16) & 0xFF) == FLASH_SIZE
        write_flash(esp, [(DEFAULT_NVS_OFFSET, image)], no_progress=True)
        verify_flash(esp, [(DEFAULT_NVS_OFFSET, image)])
        assert read_flash(esp, DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE, None, no_progress=True) == image
        assert bytes(esp.read_mac("BASE_MAC")) == MAC
    finally:
        esp._port.close()
    assert model.flash.read(DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE) == image


def test_the_flash_image_is_a_file_that_survives_a_power_cycle(tmp_path: Path) -> None:
    first = Esp32RomDevice(tmp_path, mac=MAC)
    first.flash.erase(0x9000, 0x1000)
    first.flash.program(0x9000, b"persisted")
    again = Esp32RomDevice(tmp_path, mac=MAC)
    assert flash_file(tmp_path, MAC).stat().st_size == FLASH_SIZE
    assert again.flash.read(0x9000, 9) == b"persisted"
    assert again.flash.read(0x8000, 2) == b"\xaa\x50"  # the partition table a new unit came with


# --------------------------------------------------------------------------------------------- the family


def test_esp32_family_writes_and_verifies_through_real_esptool(unit: tuple[str, Esp32RomDevice]) -> None:
    port, model = unit
    identity = new_identity("esp32-family-unit")
    with Esp32Flasher(port, **PTY_OPTIONS) as flasher:
        info = flasher.identify()
        assert info.device_id == MAC.hex().upper()
        assert info.firmware == "station-demo 1.4.2"
        proof = flasher.write_identity(identity, ca_pem=new_identity("ca").certificate_pem)
        assert [o.slot for o in proof.objects] == ["cert", "key", "ca"]
    entries = read_nvs(model.flash.read(DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE))
    assert entries[("aws_iot", "certificate")].rstrip(b"\x00").decode() == identity.certificate_pem


def test_esp32_family_reports_a_damaged_store_as_a_proof_mismatch(unit: tuple[str, Esp32RomDevice]) -> None:
    port, model = unit
    model.faults = Faults(bad_store=True)
    with Esp32Flasher(port, **PTY_OPTIONS) as flasher:
        flasher.identify()
        with pytest.raises(ProofMismatch):
            flasher.write_identity(new_identity("esp32-bad-store"))
    # The station erased the partition afterwards (the faulty flash still flips a bit here and there).
    left = model.flash.read(DEFAULT_NVS_OFFSET, DEFAULT_NVS_SIZE)
    assert left.count(0xFF) > 0.99 * DEFAULT_NVS_SIZE


def test_esp32_family_reports_a_silent_unit(tmp_path: Path) -> None:
    model = Esp32RomDevice(tmp_path, mac=MAC, faults=Faults(silent=True))
    with PtyDevice(model) as device, Esp32Flasher(device.port, **PTY_OPTIONS) as flasher:
        started = time.monotonic()
        with pytest.raises(DeviceNotAnswering):
            flasher.identify()
        assert time.monotonic() - started < 20


def test_faults_parse() -> None:
    assert Faults.parse(["silent", "disconnect_on_write=3"]) == Faults(silent=True, disconnect_on_write=3)
    with pytest.raises(ValueError, match="unknown fault"):
        Faults.parse(["bogus"])


# ------------------------------------------------------------------------------------------- station sim


def test_station_sim_esp32_prints_the_port_first_and_serves_esptool(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "station.cli",
            "sim",
            "esp32",
            "--state-dir",
            str(tmp_path),
            "--mac",
            MAC.hex(),
            "--no-pace",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), port
        identified = esptool(port, "chip-id")
        assert identified.returncode == 0, identified.stdout + identified.stderr
        assert "24:0a:c4:a1:b2:c3" in identified.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert flash_file(tmp_path, MAC).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


# ------------------------------------------------------------------------------------- esp_secure_cert


def _secure_cert_identity() -> tuple[str, str, str]:
    identity = new_identity("esp32-secure-cert-unit")
    assert identity.private_key is not None
    return (
        identity.certificate_pem,
        identity.private_key.reveal().decode(),
        new_identity("ca").certificate_pem,
    )


def test_esp_secure_cert_partition_written_by_esptool_reads_back_and_parses(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert, key, ca = _secure_cert_identity()
    image = build_secure_cert_image(cert, key, ca)
    assert len(image) == SECURE_CERT_SIZE
    image_file = tmp_path / "esp_secure_cert.bin"
    image_file.write_bytes(image)
    model = Esp32RomDevice(tmp_path / "state", mac=MAC, esp_secure_cert=True)
    with PtyDevice(model) as device:
        offset = hex(DEFAULT_SECURE_CERT_OFFSET)
        assert esptool(device.port, "write-flash", offset, str(image_file)).returncode == 0
        verified = esptool(device.port, "verify-flash", offset, str(image_file))
        assert verified.returncode == 0 and "digest matched" in verified.stdout
        back = tmp_path / "back.bin"
        assert esptool(device.port, "read-flash", offset, hex(SECURE_CERT_SIZE), str(back)).returncode == 0
    assert back.read_bytes() == image
    tlvs = parse_secure_cert(back.read_bytes())
    assert tlvs[TLV_DEV_CERT].rstrip(b"\x00").decode() == cert
    assert tlvs[TLV_CA_CERT].rstrip(b"\x00").decode() == ca
    stored_key = load_pem_private_key(tlvs[TLV_PRIV_KEY].rstrip(b"\x00"), None)
    assert stored_key.public_key() == load_pem_private_key(key.encode(), None).public_key()


def test_a_damaged_tlv_is_detected_by_its_crc() -> None:
    cert, key, _ = _secure_cert_identity()
    image = bytearray(build_secure_cert_image(cert, key))
    image[40] ^= 0x01  # inside the device certificate
    with pytest.raises(ValueError, match="CRC"):
        parse_secure_cert(bytes(image))


def test_esp32_family_provisions_esp_secure_cert_over_the_pty(tmp_path: Path) -> None:
    ca = new_identity("ca").certificate_pem
    model = Esp32RomDevice(tmp_path, mac=MAC, esp_secure_cert=True)
    identity = new_identity("esp32-secure-cert-family")
    with PtyDevice(model) as device:
        with Esp32Flasher(device.port, identity_format="esp_secure_cert", **PTY_OPTIONS) as flasher:
            flasher.identify()
            flasher.write_identity(identity, ca_pem=ca)
        # This unit has no NVS partition at 0x9000/0x6000: the NVS format is refused before any write.
        with (
            Esp32Flasher(device.port, **PTY_OPTIONS) as nvs_flasher,
            pytest.raises(UnitFault, match="no NVS"),
        ):
            nvs_flasher.identify()
    tlvs = parse_secure_cert(model.flash.read(DEFAULT_SECURE_CERT_OFFSET, SECURE_CERT_SIZE))
    assert tlvs[TLV_DEV_CERT].rstrip(b"\x00").decode() == identity.certificate_pem
    assert model.flash.read(DEFAULT_NVS_OFFSET, 0x4000) == b"\xff" * 0x4000  # NVS untouched


def test_esp_secure_cert_on_a_unit_without_that_partition_is_refused(
    unit: tuple[str, Esp32RomDevice],
) -> None:
    port, model = unit
    with (
        Esp32Flasher(port, identity_format="esp_secure_cert", **PTY_OPTIONS) as flasher,
        pytest.raises(UnitFault) as caught,
    ):
        flasher.identify()
    assert "esp_secure_cert partition" in caught.value.message
    assert model.flash.read(DEFAULT_SECURE_CERT_OFFSET, 0x1000) == b"\xff" * 0x1000


@pytest.mark.parametrize(
    "variant", ["esp_secure_cert_ds", "esp_secure_cert_ecdsa_peripheral", "esp_secure_cert_hmac"]
)
def test_ds_and_efuse_variants_are_refused_before_the_port_is_touched(variant: str) -> None:
    with pytest.raises(StationFault) as caught:
        Esp32Flasher("/dev/null-never-opened", identity_format=variant)
    assert caught.value.title == "Identity format not supported"
    assert "eFuse" in caught.value.message and "never" in caught.value.message


def test_tlvs_equal_what_esp_secure_cert_tool_makes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Espressif's own TLV code (PyPI esp-secure-cert-tool; not a dependency: run with
    `uv run --with esp-secure-cert-tool pytest …`) builds the same bytes from the same files."""
    tlv_format = pytest.importorskip("esp_secure_cert.tlv_format")
    cert, key, ca = _secure_cert_identity()
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "ca.pem").write_text(ca)
    (tmp_path / "key.pem").write_text(key)  # a test key, in a test's temporary folder
    out = tmp_path / "tool.bin"
    priv = tlv_format.tlv_priv_key_t(
        tlv_format.tlv_priv_key_type_t.ESP_SECURE_CERT_DEFAULT_FORMAT_KEY, str(tmp_path / "key.pem"), None
    )
    tlv_format.generate_partition_no_ds(
        priv, str(tmp_path / "cert.pem"), str(tmp_path / "ca.pem"), "esp32", str(out)
    )
    assert build_secure_cert_image(cert, key, ca) == out.read_bytes()
