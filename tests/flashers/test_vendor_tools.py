"""Nordic's own host tools, as shipped on PyPI, against the nRF91 simulator on a real pty (issue 5's claim that
the simulators follow the vendors' documents closely enough for the vendors' tools to work unmodified).

- `nrfcredstore` (its console script, a subprocess): list, write a certificate to a sec_tag, list again and find
  it with the SHA-256 the tool's own code computes for that file, filtered list, delete, the tool's message for
  the modem's `+CME ERROR: 513`, `imei`, and `generate` (KEYGEN → the CSR in DER, matching the key the modem
  kept); also against `station sim nrf91` as a process, the way an operator would try it.
- nrfcloud-utils' `device_credentials_installer` (its console script): the device-made key flow (KEYGEN → its
  parser reads the COSE attestation → CSR signed by a test CA → CA and certificate written → verified by the
  modem's SHA-256 list) and the host-made key flow (`--local-cert`: the key is written too, CRLF line ends).

One shim, outside the tools: both accept a port only if pyserial's port enumeration
(`serial.tools.list_ports.comports()`) lists it, and on Linux that walks /dev/ttyS*, ttyUSB*, ttyACM*, ... (the
USB CDC port of a real DK), never a pty. A `sitecustomize` on the subprocess' PYTHONPATH appends the pty to
that list; every line of the tools' own code runs as shipped. Nothing here needs a J-Link: nrfcredstore imports
pynrfjprog at import time but only uses it for RTT. Test keys live in tmp_path only.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flashers.nrf91 import DEFAULT_SEC_TAG
from flashers.simulators.nrf91 import Nrf91Modem, new_imei
from flashers.simulators.pty import PtyDevice

TOOL_TIMEOUT_S = 60.0  # one tool run; each takes about a second here
PTY_ENV = "STATION_TEST_VENDOR_PTY"

# Appends the simulator's pty to pyserial's port list (see the module docstring); nothing else.
_SITECUSTOMIZE = f'''
import os

_pty = os.environ.get("{PTY_ENV}")
if _pty:
    from serial.tools import list_ports, list_ports_common

    _platform_comports = list_ports.comports

    def _comports(include_links=False):
        return [*_platform_comports(include_links), list_ports_common.ListPortInfo(_pty)]

    list_ports.comports = _comports
'''


@dataclass
class Run:
    """What one tool run ended with."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[tuple[Nrf91Modem, str]]:
    """A fresh unit, online (CFUN 1) as after power-on, on a pty paced at 115200 baud like the DK's UART."""
    model = Nrf91Modem(tmp_path / "flash", imei=new_imei())
    device = PtyDevice(model, baudrate=115200, pace=True).start()
    try:
        yield model, device.port
    finally:
        device.stop()


