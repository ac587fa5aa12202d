"""Labels: the ZPL a printer receives over raw TCP carries the unit's fields and a QR symbol that decodes back
to the configured payload (decoded from the received bytes with zxing-cpp, not from the station's own data)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image

from station.errors import InputError
from station.labels import Label, LabelError, check_payload_template, preview_text, print_label, render_zpl

LABEL = Label(
    thing_name="sensor-SN004217",
    serial="SN004217",
    certificate_id="3f9a" + "0" * 60,
    date="2026-12-05",
    station_id="line1-st3",
)


class ZebraListener:
    """A raw TCP 9100-style listener on 127.0.0.1 that keeps every job it receives."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.port = self.server.getsockname()[1]
        self.jobs: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # One connection per label, as a Zebra's raw port takes them, until close() or 10 s of silence.
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                self.jobs.append(b"".join(chunks))

    def close(self, expected: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.jobs) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.server.close()
        self.thread.join(10)
        return self.jobs


def decode_qr_from_zpl(zpl: str) -> str:
    """Rebuild the ^GFA bitmap the printer would print and decode the QR symbol in it."""
    match = re.search(r"\^GFA,(\d+),(\d+),(\d+),([0-9A-F]+)", zpl)
    assert match, "no graphic field in the label"
    total, row_bytes, data = int(match[1]), int(match[3]), match[4]
    assert len(data) == total * 2
    rows = [data[i : i + row_bytes * 2] for i in range(0, len(data), row_bytes * 2)]
    width = row_bytes * 8
    quiet = 16
    image = Image.new("L", (width + 2 * quiet, len(rows) + 2 * quiet), 255)
    for y, row in enumerate(rows):
        bits = bin(int(row, 16))[2:].zfill(width)
        for x, bit in enumerate(bits):
            if bit == "1":
                image.putpixel((x + quiet, y + quiet), 0)
    found = zxingcpp.read_barcodes(image)
    assert found, "no QR symbol could be read from the label"
    return str(found[0].text)


def test_a_label_sent_to_a_zebra_port_carries_the_unit_and_a_qr_that_decodes_to_the_payload() -> None:
    listener = ZebraListener()
    template = "https://example.com/u/{serial}?c={certificate_id}"
    print_label(render_zpl(LABEL, template), f"tcp://127.0.0.1:{listener.port}", timeout_s=5)
    (job,) = listener.close()
    zpl = job.decode("utf-8")
    assert zpl.startswith("^XA") and zpl.rstrip().endswith("^XZ")
    assert "sensor-SN004217" in zpl and "SN SN004217" in zpl and "cert 3f9a00000000" in zpl
    assert decode_qr_from_zpl(zpl) == f"https://example.com/u/SN004217?c={LABEL.certificate_id}"


def test_field_data_cannot_end_the_field_or_the_label() -> None:
    hostile = Label("thing^XZ~", "SN_1", "ab" * 32, "2026-12-05")
    zpl = render_zpl(hostile, "{serial}")
    assert zpl.count("^XZ") == 1
    assert "thing_5EXZ_7E" in zpl and "SN SN_5F1" in zpl
    assert decode_qr_from_zpl(zpl) == "SN_1"


def test_an_unreachable_printer_is_a_station_fault_that_says_what_to_do() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LabelError) as caught:
        print_label(render_zpl(LABEL), f"tcp://127.0.0.1:{port}", timeout_s=2)
    assert f"127.0.0.1:{port}" in caught.value.message
    assert "reprint" in caught.value.next_action


def test_a_cups_queue_gets_the_label_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in `lp` on PATH that records its arguments and stdin, as CUPS' lp would receive them.
    fake = tmp_path / "lp"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncat > {tmp_path}/job\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    print_label(render_zpl(LABEL), "lp://zebra-line1")
    assert (tmp_path / "args").read_text().split() == ["-d", "zebra-line1", "-o", "raw"]
    assert decode_qr_from_zpl((tmp_path / "job").read_text()) == "sensor-SN004217"


def test_a_file_printer_appends_one_label_per_unit(tmp_path: Path) -> None:
    out = tmp_path / "labels.zpl"
    print_label(render_zpl(LABEL), f"file:{out}")
    print_label(render_zpl(LABEL), str(out))
    assert out.read_text().count("^XA") == 2


def test_payload_templates_name_known_fields_only() -> None:
    assert check_payload_template("{thing_name}/{serial}") is None
    assert "unknown field" in (check_payload_template("{key}") or "")
    with pytest.raises(InputError):
        render_zpl(LABEL, "{private_key}")
    with pytest.raises(InputError, match="too long"):
        render_zpl(LABEL, "x" * 600)


def test_the_preview_shows_the_fields_and_a_symbol() -> None:
    text = preview_text(LABEL)
    assert text.splitlines()[:2] == ["sensor-SN004217", "SN SN004217"]
    assert "█" in text


