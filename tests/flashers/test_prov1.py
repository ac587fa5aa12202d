"""PROV/1: the shared flasher contract (fixtures only) plus the protocol's own tests, all through real ptys.

Covers the frame codec, the device's replay cache (a lost `OK END` / `OK COMMIT` is harmless), offset resync,
limits, wire-time pacing against theory, timeouts derived from the baud rate, `station sim prov1` as a process,
and the device-side CHECK against the lab (skipped when the lab is not importable).
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flasher_contract import FlasherContract, key_text, sha256_text

from flashers.base import DeviceDisconnected, DeviceNotAnswering, Flasher, ProofMismatch
from flashers.prov1 import (
    MAX_LINE,
    FrameError,
    Prov1Flasher,
    Timing,
    crc16,
    decode_frame,
    encode_frame,
)
from flashers.serialio import wire_time
from flashers.simulators.prov1 import Faults, Prov1Device, flash_path
from flashers.simulators.pty import PtyDevice
from station.errors import StationFault
from station.identity import new_identity, sign_csr
from station.model import Identity

QUICK = Timing(floor_s=0.05)  # test-short timeouts: a spurious one only costs a replayed answer


# ------------------------------------------------------------------------------------------------ harness


class Prov1Handle:
    """One simulated PROV/1 unit on a pty, as the contract sees it."""

    def __init__(
        self, state_dir: Path, device_id: str, faults: Faults, *, pace: bool = False, baudrate: int = 115200
    ) -> None:
        self.state_dir = state_dir
        self.device_id: str | None = device_id
        self.model = Prov1Device(state_dir, device_id=device_id, faults=faults)
        self.device = PtyDevice(self.model, baudrate=baudrate, pace=pace).start()
        self.port = self.device.port

    def live(self) -> dict[str, str | None]:
        # Read the flash file as a test acting as the device would, not the model's memory.
        data = json.loads(self.model.flash_path.read_text(encoding="utf-8"))
        return {"cert": data["cert"], "key": data["key"], "ca": data["ca"]}

    def staged(self) -> tuple[str, ...]:
        return self.model.staged_slots()

    def set_faults(self, **faults: Any) -> None:
        self.model.faults = _faults(faults)

    def restart(self) -> Prov1Handle:
        self.stop()
        assert self.device_id is not None
        again = Prov1Handle(self.state_dir, self.device_id, Faults())
        _HANDLES.append(again)
        return again

    def stop(self) -> None:
        self.device.stop()


_HANDLES: list[Prov1Handle] = []


def _faults(spec: dict[str, Any] | None) -> Faults:
    spec = dict(spec or {})
    faults = Faults(seed=spec.pop("seed", None))
    if spec.pop("disconnect_mid_write", False):
        faults.disconnect = 6  # inside the first object (a P-256 key is 4 DATA frames), or the cert
    for name, value in spec.items():
        if not hasattr(faults, name):
            raise AssertionError(f"the PROV/1 simulator has no fault {name!r}")
        setattr(faults, name, value)
    return faults


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[Callable[..., Prov1Handle]]:
    handles: list[Prov1Handle] = []

    def make(faults: dict[str, Any] | None = None, pace: bool = False, baudrate: int = 115200) -> Prov1Handle:
        handle = Prov1Handle(
            tmp_path, f"SIM{uuid.uuid4().hex[:6].upper()}", _faults(faults), pace=pace, baudrate=baudrate
        )
        handles.append(handle)
        return handle

    yield make
    for handle in handles + _HANDLES:
        handle.stop()
    _HANDLES.clear()


@pytest.fixture
def open_flasher() -> Iterator[Callable[..., Prov1Flasher]]:
    opened: list[Prov1Flasher] = []

    def open_(port: str, quick: bool = True, **kwargs: Any) -> Prov1Flasher:
        flasher = Prov1Flasher(port, timing=QUICK if quick else None, **kwargs)
        opened.append(flasher)
        return flasher

    yield open_
    for flasher in opened:
        flasher.close()


@pytest.fixture
def flasher_class() -> type[Flasher]:
    return Prov1Flasher


class TestProv1Contract(FlasherContract):
    """PROV/1 passes the shared contract."""


# ------------------------------------------------------------------------------------------- frame codec


def test_frame_round_trip_and_crc() -> None:
    frame = encode_frame(0x2A, "HASH", "cert")
    assert frame.startswith(b"2a HASH cert*") and frame.endswith(b"\n")
    body = frame[: frame.rindex(b"*")]
    assert int(frame[-5:-1], 16) == crc16(body) == __import__("binascii").crc_hqx(body, 0)
    decoded = decode_frame(frame[:-1])
    assert decoded.seq == 0x2A and decoded.words == ("HASH", "cert")
    assert decode_frame(encode_frame(None, "ERR", "1", "CRC")[:-1]).seq is None


def test_every_single_byte_error_is_caught() -> None:
    line = encode_frame(7, "DATA", "64", base64.b64encode(bytes(range(64))).decode())[:-1]
    original = decode_frame(line)
    for i in range(len(line)):
        for replacement in (0x20, 0x2A, 0x41, 0x7A, 0xFF, line[i] ^ 0x01, line[i] ^ 0x80):
            if replacement == line[i]:
                continue
            damaged = line[:i] + bytes([replacement]) + line[i + 1 :]
            try:
                decoded = decode_frame(damaged)
            except FrameError:
                continue
            # Only a change of hex case in the CRC field may pass: it means the same number.
            assert decoded == original and damaged.lower() == line.lower(), (i, replacement)


@pytest.mark.parametrize(
    "line", [b"", b"hello", b"01 HELLO", b"01 HELLO*zzzz", b"\xff\xfe*0000", b"1 X*0000"]
)
def test_malformed_lines_are_frame_errors(line: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(line)


def test_arguments_cannot_break_the_framing() -> None:
    for bad in ("two words", "star*", "", "line\nend"):
        with pytest.raises(ValueError):
            encode_frame(1, "KEYGEN", bad)


def test_largest_frames_fit_the_line() -> None:
    data = encode_frame(0xFF, "DATA", "8191", base64.b64encode(bytes(64)).decode())
    read = encode_frame(0xFF, "OK", "READ", "cert", "8191", base64.b64encode(bytes(64)).decode())
    assert len(data) <= MAX_LINE and len(read) <= MAX_LINE


# ------------------------------------------------------------------------------------------ raw device


class RawHost:
    """A bare pyserial host for protocol-level checks (no retries, no interpretation)."""

    def __init__(self, port: str) -> None:
        self.serial = serial.serial_for_url(port, baudrate=115200, timeout=2.0)

    def ask(self, line: bytes) -> bytes:
        self.serial.write(line)
        reply = self.serial.readline()
        assert reply.endswith(b"\n"), "no reply within 2 s"
        return reply

    def close(self) -> None:
        self.serial.close()


@pytest.fixture
def raw_device(tmp_path: Path) -> Iterator[tuple[Prov1Device, RawHost]]:
    model = Prov1Device(tmp_path, device_id="RAW1")
    with PtyDevice(model) as device:
        host = RawHost(device.port)
        try:
            yield model, host
        finally:
            host.close()


def test_replay_cache_answers_a_repeated_frame_without_running_it_twice(
    raw_device: tuple[Prov1Device, RawHost],
) -> None:
    model, host = raw_device
    cert = b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n"
    host.ask(encode_frame(1, "HELLO"))
    host.ask(encode_frame(2, "BEGIN", "cert", str(len(cert)), sha256_text(cert)))
    host.ask(encode_frame(3, "DATA", "0", base64.b64encode(cert).decode()))
    end = encode_frame(4, "END")
    first = host.ask(end)
    assert decode_frame(first[:-1]).words[:2] == ("OK", "END")
    assert host.ask(end) == first  # a lost OK END: the retry gets the same answer, not ERR STATE
    commit = encode_frame(5, "COMMIT")
    ok = host.ask(commit)
    assert decode_frame(ok[:-1]).words == ("OK", "COMMIT")
    generation = json.loads(model.flash_path.read_text())["generation"]
    assert host.ask(commit) == ok
    assert json.loads(model.flash_path.read_text())["generation"] == generation  # committed once
    assert model.counters["replays"] == 2
    # Same seq, different frame: not a replay; a new COMMIT with nothing staged is refused.
    assert decode_frame(host.ask(encode_frame(6, "COMMIT"))[:-1]).words[:3] == ("ERR", "6", "STATE")


def test_device_rules_on_keys_offsets_and_sizes(raw_device: tuple[Prov1Device, RawHost]) -> None:
    model, host = raw_device

    def words(*frame_words: str, seq: int = 0) -> tuple[str, ...]:
        return decode_frame(host.ask(encode_frame(seq, *frame_words))[:-1]).words

    assert words("HASH", "key") == ("ERR", "5", "FORBIDDEN")  # a key is never read back
    assert words("READ", "key", "0", seq=1) == ("ERR", "5", "FORBIDDEN")
    assert words("BEGIN", "cert", "99999", "0" * 64, seq=2) == ("ERR", "7", "TOOBIG")
    assert words("BEGIN", "vault", "10", "0" * 64, seq=3)[:2] == ("ERR", "2")
    assert words("DATA", "0", "QUJD", seq=4) == ("ERR", "6", "STATE")  # no BEGIN
    assert words("BEGIN", "cert", "6", sha256_text(b"ABCDEF"), seq=5) == ("OK", "BEGIN")
    assert words("DATA", "3", "QUJD", seq=6) == ("ERR", "4", "OFFSET", "0")  # a gap: says where it stands
    assert words("DATA", "0", "QUJD", seq=7) == ("OK", "DATA", "3")
    assert words("DATA", "0", "QUJD", seq=8) == ("OK", "DATA", "3")  # duplicate re-acked, not appended
    assert words("DATA", "3", "REVG", seq=9) == ("OK", "DATA", "6")
    assert words("END", seq=10) == ("OK", "END", sha256_text(b"ABCDEF"))
    assert words("NOPE", seq=11) == ("ERR", "2", "SYNTAX")
    damaged = bytearray(encode_frame(12, "HELLO"))
    damaged[3] ^= 0x02
    assert decode_frame(host.ask(bytes(damaged))[:-1]).words == ("ERR", "1", "CRC")
    assert model.staged_slots() == ("cert",)
    assert words("WIPE", seq=13) == ("OK", "WIPE")
    assert model.staged_slots() == ()


def test_hello_starts_a_session_and_drops_what_an_earlier_host_left(
    raw_device: tuple[Prov1Device, RawHost],
) -> None:
    model, host = raw_device
    host.ask(encode_frame(1, "BEGIN", "cert", "3", sha256_text(b"abc")))
    host.ask(encode_frame(2, "DATA", "0", base64.b64encode(b"abc").decode()))
    host.ask(encode_frame(3, "END"))
    assert model.staged_slots() == ("cert",)
    hello = decode_frame(host.ask(encode_frame(4, "HELLO"))[:-1]).words
    assert hello[:2] == ("OK", "HELLO") and "id=RAW1" in hello and "proto=1" in hello
    assert model.staged_slots() == ()


# ------------------------------------------------------------------------------------------- host side


class LoseFirst(Prov1Device):
    """Loses the first reply to each listed verb (the command still runs): the replay cache must save it."""

    def __init__(self, *args: Any, verbs: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.to_lose = set(verbs)

    def handle_line(self, line: bytes, link: Any) -> None:
        try:
            verb = decode_frame(line).verb
        except FrameError:
            verb = ""
        if verb in self.to_lose:
            self.to_lose.discard(verb)
            self.faults = Faults(lose=1.0)
            try:
                super().handle_line(line, link)
            finally:
                self.faults = Faults()
            return
        super().handle_line(line, link)


def test_lost_end_and_commit_replies_are_recovered_by_replay(tmp_path: Path, identity: Identity) -> None:
    model = LoseFirst(tmp_path, device_id="LOSE1", verbs=("END", "COMMIT"))
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        proof = flasher.write_identity(identity)
    assert proof.retries == 2
    assert model.counters["replays"] == 2
    assert json.loads(model.flash_path.read_text())["generation"] == 1


def test_a_proof_mismatch_is_reported_not_committed(tmp_path: Path, identity: Identity) -> None:
    model = Prov1Device(tmp_path, device_id="BAD1", faults=Faults(bad_store=True))
    with (
        PtyDevice(model) as device,
        Prov1Flasher(device.port, timing=QUICK) as flasher,
        pytest.raises(ProofMismatch),
    ):
        flasher.write_identity(identity)
    assert json.loads(model.flash_path.read_text())["cert"] is None


def test_object_too_big_for_the_device_is_a_station_fault(tmp_path: Path) -> None:
    rsa_identity = new_identity("big-unit", key_type="rsa-3072")
    model = Prov1Device(tmp_path, device_id="SMALL1", slot_size=2048)
    with (
        PtyDevice(model) as device,
        Prov1Flasher(device.port, timing=QUICK) as flasher,
        pytest.raises(StationFault) as caught,
    ):
        flasher.write_identity(rsa_identity)
    assert "smaller key type" in caught.value.next_action
    assert model.staged_slots() == ()


def test_ca_is_written_and_proven_too(tmp_path: Path, identity: Identity) -> None:
    ca = new_identity("some-ca").certificate_pem
    model = Prov1Device(tmp_path, device_id="CA1")
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        proof = flasher.write_identity(identity, ca_pem=ca)
    assert proof.sha256_of("ca") == sha256_text(ca)
    assert json.loads(model.flash_path.read_text())["ca"] == ca


def test_wipe_keeps_credentials_from_before_the_session(tmp_path: Path, identity: Identity) -> None:
    model = Prov1Device(tmp_path, device_id="WIPE1")
    with PtyDevice(model) as device:
        with Prov1Flasher(device.port, timing=QUICK) as flasher:
            flasher.write_identity(identity)
        with Prov1Flasher(device.port, timing=QUICK) as flasher:
            flasher.wipe()  # this session committed nothing: the unit's earlier identity stays
        assert json.loads(model.flash_path.read_text())["cert"] == identity.certificate_pem
        with Prov1Flasher(device.port, timing=QUICK) as flasher:
            flasher.wipe(live=True)
        assert json.loads(model.flash_path.read_text())["cert"] is None


def test_install_certificate_needs_the_matching_device_key(tmp_path: Path, issuer: Any) -> None:
    model = Prov1Device(tmp_path, device_id="KG1")
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        with pytest.raises(StationFault):
            flasher.install_certificate(new_identity("x").certificate_pem)  # no keygen yet
        flasher.keygen("kg-1")
        other = sign_csr(_other_csr(), issuer, common_name="kg-1", days=30)
        with pytest.raises(StationFault) as caught:
            flasher.install_certificate(other)
        assert "not for the key the device made" in caught.value.message
        good = sign_csr(flasher._csr_pem or "", issuer, common_name="kg-1", days=30)
        proof = flasher.install_certificate(good)
    assert proof.sha256_of("cert") == sha256_text(good)
    assert model.staged_slots() == ()


def _other_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_timeouts_follow_the_baud_rate_with_a_floor(tmp_path: Path) -> None:
    model = Prov1Device(tmp_path, device_id="T1")
    frame_len = 110
    with (
        PtyDevice(model) as device,
        Prov1Flasher(device.port, baudrate=115200) as fast,
        Prov1Flasher(device.port, baudrate=1200, exclusive=False) as slow,
    ):
        # At 115200 a round trip is ~24 ms on the wire: the floor rules.
        assert fast._timeout(frame_len, 0.0) == pytest.approx(Timing().floor_s)
        # At 1200 baud two round trips on the wire are more than the floor: they rule.
        assert slow._timeout(frame_len, 0.0) == pytest.approx(2 * wire_time(frame_len + MAX_LINE, 1200))
        assert slow._timeout(frame_len, 0.0) > 1.0


def test_paced_write_takes_wire_time(make_device: Callable[..., Prov1Handle], identity: Identity) -> None:
    """With 115200-baud pacing the write cannot beat the wire, and costs little more than it."""
    device = make_device(pace=True)
    with Prov1Flasher(device.port) as flasher:
        proof = flasher.write_identity(identity)
    theory = wire_time(proof.wire_bytes, 115200)
    assert proof.retries == 0
    assert proof.duration_s >= 0.97 * theory
    assert proof.duration_s <= 2.0 * theory + 0.3  # generous: 2 shared cores may be busy with other tests


def test_disconnect_during_identify_is_a_unit_fault(tmp_path: Path) -> None:
    model = Prov1Device(tmp_path, device_id="D1")
    device = PtyDevice(model).start()
    try:
        with Prov1Flasher(device.port, timing=QUICK) as flasher:
            flasher.identify()
            device.disconnect()
            with pytest.raises(DeviceDisconnected):
                flasher.identify()
    finally:
        device.stop()


def test_silent_device_default_timing_bound(tmp_path: Path) -> None:
    """The real defaults (not test-short ones) report a silent unit within ~1.7 s: 4 tries with back-off."""
    model = Prov1Device(tmp_path, device_id="S1", faults=Faults(silent=True))
    with PtyDevice(model) as device, Prov1Flasher(device.port) as flasher:
        started = time.monotonic()
        with pytest.raises(DeviceNotAnswering):
            flasher.identify()
        elapsed = time.monotonic() - started
    t = Timing()
    expected = sum(t.floor_s * min(2**i, t.max_backoff) for i in range(t.first_contact_attempts))
    assert expected * 0.95 <= elapsed <= expected + 1.0


def test_faults_parse() -> None:
    faults = Faults.parse(["corrupt=0.05", "lose=0.1", "disconnect=7", "silent", "slow=0.2", "seed=3"])
    assert (faults.corrupt, faults.lose, faults.disconnect, faults.silent, faults.slow, faults.seed) == (
        0.05,
        0.1,
        7,
        True,
        0.2,
        3,
    )
    for bad in (["bogus"], ["corrupt=2"], ["disconnect"], ["lose=x"]):
        with pytest.raises(ValueError):
            Faults.parse(bad)


def test_flash_survives_a_restart(tmp_path: Path, identity: Identity) -> None:
    model = Prov1Device(tmp_path, device_id="R1")
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        flasher.write_identity(identity)
    again = Prov1Device(tmp_path, device_id="R1")
    assert again.live()["cert"] == identity.certificate_pem
    assert again.live()["key"] == key_text(identity)
    assert flash_path(tmp_path, "R1") == again.flash_path


# ----------------------------------------------------------------------------------------- station sim


def test_station_sim_prints_the_port_first_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "station.cli",
            "sim",
            "prov1",
            "--state-dir",
            str(tmp_path),
            "--device-id",
            "CLI1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), port
        with Prov1Flasher(port, timing=QUICK) as flasher:
            assert flasher.identify().device_id == "CLI1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert str(tmp_path / "prov1-CLI1.json") in proc.stderr.read()  # where the unit's flash lives
        assert json.loads((tmp_path / "prov1-CLI1.json").read_text())["device_id"] == "CLI1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_station_sim_rejects_an_unknown_fault(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "station.cli",
            "sim",
            "prov1",
            "--state-dir",
            str(tmp_path),
            "--fault",
            "bogus",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "bogus" in done.stderr


# ---------------------------------------------------------------------------------- device-side CHECK


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    control = pytest.importorskip("station.lab.control")
    dataplane = pytest.importorskip("station.lab.dataplane")
    plane = control.ControlPlane(throttling=False).start()
    data = None
    try:
        data = dataplane.DataPlane(
            {(control.DEFAULT_ACCOUNT_ID, control.DEFAULT_REGION): 0}, tmp_path_factory.mktemp("lab")
        )
        data.start()
        yield plane, data, data.port_for(control.DEFAULT_ACCOUNT_ID, control.DEFAULT_REGION)
    finally:
        if data is not None:
            data.stop()
        plane.stop()


ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
CONNECT_ONLY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
}


def _register(plane: Any, cert_pem: str, thing: str, policy_document: dict[str, Any] = ALLOW_ALL) -> None:
    iot = plane.client("iot")
    registered = iot.register_certificate_without_ca(certificatePem=cert_pem, status="ACTIVE")
    policy = f"check-{uuid.uuid4().hex[:8]}"
    iot.create_policy(policyName=policy, policyDocument=json.dumps(policy_document))
    iot.attach_policy(policyName=policy, target=registered["certificateArn"])
    iot.create_thing(thingName=thing)
    iot.attach_thing_principal(thingName=thing, principal=registered["certificateArn"])


@pytest.mark.lab
def test_device_check_against_the_lab(lab: Any, tmp_path: Path) -> None:
    plane, data, port = lab
    thing = f"check-{uuid.uuid4().hex[:8]}"
    unit = new_identity(thing)
    model = Prov1Device(tmp_path, device_id="CHK1", ca_file=data.ca_file)
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        flasher.write_identity(unit)
        # Not registered yet: the endpoint hangs up on the unknown certificate → the unit's fault.
        from flashers.base import DeviceCheckFailed

        with pytest.raises(DeviceCheckFailed):
            flasher.device_verify("localhost", port, thing, timeout_s=10)
        _register(plane, unit.certificate_pem, thing)
        flasher.device_verify("localhost", port, thing, timeout_s=10)


@pytest.mark.lab
def test_device_made_key_checks_against_the_lab(lab: Any, tmp_path: Path, issuer: Any) -> None:
    plane, data, port = lab
    thing = f"kg-{uuid.uuid4().hex[:8]}"
    model = Prov1Device(tmp_path, device_id="CHK2", ca_file=data.ca_file)
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        csr = flasher.keygen(thing)
        cert = sign_csr(csr, issuer, common_name=thing, days=30)
        flasher.write_identity(Identity(certificate_pem=cert, certificate_id="unused"))
        _register(plane, cert, thing)
        flasher.device_verify("localhost", port, thing, timeout_s=10)


@pytest.mark.lab
def test_device_check_unreachable_endpoint_is_a_station_fault(
    lab: Any, tmp_path: Path, identity: Identity
) -> None:
    _, data, _ = lab
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    model = Prov1Device(tmp_path, device_id="CHK3", ca_file=data.ca_file)
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        flasher.write_identity(identity)
        with pytest.raises(StationFault):
            flasher.device_verify("localhost", closed_port, "nobody", timeout_s=5)


class SilentAfterCommit(Prov1Device):
    """Commits, then the answer to COMMIT and everything after it are lost (the line went dead)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dead = False

    def handle_line(self, line: bytes, link: Any) -> None:
        if self.dead:
            return
        try:
            verb = decode_frame(line).verb
        except FrameError:
            verb = ""
        if verb == "COMMIT":
            self.faults = Faults(lose=1.0)
            super().handle_line(line, link)
            self.faults = Faults()
            self.dead = True
            return
        super().handle_line(line, link)


