"""nRF91: the shared flasher contract (fixtures only) plus the AT protocol's own tests, all through real ptys.

Covers both flows (host-made key proven by the listed SHA-256; device-made key via %KEYGEN → CSR → certificate),
a hash proof that keeps differing, +CME error codes and 518 recovery, whole-line result matching (base64 and
quoted multi-line text containing "OK"), the AT host's 4096-byte buffer, wipe, `station sim nrf91`, and the
verify-by-observing hello against the lab (skipped when the lab is not importable).

This modem has no staging: each %CMNG write is live at once, so it does not declare `atomic_commit` and the
contract skips its two atomic-commit tests by capability. What the family does instead (report, delete what
failed its proof, re-provision cleanly) is asserted by two tests of its own in `TestNrf91Contract`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
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
from flasher_contract import FlasherContract, _key_body, key_text, sha256_text

from flashers.base import (
    DeviceDisconnected,
    DeviceGarbage,
    DeviceNotAnswering,
    DeviceRejected,
    Flasher,
    NotSupported,
    ProofMismatch,
)
from flashers.nrf91 import (
    DEFAULT_SEC_TAG,
    MAX_COMMAND,
    Nrf91Flasher,
    Timing,
    b64url_decode,
    hello_topic,
    luhn_ok,
    parse_hello,
)
from flashers.simulators.nrf91 import Faults, Nrf91Modem, flash_path, new_imei
from flashers.simulators.pty import LineModel, Link, PtyDevice
from station.errors import StationFault, UnitFault
from station.identity import new_identity, sign_csr
from station.model import Identity

# Test-short timeouts; AT answers carry no sequence number, so the floor stays above the slow unit's 0.08 s.
QUICK = Timing(floor_s=0.2, allowance_scale=0.1)
RIG_REGION = "eu-west-1"  # the region of tests/pipeline/cloud_rig.py's station.toml


# ------------------------------------------------------------------------------------------------ harness


class Nrf91Handle:
    """One simulated nRF91 on a pty, as the contract sees it."""

    def __init__(
        self, state_dir: Path, imei: str, faults: Faults, *, pace: bool = False, **model: Any
    ) -> None:
        self.state_dir = state_dir
        self.device_id: str | None = imei
        self.model = Nrf91Modem(state_dir, imei=imei, faults=faults, **model)
        self.device = PtyDevice(self.model, pace=pace).start()
        self.port = self.device.port

    def live(self) -> dict[str, str | None]:
        # Read the flash file as a test acting as the device would, not the model's memory.
        data = json.loads(self.model.flash_path.read_text(encoding="utf-8"))
        creds = data["credentials"].get(str(DEFAULT_SEC_TAG), {})
        return {"ca": creds.get("0"), "cert": creds.get("1"), "key": creds.get("2")}

    def staged(self) -> tuple[str, ...]:
        return ()  # the modem has no staging: every write is live at once

    def set_faults(self, **faults: Any) -> None:
        new = _faults(faults)
        if new.disconnect is not None:
            new.disconnect += self.model._writes  # counted from power-on: make it "the Nth from now"
        self.model.faults = new

    def restart(self) -> Nrf91Handle:
        self.stop()
        assert self.device_id is not None
        again = Nrf91Handle(self.state_dir, self.device_id, Faults())
        _HANDLES.append(again)
        return again

    def stop(self) -> None:
        self.device.stop()


_HANDLES: list[Nrf91Handle] = []


def _faults(spec: dict[str, Any] | None) -> Faults:
    spec = dict(spec or {})
    faults = Faults(seed=spec.pop("seed", None))
    if spec.pop("disconnect_mid_write", False):
        faults.disconnect = 2  # the certificate is written, the key write never arrives
    for name, value in spec.items():
        if not hasattr(faults, name):
            raise AssertionError(f"the nRF91 simulator has no fault {name!r}")
        setattr(faults, name, value)
    return faults


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[Callable[..., Nrf91Handle]]:
    handles: list[Nrf91Handle] = []

    def make(faults: dict[str, Any] | None = None, pace: bool = False, **model: Any) -> Nrf91Handle:
        handle = Nrf91Handle(tmp_path, new_imei(), _faults(faults), pace=pace, **model)
        handles.append(handle)
        return handle

    yield make
    for handle in handles + _HANDLES:
        handle.stop()
    _HANDLES.clear()


@pytest.fixture
def open_flasher() -> Iterator[Callable[..., Nrf91Flasher]]:
    opened: list[Nrf91Flasher] = []

    def open_(port: str, quick: bool = True, **kwargs: Any) -> Nrf91Flasher:
        flasher = Nrf91Flasher(port, timing=QUICK if quick else None, **kwargs)
        opened.append(flasher)
        return flasher

    yield open_
    for flasher in opened:
        flasher.close()


@pytest.fixture
def flasher_class() -> type[Flasher]:
    return Nrf91Flasher


class TestNrf91Contract(FlasherContract):
    """nRF91 passes the shared contract, plus what it does instead of an atomic commit (see the docstring)."""

    def test_no_atomic_commit_is_declared(self, flasher_class: type[Flasher]) -> None:
        assert flasher_class.capabilities.atomic_commit is False

    def test_failed_proof_deletes_what_failed_it(
        self,
        make_device: Callable[..., Any],
        open_flasher: Callable[..., Any],
        identity: Identity,
        new_identity: Callable[[], Identity],
    ) -> None:
        """A write is live at once, so the old credentials are gone; what failed its proof is deleted instead
        of left for the unit's firmware to try."""
        device = make_device()
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
        device.set_faults(bad_store=True)
        second = new_identity()
        with open_flasher(device.port) as flasher, pytest.raises(ProofMismatch) as caught:
            flasher.write_identity(second)
        assert "differs" in caught.value.message and "deleted" in caught.value.message
        assert device.live() == {"ca": None, "cert": None, "key": None}
        assert _key_body(second) not in str(caught.value)

    def test_disconnect_mid_write_leaves_a_mix_and_says_so(
        self,
        make_device: Callable[..., Any],
        open_flasher: Callable[..., Any],
        identity: Identity,
        new_identity: Callable[[], Identity],
    ) -> None:
        """The unit keeps what reached its NVM (new certificate, old key); the operator is told so, and
        provisioning it again after a power cycle works."""
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
        assert (
            "partly overwritten" in caught.value.message
            and "provision the unit again" in caught.value.message
        )
        assert _key_body(second) not in str(caught.value)
        again = device.restart()
        assert again.live()["cert"] == second.certificate_pem  # live at once: no staging
        assert again.live()["key"] == key_text(identity)  # the key write never arrived
        with open_flasher(again.port) as flasher:
            flasher.write_identity(second)
        assert again.live()["cert"] == second.certificate_pem
        assert again.live()["key"] == key_text(second)


