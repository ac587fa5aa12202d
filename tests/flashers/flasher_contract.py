"""The contract every device family's flasher passes, with its simulator on a real pty (fsspec style).

A family's test module subclasses `FlasherContract` and supplies only fixtures:

- `flasher_class` — the family's `Flasher` subclass;
- `make_device(faults=None, pace=False)` — starts a simulated unit on a new pty and returns a `DeviceHandle`;
  faults use the shared vocabulary below, which each family maps onto its simulator;
- `open_flasher(port, quick=True)` — opens the family's flasher on a port (`quick`: test-short timeouts);
- `identity` — a fresh unit identity (certificate + key in memory).

Shared fault vocabulary: corrupt=P and lose=P (per frame), disconnect_mid_write, slow=S, silent, garbage, flood,
bad_store (the unit keeps a damaged copy, so the proof must fail).

Tests run or skip by capability, never by family name: the two that promise the previous credentials survive a
failed proof or a drop-out mid-write need `atomic_commit`; families whose writes are live at once (nRF91,
ESP32) assert what they do instead in their own modules.

Every test ends by itself: simulators stop in fixture teardown, every wait is bounded, and elapsed-time
assertions hold the "never hang" promises.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import pytest

import flashers
from flashers.base import (
    PROOF_DEVICE_HASH,
    PROOF_READ_BACK,
    DeviceInfo,
    Flasher,
    NotSupported,
    PortUnavailable,
)
from station.errors import StationFault, UnitFault
from station.model import Identity


class DeviceHandle(Protocol):
    """A simulated unit as the contract sees it."""

    port: str
    device_id: str | None

    def live(self) -> dict[str, str | None]:
        """The credentials the unit would use now, read from its flash: at least `cert` and `key`."""

    def staged(self) -> tuple[str, ...]:
        """Names of objects staged but not committed (empty when nothing is pending)."""

    def set_faults(self, **faults: Any) -> None: ...

    def restart(self) -> DeviceHandle:
        """Power-cycle: the same flash on a new port, no faults. The old handle is stopped."""

    def stop(self) -> None: ...


MakeDevice = Callable[..., DeviceHandle]
OpenFlasher = Callable[..., Flasher]


def sha256_text(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def key_text(identity: Identity) -> str:
    assert identity.private_key is not None
    return identity.private_key.reveal().decode()


def _key_body(identity: Identity) -> str:
    """A distinctive piece of the key's base64 body: must never appear in an error text."""
    lines = [line for line in key_text(identity).splitlines() if line and not line.startswith("-----")]
    return lines[0][10:40]


def _need_atomic_writes(flasher_class: type[Flasher]) -> None:
    caps = flasher_class.capabilities
    if not caps.writes_key:
        pytest.skip("this family does not take a station-made key")
    if not caps.atomic_commit:
        pytest.skip("this family's writes are live at once (no atomic commit): its own tests cover it")