def test_wipe_asks_whether_a_commit_without_answer_happened(tmp_path: Path, identity: Identity) -> None:
    """A COMMIT whose answer never came may have happened: wipe() finds out from the live hash, in bounded time."""
    model = SilentAfterCommit(tmp_path, device_id="SAC1")
    timing = Timing(floor_s=0.05, attempts=3)
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=timing) as flasher:
        with pytest.raises(DeviceNotAnswering):
            flasher.write_identity(identity)
        assert json.loads(model.flash_path.read_text())["cert"] == identity.certificate_pem  # it did commit
        model.dead = False  # the unit answers again (reseated)
        started = time.monotonic()
        flasher.wipe()
        assert time.monotonic() - started < 2.0  # a fresh short chance, not the backed-off timeouts
    assert json.loads(model.flash_path.read_text())["cert"] is None  # this session's credentials are gone


@pytest.mark.lab
def test_device_check_under_a_policy_without_publish_is_a_station_fault(lab: Any, tmp_path: Path) -> None:
    plane, data, port = lab
    thing = f"deny-{uuid.uuid4().hex[:8]}"
    unit = new_identity(thing)
    _register(plane, unit.certificate_pem, thing, CONNECT_ONLY)
    model = Prov1Device(tmp_path, device_id="CHK4", ca_file=data.ca_file)
    with PtyDevice(model) as device, Prov1Flasher(device.port, timing=QUICK) as flasher:
        flasher.write_identity(unit)
        with pytest.raises(StationFault) as caught:
            flasher.device_verify("localhost", port, thing, timeout_s=10)
    assert "policy" in caught.value.message