# ----------------------------------------------------------------------------------------------- identify


def test_identify_takes_the_modem_offline_and_reads_a_checked_imei(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher]
) -> None:
    device = make_device()
    assert device.model.cfun == 1 and device.model.cmee == 0  # as an application leaves it at boot
    with open_flasher(device.port) as flasher:
        info = flasher.identify()
    assert info.device_id == device.device_id and luhn_ok(info.device_id or "")
    assert info.firmware == "mfw_nrf9160_1.3.5"
    assert device.model.cfun == 4 and device.model.cmee == 1


def test_imei_helpers() -> None:
    assert luhn_ok("490154203237518")  # a published example IMEI
    assert not luhn_ok("490154203237519")
    for _ in range(20):
        imei = new_imei()
        assert len(imei) == 15 and luhn_ok(imei)


# -------------------------------------------------------------------------------------------- both flows


def test_host_made_key_with_ca_is_proven_by_the_listed_hashes(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], identity: Identity
) -> None:
    ca = new_identity("some-ca").certificate_pem
    device = make_device()
    with open_flasher(device.port) as flasher:
        proof = flasher.write_identity(identity, ca_pem=ca)
    assert proof.slots == ("ca", "cert", "key")
    assert proof.sha256_of("ca") == sha256_text(ca)
    assert device.live() == {"ca": ca, "cert": identity.certificate_pem, "key": key_text(identity)}
    # What the modem lists is exactly the hash of what was sent, line endings included.
    listed = device.model._cmng_list([])
    assert f'"{sha256_text(identity.certificate_pem).upper()}"' in listed[1]


