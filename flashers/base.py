"""The Flasher contract: what every device family's host-side driver offers the pipeline.

A flasher drives one unit on one serial port: it identifies the unit (or only reads its id, `read_unit_id`:
what the line routes a scan by), writes an identity (certificate, key and
optional CA) and proves what it wrote, or lets the unit make its own key (CSR) and installs the certificate
for it, reads a unit's own certificate, asks the unit to check its own connection, and wipes credentials the
station staged. `Capabilities` tells the pipeline which of those flows a family supports; an unsupported
call raises `NotSupported` (a station fault: the product was configured for a flow the family lacks). A unit
whose key the station never held and that cannot check its own connection is verified by observing: it is told
to go online (`go_online`) and the station watches for its hello (`Capabilities.observable`).

Device errors are `UnitFault` (the unit is bad: garbage, silence, a hash that does not match, a unit that
drops off the line) or `StationFault` (the port cannot be opened or is taken, a plan the family cannot run).
Each class below carries the operator's title, one plain sentence and the next action.

This module must not import boto3 or awscrt (import-linter enforces it), open ports itself (that is
`flashers.serialio`), or let key material reach a message, a log line or a repr.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Self

from station.errors import StationFault, UnitFault
from station.i18n import N_, _
from station.model import Identity

PROOF_READ_BACK = "read-back"  # the station read the stored object's hash after commit
PROOF_DEVICE_HASH = "device-hash"  # keys: the hash the device computed when the object was complete


@dataclass(frozen=True)
class Capabilities:
    """Which flows a family supports; the pipeline plans a unit's flow from these before it starts."""

    writes_key: bool = False  # the station may write a key it made (host-made key)
    device_keygen: bool = False  # the unit can make its own key and return a CSR
    device_verify: bool = False  # the unit can prove its own MQTT connection (device-side verify)
    reads_certificate: bool = False  # the unit's own certificate can be read (birth certificate)
    # Told to go online (`go_online`), the unit connects with its own credentials and announces itself with
    # one hello, JSON {"certificate_id", ...} on `things/<thing>/hello`: the station verifies a key it never
    # held by observing that hello with its own identity ("verify by observing").
    observable: bool = False
    # A write is staged and becomes live all at once on commit: a failed proof or a unit that drops off the
    # line mid-write keeps its previous credentials. False for families whose writes are live at once.
    atomic_commit: bool = False


@dataclass(frozen=True)
class DeviceInfo:
    """What a unit says about itself when identified."""

    device_id: str | None
    firmware: str | None
    family: str = ""
    # What the unit proved about itself that the attempt record keeps (e.g. nRF91 `attestation`: the
    # modem's AT%ATTESTTOKEN answer). Plain strings only; never key material.
    evidence: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectProof:
    """Proof for one stored object: its length and SHA-256 as the device reports them.

    `method` is `PROOF_READ_BACK` when the device was asked for the hash of what it stores after commit, or
    `PROOF_DEVICE_HASH` for a key, which is never read back: its proof is the hash the device computed when
    the object was complete, compared with the station's own hash before commit.
    """

    slot: str
    length: int
    sha256: str
    method: str


@dataclass(frozen=True)
class WriteProof:
    """What a write proved, and what it cost on the wire (for timing figures and the ledger)."""

    family: str
    device_id: str | None
    objects: tuple[ObjectProof, ...]
    duration_s: float = 0.0
    frames: int = 0  # frames sent, retransmissions included
    retries: int = 0  # retransmissions
    wire_bytes: int = 0  # bytes both ways, retransmissions included

    def sha256_of(self, slot: str) -> str | None:
        for proof in self.objects:
            if proof.slot == slot:
                return proof.sha256
        return None

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(proof.slot for proof in self.objects)


# ----------------------------------------------------------------------------------------------------------
# Device errors. Titles and sentences are operator words; none of them carries frame contents.

_OBJECT_WORDS = {
    "key": N_("key"),  # not "private key": the ledger refuses any text that looks like key material
    "cert": N_("certificate"),
    "ca": N_("CA certificate"),
    "csr": N_("certificate request"),
}
_REWORK = N_("Put the unit in the rework bin.")
_RESEAT = N_(
    "Reseat the unit in the jig, check its power, and try again; if it fails again, put it in the rework bin."
)


class DeviceNotAnswering(UnitFault):
    """The unit said nothing (or nothing in time)."""

    def __init__(self, detail: str = "") -> None:
        message = _("The device is not answering: check it is seated in the jig and powered.")
        super().__init__(_("Device not answering"), f"{message} {detail}".strip(), _(_RESEAT))


class DeviceGarbage(UnitFault):
    """The unit answered, but with bytes that are not the family's protocol (or a flood of them)."""

    def __init__(self, detail: str = "") -> None:
        message = _("The device answered garbage, not the expected protocol.")
        super().__init__(_("Device answered garbage"), f"{message} {detail}".strip(), _(_RESEAT))


class DeviceDisconnected(UnitFault):
    """The unit dropped off the line (port hang-up) during an exchange."""

    def __init__(self, detail: str = "") -> None:
        message = _("The device disconnected from the serial line.")
        super().__init__(_("Device disconnected"), f"{message} {detail}".strip(), _(_RESEAT))


class DeviceRejected(UnitFault):
    """The unit refused a command with an error code the station cannot work around."""

    def __init__(self, message: str, next_action: str = _REWORK) -> None:
        super().__init__(_("Device refused the command"), message, _(next_action))  # the default is N_