# ---------------------------------------------------------------------------------------------------------
# Through the station: `station provision` on a simulated PROV/1 unit against the lab prints the PASS's label.
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Any, Any, int]]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "pipeline"))
    try:
        from cloud_rig import REGION
    finally:
        sys.path.remove(str(Path(__file__).parent / "pipeline"))
    from station.lab.control import DEFAULT_ACCOUNT_ID, ControlPlane
    from station.lab.dataplane import DataPlane

    with ControlPlane(throttling=False) as plane, tempfile.TemporaryDirectory() as state:
        data = DataPlane({(DEFAULT_ACCOUNT_ID, REGION): 0}, Path(state))
        data.start()
        try:
            yield plane, data, data.port_for(DEFAULT_ACCOUNT_ID, REGION)
        finally:
            data.stop()


def provision_with_labels(
    lab: tuple[Any, Any, int], tmp_path: Path, serial: str, printer: str
) -> dict[str, Any]:
    import json
    import sys

    from flashers.simulators.prov1 import Prov1Device
    from flashers.simulators.pty import PtyDevice
    from station.cli import main

    sys.path.insert(0, str(Path(__file__).parent / "pipeline"))
    try:
        from cloud_rig import write_config
    finally:
        sys.path.remove(str(Path(__file__).parent / "pipeline"))
    plane, data, port = lab
    config = write_config(
        tmp_path, plane.endpoint_url, data_port=port, ca_file=str(data.ca_file), key_source="station"
    )
    text = config.read_text().replace(
        'ledger = "ledger.sqlite"\n',
        f'ledger = "ledger.sqlite"\n\n[station.labels]\nprinter = "{printer}"\nqr_payload = "{{thing_name}}|{{serial}}"\ntimeout_s = 2\n',
        1,
    )
    config.write_text(text)
    with PtyDevice(Prov1Device(tmp_path / "unit", device_id=serial)) as device:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(
                ["provision", "--port", device.port, "--serial", serial, "--config", str(config), "--json"]
            )
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    result["exit_code"] = code
    return result


@pytest.mark.lab
def test_a_pass_on_the_line_prints_its_label_to_the_zebra_port(lab: Any, tmp_path: Path) -> None:
    listener = ZebraListener()
    serial = "SIM731904"
    result = provision_with_labels(lab, tmp_path, serial, f"tcp://127.0.0.1:{listener.port}")
    assert result["outcome"] == "PASS", result
    (job,) = listener.close()
    zpl = job.decode()
    assert f"SN {serial}" in zpl and f"cert {result['certificate_id'][:12]}" in zpl
    assert decode_qr_from_zpl(zpl) == f"{result['thing_name']}|{serial}"


@pytest.mark.lab
def test_a_printer_that_is_down_leaves_the_pass_and_records_why_there_is_no_label(
    lab: Any, tmp_path: Path
) -> None:
    from station.ledger import open_ledger

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    serial = "SIM731905"
    result = provision_with_labels(lab, tmp_path, serial, f"tcp://127.0.0.1:{dead}")
    assert result["outcome"] == "PASS" and result["exit_code"] == 0
    with open_ledger(tmp_path / "ledger.sqlite") as ledger:
        notes = [e.event for e in ledger.events() if e.event.kind == "note" and e.event.step == "label"]
    assert [n.data.get("serial") for n in notes] == [serial]
    assert f"127.0.0.1:{dead}" in notes[0].message


def test_label_settings_are_checked_with_file_line_and_field(tmp_path: Path) -> None:
    import sys

    from station.config import load_config
    from station.errors import ConfigError

    sys.path.insert(0, str(Path(__file__).parent / "pipeline"))
    try:
        from cloud_rig import write_config
    finally:
        sys.path.remove(str(Path(__file__).parent / "pipeline"))
    config = write_config(tmp_path, "http://127.0.0.1:9")
    base = config.read_text()
    table = '\n[station.labels]\nprinter = "tcp://zebra-1:9100"\nqr_payload = "{serial}"\n'
    config.write_text(base.replace('ledger = "ledger.sqlite"\n', 'ledger = "ledger.sqlite"\n' + table, 1))
    labels = load_config(config).labels
    assert labels is not None and labels.printer == "tcp://zebra-1:9100" and labels.qr_payload == "{serial}"
    config.write_text(config.read_text().replace('"{serial}"', '"{private_key}"'))
    with pytest.raises(ConfigError, match=r"station.toml:\d+: \[station.labels\] qr_payload: unknown field"):
        load_config(config)


@pytest.mark.lab
def test_the_headless_demo_prints_a_label_for_each_pass_and_none_for_a_fail(tmp_path: Path) -> None:
    import json

    from station.cli import main

    listener = ZebraListener()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "demo",
                "--headless",
                "--json",
                "--slots",
                "1",
                "--units",
                "3",
                "--fault-every",
                "3",
                "--state-dir",
                str(tmp_path),
                "--printer",
                f"tcp://127.0.0.1:{listener.port}",
            ]
        )
    units = json.loads(out.getvalue())["units"]
    passed = [u for u in units if u["outcome"] == "PASS"]
    assert code == 0 and len(passed) == 2 and len(units) == 3
    jobs = listener.close(expected=2)
    printed = sorted(decode_qr_from_zpl(job.decode()) for job in jobs)
    assert printed == sorted(u["thing_name"] for u in passed)