def test_crlf_line_endings_are_stored_and_proven_as_sent(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], identity: Identity
) -> None:
    crlf = Identity(
        certificate_pem=identity.certificate_pem.replace("\n", "\r\n"),
        certificate_id=identity.certificate_id,
        private_key=identity.private_key,
    )
    device = make_device()
    with open_flasher(device.port) as flasher:
        proof = flasher.write_identity(crlf)
    assert device.live()["cert"] == crlf.certificate_pem
    assert (
        proof.sha256_of("cert") == sha256_text(crlf.certificate_pem) != sha256_text(identity.certificate_pem)
    )


def test_device_made_key_flow(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], issuer: Any
) -> None:
    device = make_device()
    with open_flasher(device.port) as flasher:
        flasher.identify()
        csr_pem = flasher.keygen("kg-unit-1")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        assert csr.is_signature_valid
        assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kg-unit-1"
        with pytest.raises(StationFault) as wrong:
            flasher.install_certificate(new_identity("kg-unit-1").certificate_pem)  # not the modem's key
        assert "not for the key the modem made" in wrong.value.message
        cert = sign_csr(csr_pem, issuer, common_name="kg-unit-1", days=30)
        proof = flasher.install_certificate(cert)
    assert proof.slots == ("cert",) and proof.sha256_of("cert") == sha256_text(cert)
    live = device.live()
    assert live["cert"] == cert
    key = serialization.load_pem_private_key((live["key"] or "").encode(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == csr.public_key().public_bytes(der, spki)


def test_keygen_answer_is_csr_dot_cose_in_base64url(make_device: Callable[..., Nrf91Handle]) -> None:
    device = make_device()
    host = RawAt(device.port)
    try:
        assert host.ask("AT+CFUN=4") == ["OK"]
        lines = host.ask('AT%KEYGEN=7,2,0,"O=Acme,CN=raw-1"')
    finally:
        host.close()
    assert lines[-1] == "OK" and lines[0].startswith('%KEYGEN: "')
    body, cose = lines[0][len('%KEYGEN: "') : -1].split(".")
    assert "=" not in body + cose and "+" not in body + cose and "/" not in body + cose
    csr = x509.load_der_x509_csr(b64url_decode(body))
    assert csr.subject.rfc4514_string() == "CN=raw-1,O=Acme"
    signed = b64url_decode(cose)
    assert signed[:2] == b"\xd2\x84"  # COSE_Sign1 tag and a 4-element array
    assert hashlib.sha256(b64url_decode(body)).digest() in signed


def test_keygen_is_never_retried(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher]
) -> None:
    device = make_device()
    with open_flasher(device.port) as flasher:
        flasher.identify()
        device.model.faults = Faults(lose=1.0)  # the KEYGEN runs, its answer never arrives
        before = device.model.counters["commands"]
        with pytest.raises(DeviceNotAnswering) as caught:
            flasher.keygen("unit-x")
    assert device.model.counters["commands"] == before + 1
    assert "not repeated" in caught.value.message


def test_keygen_refuses_names_that_do_not_fit_the_attribute(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher]
) -> None:
    device = make_device()
    with open_flasher(device.port) as flasher:
        for bad in ("two words", 'quo"te', "a,b", "x" * 65, ""):
            with pytest.raises(StationFault):
                flasher.keygen(bad)
    assert device.model.counters["commands"] == 0  # refused before anything was sent


def test_device_verify_is_not_supported(open_flasher: Callable[..., Nrf91Flasher], make_device: Any) -> None:
    with open_flasher(make_device().port) as flasher, pytest.raises(NotSupported):
        flasher.device_verify("localhost", 8883, "t")


# -------------------------------------------------------------------------------------------- proof, CME


