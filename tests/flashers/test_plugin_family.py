"""A device family installed by another package plugs in: the config accepts it, `station flashers` lists it
and `station provision` PASSes a unit through it against the lab.

The throw-away package lives in a temporary folder with its own `.dist-info` (METADATA + entry_points.txt), put
on the path of a fresh `station` process, exactly as an installed third-party wheel would be seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAMILY = "acme-widget"

PLUGIN_MODULE = '''
"""A third party's device family: the acme widget speaks PROV/1 firmware with its own family name."""

from flashers.prov1 import Prov1Flasher


class AcmeWidgetFlasher(Prov1Flasher):
    family = "acme-widget"
'''


def install_plugin(site: Path) -> None:
    (site / "acme_widget_flasher.py").write_text(PLUGIN_MODULE)
    dist = site / "acme_widget_flasher-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-widget-flasher\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[station.flashers]\n{FAMILY} = acme_widget_flasher:AcmeWidgetFlasher\n"
    )


def station(site: Path | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [str(Path(sys.executable).with_name("station")), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    install_plugin(folder)
    return folder


@pytest.fixture(scope="module")
def plane() -> Iterator[Any]:
    from station.lab.control import ControlPlane

    with ControlPlane(throttling=False) as control:
        yield control


def write_station_toml(tmp_path: Path, plane: Any, family: str) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "pipeline"))
    try:
        from cloud_rig import write_config
    finally:
        sys.path.remove(str(ROOT / "tests" / "pipeline"))
    path = write_config(tmp_path, plane.endpoint_url, key_source="station")
    path.write_text(path.read_text().replace('flasher = "prov1"', f'flasher = "{family}"'))
    return path


def test_station_flashers_lists_the_installed_family(site: Path, tmp_path: Path) -> None:
    listed = station(site, "flashers", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert FAMILY in json.dumps(json.loads(listed.stdout))
    without = station(None, "flashers", "--json", cwd=tmp_path)
    assert FAMILY not in without.stdout


def test_the_config_refuses_the_family_when_the_package_is_not_installed(plane: Any, tmp_path: Path) -> None:
    config = write_station_toml(tmp_path, plane, FAMILY)
    done = station(
        None,
        "provision",
        "--port",
        "loop://x",
        "--serial",
        "SIM000001",
        "--config",
        str(config),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert FAMILY in done.stderr and "flasher" in done.stderr


@pytest.mark.lab
def test_a_unit_passes_through_the_plugged_in_family(plane: Any, site: Path, tmp_path: Path) -> None:
    from flashers.simulators.prov1 import Prov1Device
    from flashers.simulators.pty import PtyDevice
    from station.lab.dataplane import DataPlane

    sys.path.insert(0, str(ROOT / "tests" / "pipeline"))
    try:
        from cloud_rig import REGION
    finally:
        sys.path.remove(str(ROOT / "tests" / "pipeline"))
    from station.lab.control import DEFAULT_ACCOUNT_ID

    data = DataPlane({(DEFAULT_ACCOUNT_ID, REGION): 0}, tmp_path / "data")
    data.start()
    serial = "SIM424242"
    model = Prov1Device(tmp_path / "unit", device_id=serial)
    try:
        with PtyDevice(model) as device:
            config = write_station_toml(tmp_path, plane, FAMILY)
            text = config.read_text().replace(
                "port = 8883", f"port = {data.port_for(DEFAULT_ACCOUNT_ID, REGION)}"
            )
            text = text.replace("[targets.lab]\n", f'[targets.lab]\nca_file = "{data.ca_file}"\n', 1)
            config.write_text(text)
            done = station(
                site,
                "provision",
                "--port",
                device.port,
                "--serial",
                serial,
                "--config",
                str(config),
                "--json",
                cwd=tmp_path,
            )
    finally:
        data.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "PASS"
    assert result["serial"] == serial
    iot = plane.client("iot", region=REGION)
    status = iot.describe_certificate(certificateId=result["certificate_id"])["certificateDescription"][
        "status"
    ]
    assert status == "ACTIVE"
    from station.ledger import open_ledger

    # This test process does not have the plugin installed, so it reads the ledger without the config.
    with open_ledger(tmp_path / "ledger.sqlite") as ledger:
        (record,) = ledger.find(serial)
    assert record.family == FAMILY