class FlasherContract:
    """The shared suite. Not collected by itself (no `Test` prefix); subclasses are."""

    # Seconds: what "bounded" means for a silent unit with the family's default timeouts, and for a garbage
    # or flooding unit with quick timeouts. Families may override with a documented reason.
    silent_bound_s: ClassVar[float] = 5.0
    garbage_bound_s: ClassVar[float] = 5.0

    # ------------------------------------------------------------------------------------------ plugin
    def test_registered_as_a_plugin(self, flasher_class: type[Flasher]) -> None:
        assert flasher_class.family in flashers.available()
        assert flashers.load(flasher_class.family) is flasher_class

    def test_capabilities_are_declared(self, flasher_class: type[Flasher]) -> None:
        caps = flasher_class.capabilities
        assert any((caps.writes_key, caps.device_keygen, caps.reads_certificate))
        flags = (
            caps.writes_key,
            caps.device_keygen,
            caps.device_verify,
            caps.reads_certificate,
            caps.observable,
            caps.atomic_commit,
        )
        for flag in flags:
            assert isinstance(flag, bool)
        # An atomic commit is a promise about writes; a family that takes no key cannot make it.
        assert not caps.atomic_commit or caps.writes_key or caps.device_keygen
        # Observing needs a unit that connects with credentials the station gave it or had it make.
        assert not caps.observable or caps.writes_key or caps.device_keygen

    def test_go_online_matches_the_capability(
        self, make_device: MakeDevice, open_flasher: OpenFlasher, flasher_class: type[Flasher]
    ) -> None:
        device = make_device()
        with open_flasher(device.port) as flasher:
            flasher.identify()
            if flasher_class.capabilities.observable:
                flasher.go_online()  # no endpoint configured in the simulator: it just goes online
            else:
                with pytest.raises(NotSupported):
                    flasher.go_online()

    # -------------------------------------------------------------------------------------- identify
    def test_identify(self, make_device: MakeDevice, open_flasher: OpenFlasher) -> None:
        device = make_device()
        with open_flasher(device.port) as flasher:
            info = flasher.identify()
        assert isinstance(info, DeviceInfo)
        assert info.family == flasher.family
        if device.device_id is not None:
            assert info.device_id == device.device_id
        assert info.firmware

    def test_read_unit_id_is_the_device_id_and_a_later_session_still_works(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        flasher_class: type[Flasher],
    ) -> None:
        # What the line routes a scan by: the same id identify gives, and the unit is as it was (a write in
        # the next session, as the unit's provisioning would do, still goes through).
        device = make_device()
        with open_flasher(device.port) as flasher:
            unit_id = flasher.read_unit_id()
        with open_flasher(device.port) as flasher:
            info = flasher.identify()
            if flasher_class.capabilities.writes_key:
                flasher.write_identity(identity)
        assert unit_id is not None and unit_id == info.device_id
        if device.device_id is not None:
            assert unit_id == device.device_id

    # ----------------------------------------------------------------------------------------- write
    def test_write_identity_with_proof(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        flasher_class: type[Flasher],
    ) -> None:
        if not flasher_class.capabilities.writes_key:
            pytest.skip("this family does not take a station-made key")
        device = make_device()
        with open_flasher(device.port) as flasher:
            proof = flasher.write_identity(identity)
        assert proof.family == flasher_class.family
        assert proof.sha256_of("cert") == sha256_text(identity.certificate_pem)
        assert proof.sha256_of("key") == sha256_text(key_text(identity))
        methods = {p.slot: p.method for p in proof.objects}
        assert methods["cert"] == PROOF_READ_BACK
        assert methods["key"] == PROOF_DEVICE_HASH  # a key is never read back
        # What the unit will use is exactly what was sent.
        live = device.live()
        assert live["cert"] == identity.certificate_pem
        assert live["key"] == key_text(identity)
        assert device.staged() == ()

    def test_write_replaces_the_previous_identity(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        new_identity: Callable[[], Identity],
        flasher_class: type[Flasher],
    ) -> None:
        if not flasher_class.capabilities.writes_key:
            pytest.skip("this family does not take a station-made key")
        device = make_device()
        second = new_identity()
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
        with open_flasher(device.port) as flasher:
            flasher.write_identity(second)
        assert device.live()["cert"] == second.certificate_pem
        assert device.live()["key"] == key_text(second)

    def test_failed_proof_keeps_old_credentials_and_wipes_staging(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        new_identity: Callable[[], Identity],
        flasher_class: type[Flasher],
    ) -> None:
        _need_atomic_writes(flasher_class)
        device = make_device()
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
        device.set_faults(bad_store=True)
        second = new_identity()
        with open_flasher(device.port) as flasher, pytest.raises(UnitFault) as caught:
            flasher.write_identity(second)
        assert "match" in caught.value.message or "differ" in caught.value.message
        assert device.live()["cert"] == identity.certificate_pem
        assert device.live()["key"] == key_text(identity)
        assert device.staged() == ()
        assert _key_body(second) not in str(caught.value)

    def test_wipe_after_a_write_leaves_nothing_of_it(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        flasher_class: type[Flasher],
    ) -> None:
        if not flasher_class.capabilities.writes_key:
            pytest.skip("this family does not take a station-made key")
        device = make_device()
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
            flasher.wipe()  # what the pipeline does after a rollback in AWS
        live = device.live()
        assert live["cert"] != identity.certificate_pem
        assert live["key"] != key_text(identity)
        assert device.staged() == ()

    def test_read_certificate(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        flasher_class: type[Flasher],
    ) -> None:
        if not flasher_class.capabilities.reads_certificate:
            with open_flasher(make_device().port) as flasher, pytest.raises(NotSupported):
                flasher.read_certificate()
            return
        device = make_device()
        with open_flasher(device.port) as flasher:
            if flasher_class.capabilities.writes_key:
                flasher.write_identity(identity)
                assert flasher.read_certificate() == identity.certificate_pem
            else:
                assert "BEGIN CERTIFICATE" in flasher.read_certificate()

    def test_device_keygen_keeps_the_key_on_the_device(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        sign_csr: Callable[[str], str],
        flasher_class: type[Flasher],
    ) -> None:
        if not flasher_class.capabilities.device_keygen:
            with open_flasher(make_device().port) as flasher, pytest.raises(NotSupported):
                flasher.keygen("unit-1")
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        device = make_device()
        with open_flasher(device.port) as flasher:
            csr_pem = flasher.keygen("unit-1")
            cert_pem = sign_csr(csr_pem)
            proof = flasher.write_identity(Identity(certificate_pem=cert_pem, certificate_id="x"))
        assert proof.sha256_of("cert") == sha256_text(cert_pem)
        live = device.live()
        assert live["cert"] == cert_pem
        # The live key is the one behind the CSR, and it was made on the device.
        key_pem = live["key"]
        assert key_pem
        key = serialization.load_pem_private_key(key_pem.encode(), None)
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        assert key.public_key().public_bytes(
            serialization.Encoding.DER, spki
        ) == csr.public_key().public_bytes(serialization.Encoding.DER, spki)

    # ---------------------------------------------------------------------------------------- faults
    @pytest.mark.parametrize("seed", [11, 12])
    def test_recovers_from_corrupted_and_lost_frames(
        self,
        seed: int,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        flasher_class: type[Flasher],
    ) -> None:
        if not flasher_class.capabilities.writes_key:
            pytest.skip("this family does not take a station-made key")
        device = make_device(faults={"corrupt": 0.05, "lose": 0.05, "seed": seed})
        with open_flasher(device.port) as flasher:
            proof = flasher.write_identity(identity)
        assert proof.sha256_of("cert") == sha256_text(identity.certificate_pem)
        assert proof.sha256_of("key") == sha256_text(key_text(identity))
        assert device.live()["cert"] == identity.certificate_pem
        assert device.live()["key"] == key_text(identity)

    def test_disconnect_mid_write_keeps_old_credentials(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        new_identity: Callable[[], Identity],
        flasher_class: type[Flasher],
    ) -> None:
        _need_atomic_writes(flasher_class)
        device = make_device()
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
        device.set_faults(disconnect_mid_write=True)
        second = new_identity()
        started = time.monotonic()
        flasher = open_flasher(device.port)
        try:
            with pytest.raises(UnitFault) as caught:
                flasher.write_identity(second)
        finally:
            flasher.close()
            flasher.close()  # idempotent, also after a hang-up
        assert time.monotonic() - started < self.garbage_bound_s
        assert "disconnect" in caught.value.title.lower()
        assert "previous credentials" in caught.value.message
        assert _key_body(second) not in str(caught.value)
        # Power it up again: the old identity is intact, and the unit can be provisioned afresh.
        again = device.restart()
        assert again.live()["cert"] == identity.certificate_pem
        assert again.live()["key"] == key_text(identity)
        with open_flasher(again.port) as flasher:
            flasher.write_identity(second)
        assert again.live()["cert"] == second.certificate_pem

    def test_slow_device_still_writes(
        self,
        make_device: MakeDevice,
        open_flasher: OpenFlasher,
        identity: Identity,
        flasher_class: type[Flasher],
    ) -> None:
        if not flasher_class.capabilities.writes_key:
            pytest.skip("this family does not take a station-made key")
        device = make_device(faults={"slow": 0.08})  # longer than the quick floor: timeouts must adapt
        with open_flasher(device.port) as flasher:
            flasher.write_identity(identity)
        assert device.live()["cert"] == identity.certificate_pem

    def test_silent_device_is_a_unit_fault_within_bounded_time(
        self, make_device: MakeDevice, open_flasher: OpenFlasher
    ) -> None:
        device = make_device(faults={"silent": True})
        started = time.monotonic()
        with open_flasher(device.port, quick=False) as flasher, pytest.raises(UnitFault) as caught:
            flasher.identify()
        elapsed = time.monotonic() - started
        assert elapsed < self.silent_bound_s
        assert "not answering" in caught.value.message
        assert "seated in the jig and powered" in caught.value.message

    @pytest.mark.parametrize("fault", ["garbage", "flood"])
    def test_garbage_or_flood_is_a_unit_fault_without_hang(
        self, fault: str, make_device: MakeDevice, open_flasher: OpenFlasher
    ) -> None:
        device = make_device(faults={fault: True})
        started = time.monotonic()
        with open_flasher(device.port) as flasher, pytest.raises(UnitFault) as caught:
            flasher.identify()
        assert time.monotonic() - started < self.garbage_bound_s
        assert "garbage" in caught.value.message.lower()

    def test_flood_does_not_stop_the_simulator_from_stopping(
        self, make_device: MakeDevice, open_flasher: OpenFlasher
    ) -> None:
        device = make_device(faults={"flood": True})
        with open_flasher(device.port) as flasher, pytest.raises(UnitFault):
            flasher.identify()
        started = time.monotonic()
        device.stop()
        assert time.monotonic() - started < 5.0

    def test_unit_gone_between_operations(self, make_device: MakeDevice, open_flasher: OpenFlasher) -> None:
        device = make_device()
        flasher = open_flasher(device.port)
        try:
            flasher.identify()
            device.stop()
            started = time.monotonic()
            with pytest.raises(UnitFault):
                flasher.identify()
            assert time.monotonic() - started < self.silent_bound_s
        finally:
            flasher.close()

    # ------------------------------------------------------------------------------------------ ports
    def test_missing_port_is_a_station_fault(self, open_flasher: OpenFlasher, tmp_path: Any) -> None:
        with pytest.raises(StationFault) as caught:
            open_flasher(str(tmp_path / "no-such-tty"))
        assert isinstance(caught.value, PortUnavailable)
        assert not isinstance(caught.value, UnitFault)

    def test_busy_port_is_a_station_fault(self, make_device: MakeDevice, open_flasher: OpenFlasher) -> None:
        device = make_device()
        with open_flasher(device.port) as first:
            with pytest.raises(PortUnavailable) as caught:
                open_flasher(device.port)
            assert "in use" in caught.value.message
            first.identify()  # the first slot is unaffected
        # Released on close: the port can be had again.
        with open_flasher(device.port) as again:
            again.identify()