def test_a_hash_that_keeps_differing_is_a_unit_fault_after_bounded_rewrites(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], identity: Identity
) -> None:
    device = make_device(faults={"bad_store": True})
    with open_flasher(device.port) as flasher, pytest.raises(ProofMismatch) as caught:
        flasher.write_identity(identity)
    assert isinstance(caught.value, UnitFault)
    assert caught.value.title == "Write not proven"
    assert device.model._writes == 2 * QUICK.proof_rounds  # cert and key, each written proof_rounds times
    assert device.live() == {"ca": None, "cert": None, "key": None}


def test_corrupted_commands_are_rewritten_until_the_hash_matches(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], identity: Identity
) -> None:
    device = make_device(faults={"corrupt": 0.2, "seed": 5})
    with open_flasher(device.port) as flasher:
        proof = flasher.write_identity(identity)
    assert device.model.counters["corrupted"] > 0
    assert proof.retries > 0 or device.model._writes > 2
    assert device.live()["cert"] == identity.certificate_pem
    assert device.live()["key"] == key_text(identity)


class BackOnline(Nrf91Modem):
    """An application that brings the modem online again once, right after the station took it offline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bounced = False

    def _cmng_write(self, tag: int, cred_type: int, content: str, link: Link) -> list[str]:
        if not self.bounced:
            self.bounced = True
            self.cfun = 1
        return super()._cmng_write(tag, cred_type, content, link)


def test_518_sends_cfun4_again_and_retries_once(tmp_path: Path, identity: Identity) -> None:
    model = BackOnline(tmp_path, imei=new_imei())
    with PtyDevice(model) as device, Nrf91Flasher(device.port, timing=QUICK) as flasher:
        flasher.write_identity(identity)
    assert model.bounced and model.cfun == 4
    assert model.live()["cert"] == identity.certificate_pem


class StaysOnline(Nrf91Modem):
    def _cfun(self, args: Any, link: Link) -> list[str]:
        return []  # says OK, stays online


@pytest.mark.parametrize(
    ("model_kwargs", "faults", "words"),
    [
        ({"capacity": 100}, Faults(), "storage is full (error 515)"),
        ({}, Faults(keygen_fail=True), "failed to generate a key (error 523)"),
    ],
)
def test_cme_codes_become_operator_messages(
    tmp_path: Path, model_kwargs: dict[str, Any], faults: Faults, words: str, identity: Identity
) -> None:
    model = Nrf91Modem(tmp_path, imei=new_imei(), faults=faults, **model_kwargs)
    with PtyDevice(model) as device, Nrf91Flasher(device.port, timing=QUICK) as flasher:
        flasher.identify()
        before = model.counters["commands"]
        with pytest.raises(DeviceRejected) as caught:
            if faults.keygen_fail:
                flasher.keygen("unit-1")
            else:
                flasher.write_identity(identity)
        assert words in caught.value.message
        assert model.counters["commands"] == before + 1  # a +CME ERROR is final: not retried


def test_518_that_persists_is_reported(tmp_path: Path, identity: Identity) -> None:
    model = StaysOnline(tmp_path, imei=new_imei())
    with (
        PtyDevice(model) as device,
        Nrf91Flasher(device.port, timing=QUICK) as flasher,
        pytest.raises(DeviceRejected) as caught,
    ):
        flasher.write_identity(identity)
    assert "error 518" in caught.value.message


def test_sec_tag_is_checked_and_reserved_tags_get_514(make_device: Callable[..., Nrf91Handle]) -> None:
    device = make_device()
    for bad in (-1, 2147483648, "x"):
        with pytest.raises(StationFault):
            Nrf91Flasher(device.port, sec_tag=bad)
    host = RawAt(device.port)
    try:
        assert host.ask("AT+CMEE=1") == ["OK"]
        assert host.ask("AT+CFUN=4") == ["OK"]
        assert host.ask('AT%CMNG=0,4294967292,1,"x"') == ["+CME ERROR: 514"]
        assert host.ask("AT%CMNG=2,5,2") == ["+CME ERROR: 514"]  # a private key is never read back
        assert host.ask("AT%CMNG=3,5,1") == ["+CME ERROR: 513"]
        assert host.ask("AT+CFUN=1") == ["OK"]
        assert host.ask('AT%CMNG=0,5,1,"x"') == ["+CME ERROR: 518"]
        assert host.ask("AT+CMEE=0") == ["OK"]
        assert host.ask('AT%CMNG=0,5,1,"x"') == ["ERROR"]  # without CMEE=1 the code is not shown
        assert host.ask("AT+NOPE") == ["ERROR"]
        assert host.ask("AT+CFUN?") == ["+CFUN: 1", "OK"]
    finally:
        host.close()


# --------------------------------------------------------------------------------------- line matching


class Scripted(LineModel):
    """Answers each AT command with a scripted byte string (by command prefix); unknown ones with OK."""

    max_line = 8192

    def __init__(self, script: dict[str, bytes]) -> None:
        super().__init__()
        self.script = script
        self.seen: list[str] = []

    def handle_line(self, line: bytes, link: Link) -> None:
        text = line.decode("latin-1")
        self.seen.append(text)
        for prefix, answer in self.script.items():
            if text.startswith(prefix):
                link.send(answer)
                return
        link.send(b"OK\r\n")


def _csr_with_ok_in_base64(common_name: str) -> bytes:
    for _ in range(500):
        key = ec.generate_private_key(ec.SECP256R1())
        der = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        import base64

        text = base64.urlsafe_b64encode(der).rstrip(b"=")
        if b"OK" in text:
            return text
    raise AssertionError("no CSR with OK in its base64 in 500 tries")


def test_ok_inside_base64_or_a_quoted_multiline_string_is_not_a_result() -> None:
    csr_b64 = _csr_with_ok_in_base64("ok-unit")
    imei = new_imei()
    script = {
        "AT+CGSN": b'%XNOTE: "first\r\nOK\r\nERROR\r\n+CME ERROR: 518\r\nlast"\r\n'
        + imei.encode()
        + b"\r\nOK\r\n",
        "AT+CGMR": b"mfw_nrf9160_1.3.5\r\nOK\r\n",
        "AT%KEYGEN": b'%KEYGEN: "' + csr_b64 + b'.OKOK"\r\nOK\r\n',
    }
    model = Scripted(script)
    with PtyDevice(model) as device, Nrf91Flasher(device.port, timing=QUICK) as flasher:
        assert flasher.identify().device_id == imei
        pem = flasher.keygen("ok-unit")
    assert x509.load_pem_x509_csr(pem.encode()).subject.rfc4514_string() == "CN=ok-unit"
    assert model.seen[:3] == ["AT", "AT+CMEE=1", "AT+CFUN=4"]  # offline before anything else


def test_notifications_between_answers_are_ignored(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], identity: Identity
) -> None:
    device = make_device(faults={"urc": 1.0, "seed": 3})
    with open_flasher(device.port) as flasher:
        assert flasher.identify().device_id == device.device_id
        flasher.write_identity(identity)
    assert device.live()["key"] == key_text(identity)


def test_garbage_answer_is_garbage_not_silence() -> None:
    model = Scripted({"AT": b"\x00\x01\xfe binary\r\n"})
    with (
        PtyDevice(model) as device,
        Nrf91Flasher(device.port, timing=QUICK) as flasher,
        pytest.raises(DeviceGarbage),
    ):
        flasher.identify()


# --------------------------------------------------------------------------------------- 4096-byte limit


def test_a_command_over_4096_bytes_is_refused_before_sending(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], identity: Identity
) -> None:
    device = make_device()
    big_ca = "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * 70 + "-----END CERTIFICATE-----\n"
    with open_flasher(device.port) as flasher:
        flasher.identify()
        before = device.model.counters["commands"]
        with pytest.raises(StationFault) as caught:
            flasher.write_identity(identity, ca_pem=big_ca)
    assert "at most 4096" in caught.value.message and "smaller key type" in caught.value.next_action
    assert device.model.counters["commands"] == before  # nothing was sent


def test_the_largest_command_fits_and_one_byte_more_wedges_the_at_host(
    make_device: Callable[..., Nrf91Handle],
) -> None:
    device = make_device()
    prefix = 'AT%CMNG=0,9,0,"'
    fits = prefix + "B" * (MAX_COMMAND - len(prefix) - 3) + '"'
    assert len(fits) + 2 == MAX_COMMAND
    host = RawAt(device.port)
    try:
        assert host.ask("AT+CFUN=4") == ["OK"]
        assert host.ask(fits) == ["OK"]
        assert device.model.flash.get(9, 0) == "B" * (MAX_COMMAND - len(prefix) - 3)
        # One byte more: the closing quote is dropped with the buffer full, so the line end stays inside
        # the quote. The real AT host then waits forever; so does the simulator.
        assert host.ask(prefix + "C" * (MAX_COMMAND - len(prefix) - 2) + '"', timeout=0.5) == []
        assert host.ask("AT", timeout=0.5) == []
        assert device.model.counters["dropped_bytes"] > 0
    finally:
        host.close()


# ------------------------------------------------------------------------------------------------- wipe


def test_wipe_deletes_only_what_this_session_touched(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher], identity: Identity
) -> None:
    device = make_device()
    device.model.flash.put(99, 1, "other tag")  # another tag's credential: never the station's business
    with open_flasher(device.port) as flasher:
        flasher.write_identity(identity)
    with open_flasher(device.port) as flasher:
        flasher.wipe()  # this session wrote nothing: nothing goes
    assert device.live()["cert"] == identity.certificate_pem
    with open_flasher(device.port) as flasher:
        flasher.identify()
        flasher.keygen("unit-2")  # replaces the tag's key at once
        flasher.wipe()
    assert device.live() == {"ca": None, "cert": identity.certificate_pem, "key": None}
    assert device.model.flash.get(99, 1) == "other tag"


# ------------------------------------------------------------------------------------------------ misc


def test_faults_parse() -> None:
    faults = Faults.parse(
        ["corrupt=0.05", "lose=0.1", "disconnect=2", "silent", "slow=0.2", "seed=3", "urc=1"]
    )
    assert (faults.corrupt, faults.lose, faults.disconnect, faults.silent, faults.slow, faults.seed) == (
        0.05,
        0.1,
        2,
        True,
        0.2,
        3,
    )
    assert faults.urc == 1.0
    for bad in (["bogus"], ["corrupt=2"], ["disconnect"], ["lose=x"]):
        with pytest.raises(ValueError):
            Faults.parse(bad)


def test_flash_survives_a_restart(tmp_path: Path, identity: Identity) -> None:
    imei = new_imei()
    model = Nrf91Modem(tmp_path, imei=imei)
    with PtyDevice(model) as device, Nrf91Flasher(device.port, timing=QUICK) as flasher:
        flasher.write_identity(identity)
    again = Nrf91Modem(tmp_path, imei=imei)
    assert again.live()["key"] == key_text(identity)
    assert again.cfun == 1  # power-on: the application is online again
    assert flash_path(tmp_path, imei) == again.flash_path
    assert oct(os.stat(again.flash_path).st_mode & 0o777) == "0o600"


def test_hello_helpers() -> None:
    assert hello_topic("thing-1") == "things/thing-1/hello"
    assert parse_hello(b'{"imei": "1", "certificate_id": "ab", "x": 1}') == {
        "imei": "1",
        "certificate_id": "ab",
    }
    for bad in (b"", b"[]", b"{}", b"\xff", b'{"certificate_id": 3}'):
        assert parse_hello(bad) is None


def test_go_online_without_an_endpoint_just_goes_online(
    make_device: Callable[..., Nrf91Handle], open_flasher: Callable[..., Nrf91Flasher]
) -> None:
    device = make_device()
    with open_flasher(device.port) as flasher:
        flasher.identify()
        flasher.go_online()
    assert device.model.cfun == 1 and device.model.hellos == []


class RawAt:
    """A bare pyserial host: send one command, collect answer lines up to a final result or a timeout."""

    def __init__(self, port: str) -> None:
        self.serial = serial.serial_for_url(port, baudrate=115200, timeout=0.05)

    def ask(self, command: str, timeout: float = 2.0) -> list[str]:
        self.serial.write(command.encode("latin-1") + b"\r\n")
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            buffer += self.serial.read(4096)
            while b"\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n", 1)
                lines.append(line.decode("latin-1"))
                if lines[-1] == "OK" or lines[-1] == "ERROR" or lines[-1].startswith("+CME ERROR"):
                    return lines
        return lines

    def close(self) -> None:
        self.serial.close()


# ----------------------------------------------------------------------------------------- station sim


def test_station_sim_prints_the_port_first_and_stops_cleanly(tmp_path: Path) -> None:
    imei = new_imei()
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "sim", "nrf91", "--state-dir", str(tmp_path), "--imei", imei],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), port
        with Nrf91Flasher(port, timing=QUICK) as flasher:
            assert flasher.identify().device_id == imei
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert (tmp_path / f"nrf91-{imei}.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


# ---------------------------------------------------------------------------- verify by observing (lab)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    control = pytest.importorskip("station.lab.control")
    dataplane = pytest.importorskip("station.lab.dataplane")
    plane = control.ControlPlane(throttling=False).start()
    data = None
    try:
        # Two regions: this module's own tests use the lab's default, `station provision` the pipeline rig's.
        data = dataplane.DataPlane(
            {
                (control.DEFAULT_ACCOUNT_ID, control.DEFAULT_REGION): 0,
                (control.DEFAULT_ACCOUNT_ID, RIG_REGION): 0,
            },
            tmp_path_factory.mktemp("lab"),
        )
        data.start()
        yield plane, data, data.port_for(control.DEFAULT_ACCOUNT_ID, control.DEFAULT_REGION)
    finally:
        if data is not None:
            data.stop()
        plane.stop()


def _register(plane: Any, cert_pem: str, thing: str, policy_document: dict[str, Any]) -> None:
    iot = plane.client("iot")
    registered = iot.register_certificate_without_ca(certificatePem=cert_pem, status="ACTIVE")
    policy = f"p-{uuid.uuid4().hex[:8]}"
    iot.create_policy(policyName=policy, policyDocument=json.dumps(policy_document))
    iot.attach_policy(policyName=policy, target=registered["certificateArn"])
    iot.create_thing(thingName=thing)
    iot.attach_thing_principal(thingName=thing, principal=registered["certificateArn"])


def _allow(actions: list[str]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}


@pytest.mark.lab
def test_device_made_key_is_verified_by_observing_the_units_hello(
    lab: Any, tmp_path: Path, issuer: Any
) -> None:
    """The pipeline's verify for device-made keys: the station subscribes with its own identity, tells the
    unit to go online, and sees the unit's hello carrying the registered certificate id."""
    from awscrt import mqtt
    from awsiot import mqtt_connection_builder

    from station.identity import certificate_id

    plane, data, port = lab
    thing = f"nrf-{uuid.uuid4().hex[:8]}"
    observer = new_identity(f"station-observer-{uuid.uuid4().hex[:6]}")
    _register(
        plane, observer.certificate_pem, observer_name := f"obs-{uuid.uuid4().hex[:8]}", _allow(["iot:*"])
    )

    model = Nrf91Modem(tmp_path, imei=new_imei(), endpoint=("localhost", port), ca_file=data.ca_file)
    heard: list[bytes] = []
    got = threading.Event()
    connection = mqtt_connection_builder.mtls_from_bytes(
        endpoint="localhost",
        port=port,
        cert_bytes=observer.certificate_pem.encode(),
        pri_key_bytes=observer.private_key.reveal() if observer.private_key else b"",
        ca_bytes=data.ca_bytes,
        client_id=observer_name,
        clean_session=True,
    )
    connection.connect().result(10)
    try:

        def on_message(topic: str, payload: bytes, **kwargs: Any) -> None:
            heard.append(payload)
            got.set()

        sub, _ = connection.subscribe(hello_topic(thing), mqtt.QoS.AT_LEAST_ONCE, on_message)
        sub.result(10)
        with PtyDevice(model) as device, Nrf91Flasher(device.port, timing=QUICK) as flasher:
            info = flasher.identify()
            csr = flasher.keygen(thing)
            cert = sign_csr(csr, issuer, common_name=thing, days=30)
            flasher.write_identity(Identity(certificate_pem=cert, certificate_id="unused"), ca_pem=None)
            _register(
                plane,
                cert,
                thing,
                _allow(["iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"]),
            )
            flasher.go_online()
            assert got.wait(15), f"no hello; unit says {model.hellos}"
            assert model.hello_done.wait(5)
    finally:
        connection.disconnect().result(5)
    hello = parse_hello(heard[0])
    assert hello is not None
    assert hello["certificate_id"] == certificate_id(cert)
    assert hello["imei"] == info.device_id
    assert model.hellos == ["sent"]


