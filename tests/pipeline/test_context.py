"""The wiring with real configuration, identities and ledger; fake registry, flasher and verifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_fakes import Caps, FakeFlasher, FakeRegistry, FakeVerifier, Log

from station.config import load_config
from station.context import StationContext
from station.errors import InputError
from station.identity import certificate_id
from station.ledger import open_ledger
from station.line import Line
from station.model import Event, Outcome

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

CONFIG = """
[station]
id = "test-station"
ledger = "ledger.sqlite"
operator = "ann"

[targets.lab-eu]
lab = true
region = "eu-west-1"
account_id = "123456789012"
endpoint_url = "http://127.0.0.1:9"
endpoint = "localhost"
aws_access_key_id = "testing"
aws_secret_access_key = "testing"
policy_name = "lab-everything"
policy_document = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}'

[targets.lab-us]
lab = true
region = "us-east-1"
account_id = "123456789012"
endpoint_url = "http://127.0.0.1:9"
endpoint = "localhost"
aws_access_key_id = "testing"
aws_secret_access_key = "testing"
policy_name = "lab-everything"
policy_document = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}'
thing_name_template = "{product}_{device_id}"

[targets.lab-us.issuer]
certificate_file = "FACTORY_CA_PEM"
key_file = "FACTORY_CA_KEY"
passphrase_env = "STATION_TEST_CA_PASSPHRASE"

[products.sim]
serial_pattern = "SIM[0-9]{4}"
flasher = "prov1"
target = "lab-eu"

[products.sim.options]
chunk = 64

[products.tracker]
serial_pattern = "TR[0-9]{4}"
flasher = "nrf91"
target = "lab-us"

[products.tracker.options]
key_source = "device"
check_device_id = false

[slots.s1]
port = "loop://1"
product = "sim"

[slots.s2]
port = "loop://2"
product = "sim"
baud = 9600
"""


class Parts:
    def __init__(self) -> None:
        self.log = Log()
        self.registries: dict[str, FakeRegistry] = {}
        self.verifier = FakeVerifier(self.log)
        self.opened: list[dict[str, Any]] = []
        self.flashers: list[FakeFlasher] = []

    def registry(self, target: Any) -> FakeRegistry:
        return self.registries.setdefault(target.name, FakeRegistry(self.log))

    def flasher(self, port: str, *, family: str, baud: int, options: dict[str, Any]) -> FakeFlasher:
        self.opened.append({"port": port, "family": family, "baud": baud, "options": options})
        if family == "nrf91":
            flasher = FakeFlasher(self.log, device_id="IMEI0001", caps=Caps(False, True, True, False))
        else:
            flasher = FakeFlasher(self.log, device_id=None)
        self.flashers.append(flasher)
        return flasher


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATION_TEST_CA_PASSPHRASE", "factory-ca-passphrase")  # see fixtures/make_fixtures.py
    text = CONFIG.replace("FACTORY_CA_PEM", str(FIXTURES / "certs" / "factory-ca.pem")).replace(
        "FACTORY_CA_KEY", str(FIXTURES / "certs" / "factory-ca.key")
    )
    path = tmp_path / "station.toml"
    path.write_text(text)
    return path


def make_context(config_path: Path, parts: Parts, events: list[Event] | None = None) -> tuple[Any, Any]:
    config = load_config(config_path)
    ledger = open_ledger(config.ledger_path)
    context = StationContext(
        config,
        ledger=ledger,
        on_event=None if events is None else events.append,
        flasher_factory=parts.flasher,
        registry_factory=parts.registry,
        verifier=parts.verifier,
    )
    return context, ledger


def test_provision_one_unit_with_real_identity_and_ledger(config_path: Path) -> None:
    parts = Parts()
    events: list[Event] = []
    context, ledger = make_context(config_path, parts, events)
    with ledger:
        result = context.provision("SIM0001", "loop://x", slot="s2")

        assert result.outcome == Outcome.PASS, result.message
        assert result.thing_name == "sim-SIM0001"
        # The certificate id is the SHA-256 of the DER of a real certificate.
        assert result.certificate_id == certificate_id(result.certificate_pem)
        assert parts.opened == [
            {"port": "loop://x", "family": "prov1", "baud": 9600, "options": {"chunk": 64}}
        ]
        assert parts.flashers[0].has_key
        (record,) = ledger.find("SIM0001")
        assert record.outcome == "PASS" and record.operator == "ann" and record.station_id == "test-station"
        assert record.certificate_id == result.certificate_id and record.slot == "s2"
        # (the record step's own time cannot be inside the record it writes; its event carries it)
        assert set(record.timings_ms) >= {"identify", "identity", "write", "register", "verify", "total"}
        assert ledger.journal_pending() == []
        assert ledger.audit().ok
        chained = [e.event.kind for e in ledger.events("SIM0001")]
        unit_events = [kind for kind in chained if kind != "journal"]  # the journal is chained as it goes
        assert unit_events[0] == "unit_started" and "unit_finished" in unit_events
        assert [e.kind for e in events][-1] == "unit_finished"


def test_device_keygen_product_gets_a_factory_signed_certificate(config_path: Path) -> None:
    parts = Parts()
    context, ledger = make_context(config_path, parts)

    def keygen(common_name: str) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    original = parts.flasher

    def flasher(port: str, **kw: Any) -> FakeFlasher:
        f = original(port, **kw)
        f.keygen = keygen  # type: ignore[method-assign]
        return f

    context._flasher_factory = flasher
    with ledger:
        result = context.provision("TR0001", "loop://t", product="tracker")
    assert result.outcome == Outcome.PASS, result.message
    assert result.key_source == "device" and result.verify_mode == "device"
    assert result.thing_name == "tracker_IMEI0001"  # the template uses the device id from identify
    assert (
        parts.opened[0]["options"] == {}
    )  # key_source/check_device_id are the pipeline's, not the flasher's
    assert "CERTIFICATE" in (parts.flashers[0].certificate or "") and not parts.flashers[0].has_key


def test_prepare_checks_the_scan_and_names(config_path: Path) -> None:
    context, ledger = make_context(config_path, Parts())
    with ledger:
        with pytest.raises(InputError, match="does not match"):
            context.prepare("SIM12", slot="s1")
        with pytest.raises(InputError, match="Which product"):
            context.prepare("SIM0001")  # no slot, two products
        with pytest.raises(InputError, match="no target"):
            context.prepare("SIM0001", slot="s1", target="nowhere")
        request = context.prepare(" SIM0001\n", slot="s1", target="lab-us")
        assert request.serial == "SIM0001" and request.target.name == "lab-us"
        assert request.issuer is not None


def test_line_from_config_shares_one_registry_per_target(config_path: Path) -> None:
    parts = Parts()
    config = load_config(config_path)
    with open_ledger(config.ledger_path) as ledger:
        line = Line(
            config,
            ledger=ledger,
            flasher_factory=parts.flasher,
            registry_factory=parts.registry,
            verifier=parts.verifier,
        )
        try:
            assert line.scan("SIM0001") == "s1"
            assert line.scan("SIM0002") == "s2"
            assert line.wait_idle(20)
            assert [r.outcome for r in line.results()] == [Outcome.PASS, Outcome.PASS]
            assert list(parts.registries) == ["lab-eu"]
            assert len(parts.registries["lab-eu"].certificates) == 2
            assert len(list(ledger.records())) == 2 and ledger.audit().ok
        finally:
            line.stop(timeout=10)