@pytest.fixture
def tool(tmp_path: Path) -> Callable[..., Run]:
    """Runs one of the vendors' console scripts from this environment against a pty."""
    shim = tmp_path / "vendor-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
    bin_dir = str(Path(sys.executable).parent)

    def run(script: str, *args: str, port: str) -> Run:
        exe = shutil.which(script, path=bin_dir)
        assert exe is not None, f"{script} is not installed beside {sys.executable} (dev dependency group)"
        env = dict(os.environ)
        env[PTY_ENV] = port
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH", "")) if p)
        env["NO_COLOR"] = "1"
        done = subprocess.run(
            [exe, *args],
            cwd=tmp_path,  # the installer writes its CSV (and --save files) relative to here
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    return run


def credstore(tool: Callable[..., Run], port: str, *args: str) -> Run:
    """`nrfcredstore <port> <args...>`."""
    return tool("nrfcredstore", port, *args, port=port)


def listed(run: Run) -> list[tuple[int, str, str]]:
    """The rows of `nrfcredstore list`: (sec_tag, key type name, SHA-256 as the tool printed it)."""
    assert run.returncode == 0, run.output
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["Secure", "tag", "Key"])
    rows = []
    for line in lines[header + 1 :]:
        tag, kind, sha = line.split()
        rows.append((int(tag), kind, sha))
    return rows


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path) -> tuple[Path, Path, x509.Certificate]:
    """A throwaway P-256 CA: certificate and unencrypted key as PEM files (the installer's --ca/--ca-key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("vendor-tools test CA"))
        .issuer_name(_name("vendor-tools test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca_pem = directory / "ca.pem"
    ca_key = directory / "ca_key.pem"
    ca_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, ca_key, cert


def leaf_pem(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def public_der(key_or_cert: object) -> bytes:
    public = key_or_cert.public_key()  # type: ignore[attr-defined]
    return bytes(
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


# ------------------------------------------------------------------------------------------- nrfcredstore


def test_nrfcredstore_lists_writes_proves_and_deletes(
    modem: tuple[Nrf91Modem, str], tool: Callable[..., Run], tmp_path: Path
) -> None:
    from nrfcredstore.command_interface import ATCommandInterface

    model, port = modem
    tag = DEFAULT_SEC_TAG
    assert model.cfun == 1

    assert listed(credstore(tool, port, "list")) == []
    assert model.cfun == 4  # the tool took the modem offline itself before touching credentials

    pem = leaf_pem("nrfcredstore-unit")
    cert_file = tmp_path / "client.pem"
    cert_file.write_text(pem, encoding="utf-8")
    written = credstore(tool, port, "write", str(tag), "CLIENT_CERT", str(cert_file))
    assert written.returncode == 0, written.output
    assert model.flash.get(tag, 1) == pem.rstrip()  # the tool sends the file without trailing whitespace

    ca = leaf_pem("another tag's root")
    ca_file = tmp_path / "root.pem"
    ca_file.write_text(ca, encoding="utf-8")
    assert credstore(tool, port, "write", "7", "ROOT_CA_CERT", str(ca_file)).returncode == 0

    # The hash the tool's own code expects for each credential is the one the modem lists.
    hash_of = ATCommandInterface(None).calculate_expected_hash
    expected = hash_of(pem.rstrip())
    assert re.fullmatch(r"[0-9A-F]{64}", expected)
    assert listed(credstore(tool, port, "list")) == [
        (7, "ROOT_CA_CERT", hash_of(ca.rstrip())),
        (tag, "CLIENT_CERT", expected),
    ]
    only = credstore(tool, port, "list", "--tag", str(tag), "--type", "CLIENT_CERT")
    assert listed(only) == [(tag, "CLIENT_CERT", expected)]

    deleted = credstore(tool, port, "delete", str(tag), "CLIENT_CERT")
    assert deleted.returncode == 0, deleted.output
    assert model.flash.get(tag, 1) is None
    assert model.flash.get(7, 0) == ca.rstrip()

    # Deleting again: the modem answers +CME ERROR: 513 (the tool turned CMEE on), which the tool names.
    again = credstore(tool, port, "delete", str(tag), "CLIENT_CERT")
    assert again.returncode != 0
    assert "AT command error: Not found" in again.output, again.output


def test_nrfcredstore_reads_the_imei_and_generates_a_key_in_the_modem(
    modem: tuple[Nrf91Modem, str], tool: Callable[..., Run], tmp_path: Path
) -> None:
    model, port = modem
    imei = credstore(tool, port, "imei")
    assert imei.returncode == 0, imei.output
    assert imei.stdout.splitlines() == [f"IMEI: {model.imei}"]

    csr_file = tmp_path / "unit.csr.der"
    generated = credstore(tool, port, "generate", "42", str(csr_file))
    assert generated.returncode == 0, generated.output
    csr = x509.load_der_x509_csr(csr_file.read_bytes())
    assert csr.is_signature_valid
    # Without attributes the modem names the request after its own UUID, as a real one does.
    assert csr.subject == _name(model.flash.uuid)
    kept = serialization.load_pem_private_key((model.flash.get(42, 2) or "").encode("ascii"), None)
    assert public_der(kept) == public_der(csr)
    rows = listed(credstore(tool, port, "list", "--tag", "42"))
    assert [(t, kind) for t, kind, _ in rows] == [(42, "CLIENT_KEY")]


def test_nrfcredstore_against_station_sim_as_a_process(tool: Callable[..., Run], tmp_path: Path) -> None:
    imei = new_imei()
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "sim", "nrf91", "--state-dir", str(tmp_path), "--imei", imei],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30.0
        ready: list[object] = []
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        assert ready, "station sim nrf91 printed no port"
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), port
        answered = credstore(tool, port, "imei")
        assert answered.returncode == 0, answered.output
        assert answered.stdout.splitlines() == [f"IMEI: {imei}"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


# ---------------------------------------------------------------------- nrfcloud-utils credentials installer


def test_nrfcloud_installer_device_made_key(
    modem: tuple[Nrf91Modem, str], tool: Callable[..., Run], tmp_path: Path
) -> None:
    model, port = modem
    ca_pem, ca_key, ca_cert = make_ca(tmp_path)
    run = tool(
        "device_credentials_installer",
        *("--port", port, "--cmd-type", "at", "--ca", str(ca_pem), "--ca-key", str(ca_key)),
        *("--id-imei", "--verify", "--plain", "--csv", "onboard.csv"),
        port=port,
    )
    assert run.returncode == 0, run.output
    assert "Credential verification: PASS" in run.output, run.output
    # Its parser read the modem's COSE attestation: device UUID and the digest of the CSR it signs.
    assert f"Dev UUID:   {uuid.UUID(model.flash.uuid)}" in run.output, run.output
    assert f"sec_tag:    {DEFAULT_SEC_TAG}" in run.output, run.output
    assert "COSE digest matches payload" in run.output, run.output

    tag = DEFAULT_SEC_TAG
    cert = x509.load_pem_x509_certificate((model.flash.get(tag, 1) or "").encode("ascii"))
    assert cert.subject == _name(model.imei)
    cert.verify_directly_issued_by(ca_cert)
    kept = serialization.load_pem_private_key((model.flash.get(tag, 2) or "").encode("ascii"), None)
    assert public_der(kept) == public_der(cert)  # signed for the key that never left the modem
    x509.load_pem_x509_certificates((model.flash.get(tag, 0) or "").encode("ascii"))  # the tool's CA bundle
    with (tmp_path / "onboard.csv").open(newline="") as rows:
        onboarded = list(csv.reader(rows))
    assert len(onboarded) == 1 and onboarded[0][0] == model.imei
    assert x509.load_pem_x509_certificate(onboarded[0][4].encode("ascii")) == cert


def test_nrfcloud_installer_host_made_key(
    modem: tuple[Nrf91Modem, str], tool: Callable[..., Run], tmp_path: Path
) -> None:
    model, port = modem
    ca_pem, ca_key, _ = make_ca(tmp_path)
    out = tmp_path / "out"
    run = tool(
        "device_credentials_installer",
        *("--port", port, "--cmd-type", "at", "--ca", str(ca_pem), "--ca-key", str(ca_key)),
        *("--local-cert", "--id-str", "unit-7", "--delete", "--verify", "--plain", "--csv", "onboard.csv"),
        *("--save", "--path", f"{out}/"),
        port=port,
    )
    assert run.returncode == 0, run.output
    assert "Credential verification: PASS" in run.output, run.output
    tag = DEFAULT_SEC_TAG
    key_text = model.flash.get(tag, 2) or ""
    assert "\r\n" in key_text  # the tool writes CRLF line ends inside the quotes; the modem keeps them
    saved = (out / "unit-7_prv.pem").read_text(encoding="ascii")
    assert key_text == saved.replace("\r", "").replace("\n", "\r\n")
    cert = x509.load_pem_x509_certificate((model.flash.get(tag, 1) or "").encode("ascii"))
    assert cert.subject == _name("unit-7")
    assert public_der(serialization.load_pem_private_key(key_text.encode("ascii"), None)) == public_der(cert)