@pytest.mark.lab
def test_a_unit_whose_certificate_is_not_registered_sends_no_hello(lab: Any, tmp_path: Path) -> None:
    _, data, port = lab
    model = Nrf91Modem(tmp_path, imei=new_imei(), endpoint=("localhost", port), ca_file=data.ca_file)
    unit = new_identity(f"nrf-{uuid.uuid4().hex[:8]}")
    with PtyDevice(model) as device, Nrf91Flasher(device.port, timing=QUICK) as flasher:
        flasher.write_identity(unit)
        flasher.go_online()
        assert model.hello_done.wait(15)
    assert model.hellos == ["rejected"]


# ------------------------------------------------------------------------- station provision, end to end


def _station_config(directory: Path, lab: Any, family: str, options: str) -> Path:
    """The pipeline tests' station.toml (tests/pipeline/cloud_rig.py) with this family's flasher."""
    import importlib.util

    rig_path = Path(__file__).resolve().parents[1] / "pipeline" / "cloud_rig.py"
    spec = importlib.util.spec_from_file_location("cloud_rig_for_flashers", rig_path)
    assert spec is not None and spec.loader is not None
    rig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rig)
    policy = (Path(__file__).resolve().parents[2] / "fixtures" / "policies" / "thing-policy.json").read_text()
    plane, data, _ = lab
    assert rig.REGION == RIG_REGION
    path: Path = rig.write_config(
        directory,
        plane.endpoint_url,
        data_port=data.port_for(rig.DEFAULT_ACCOUNT_ID, rig.REGION),
        ca_file=str(data.ca_file),
        policy_document=policy,
        key_source="station",
    )
    text = path.read_text().replace('flasher = "prov1"', f'flasher = "{family}"')
    text = text.replace('key_source = "station"\n', f'key_source = "station"\n{options}')
    path.write_text(text)
    return path