class ProofMismatch(UnitFault):
    """What the device stores is not what the station sent (hash or length differs)."""

    def __init__(self, slot: str, detail: str = "") -> None:
        # Protocols name what they store (key, cert, ca); the operator reads words ("key, cert" from nRF91).
        words = ", ".join(_(_OBJECT_WORDS.get(name.strip(), name.strip())) for name in slot.split(","))
        message = _("The {slot} the device stores does not match what the station sent.").format(slot=words)
        super().__init__(_("Write not proven"), f"{message} {detail}".strip(), _(_REWORK))


class LineTooNoisy(UnitFault):
    """Frames kept failing their checksum: a bad contact or a failing UART on the unit."""

    def __init__(self, detail: str = "") -> None:
        message = _("Too many transmission errors on the serial line.")
        super().__init__(
            _("Serial line too noisy"),
            f"{message} {detail}".strip(),
            _(
                "Reseat the unit and check the jig's cable; if it fails again, put the unit in the rework bin."
            ),
        )


class DeviceCheckFailed(UnitFault):
    """The unit's own connectivity check failed because its credentials were not accepted."""

    def __init__(self, message: str) -> None:
        super().__init__(
            _("Device check failed"),
            message,
            _("Check the certificate is registered and active in the target, then retry; otherwise rework."),
        )


class PortUnavailable(StationFault):
    """The station cannot open the slot's serial port (missing, taken by another program, no permission)."""

    def __init__(self, port: str, reason: str) -> None:
        super().__init__(
            _("Serial port unavailable"),
            _("The station cannot open serial port {port}: {reason}.").format(port=port, reason=reason),
            _("Check the jig's USB cable and that no other program uses the port, then call a technician."),
        )


class NotSupported(StationFault):
    """The pipeline asked a family for a flow it does not have (a configuration mistake)."""

    def __init__(self, family: str, what: str) -> None:
        super().__init__(
            _("Not supported by this device family"),
            _("Device family {family} cannot {what}.").format(family=family, what=what),
            _("Call a technician to fix the product's configuration for this family."),
        )


class DeviceCheckUnreachable(StationFault):
    """The unit's connectivity check could not reach the endpoint (network, TLS trust, timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(
            _("Device check could not connect"),
            message,
            _("Check the station's network and the target's endpoint, then call a technician."),
        )


# ----------------------------------------------------------------------------------------------------------


class Flasher(ABC):
    """Host side of one device family on one port. Use as a context manager; `close()` is idempotent.

    Subclasses set `family` and `capabilities` and implement at least `identify`, `write_identity`, `wipe`
    and `close`; the optional flows raise `NotSupported` unless the family overrides them.
    """

    family: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    @abstractmethod
    def identify(self) -> DeviceInfo:
        """Ask the unit who it is (device id, firmware)."""

    def read_unit_id(self) -> str | None:
        """The unit's own id (the `device_id` that `identify` reports), read without changing anything on the
        unit: what the line asks an idle jig to learn which unit sits in it, before any unit is started there.

        The default asks `identify`; a family whose identify does more (takes a modem offline, loads a
        flasher stub, reads an attestation token) overrides it with the cheapest read of the id alone. None:
        the unit has no id of its own. Raises the same device errors as `identify`.
        """
        return self.identify().device_id

    @abstractmethod
    def write_identity(self, identity: Identity, *, ca_pem: str | None = None) -> WriteProof:
        """Write the identity's certificate and key (and the CA if given), commit, and prove each object.

        An identity without a private key installs its certificate for the key the device made with
        `keygen` in this session.
        """

    def keygen(self, common_name: str) -> str:
        """Have the unit make its own key pair; return its CSR (PEM). The key never leaves the unit."""
        raise NotSupported(self.family, _("make its own key"))

    def install_certificate(self, cert_pem: str) -> WriteProof:
        """Install the certificate for the key the unit made with `keygen`, commit, and prove it."""
        raise NotSupported(self.family, _("install a certificate for a device-made key"))

    def read_certificate(self) -> str:
        """Read the unit's own certificate (PEM)."""
        raise NotSupported(self.family, _("read its certificate"))

    def device_verify(self, host: str, port: int, thing_name: str, timeout_s: float = 20.0) -> None:
        """Have the unit connect to `host:port` with its own credentials and prove an MQTT round trip."""
        raise NotSupported(self.family, _("check its own connection"))

    def go_online(self) -> None:
        """Let the unit go online with what it holds now; it then announces itself (see `observable`)."""
        raise NotSupported(self.family, _("go online and announce itself"))

    @abstractmethod
    def wipe(self) -> None:
        """Drop the credentials this station staged on the unit (and what this session committed)."""

    @abstractmethod
    def close(self) -> None:
        """Release the port. Safe to call twice and after the unit disconnected."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class WireStats:
    """Counters a flasher keeps per operation (for `WriteProof` and the benchmark)."""

    frames: int = 0
    retries: int = 0
    bytes_out: int = 0
    bytes_in: int = 0

    @property
    def wire_bytes(self) -> int:
        return self.bytes_out + self.bytes_in


def check_certificate_fits_csr(cert_pem: str, csr_pem: str | None, *, device: str = "device") -> None:
    """Refuse a certificate whose public key is not the one in the CSR the unit made (`StationFault`).

    A device-made key never leaves the unit, so installing a certificate for another key would brick its
    identity; the station signed the wrong request, which is a station problem, not the unit's.
    """
    if csr_pem is None:
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        same = cert.public_key().public_bytes(der, spki) == csr.public_key().public_bytes(der, spki)
    except (ValueError, UnicodeEncodeError):
        same = False
    if not same:
        raise StationFault(
            _("Certificate does not fit the device key"),
            _("The certificate to install is not for the key the {device} made.").format(device=device),
            _("Call a technician: the certificate was signed for a different request."),
        )