@pytest.mark.lab
def test_station_provision_passes_an_nrf91_and_the_unit_then_connects_on_its_own(
    lab: Any, tmp_path: Path
) -> None:
    from station.config import load_config
    from station.context import StationContext
    from station.ledger import open_ledger
    from station.registry import Registry

    _, data, _ = lab
    config = load_config(
        _station_config(tmp_path, lab, "nrf91", "check_device_id = false\nsec_tag = 16842753\n")
    )
    ledger = open_ledger(config.ledger_path)
    context = StationContext(
        config, ledger=ledger, registry_factory=lambda target: Registry(target, station_id="nrf")
    )
    # The unit's CA comes from the pipeline (type 0 in the tag): no ca_file for the simulator.
    model = Nrf91Modem(tmp_path / "unit", imei=new_imei(), endpoint=("localhost", _port_for(data, config)))
    try:
        with PtyDevice(model) as device:
            serial_no = f"SIM{new_imei()[:6]}"
            result = context.provision(serial_no, device.port, slot="s1")
            assert result.outcome.value == "PASS", (result.title, result.message)
            assert result.family == "nrf91" and result.device_id == model.imei
            live = model.live()
            assert live["cert"] == result.certificate_pem and live["ca"] == data.ca_bytes.decode()
            time.sleep(1.1)  # AWS allows one CONNECT per second per client id; the verify just connected
            with Nrf91Flasher(device.port, timing=QUICK) as flasher:
                flasher.identify()
                flasher.go_online()
            assert model.hello_done.wait(15)
        assert model.hellos == ["sent"]
    finally:
        ledger.close()


def _port_for(data: Any, config: Any) -> int:
    target = config.target("lab")
    return int(data.port_for(target.account_id, target.region))
