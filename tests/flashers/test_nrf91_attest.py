"""nRF91 `AT%ATTESTTOKEN` (issue 11): the simulator answers as the modem does, Nordic's own parser reads it,
its COSE signature verifies, and the family reads and keeps it (`read_attestation`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from flashers.base import DeviceGarbage
from flashers.nrf91 import Nrf91Flasher, _cbor_array, b64url_decode
from flashers.simulators.nrf91 import Nrf91Modem, _cbor, new_imei
from flashers.simulators.pty import Link, PtyDevice


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[tuple[str, Nrf91Modem]]:
    model = Nrf91Modem(tmp_path, imei=new_imei())
    with PtyDevice(model) as device:
        yield device.port, model


def test_attestation_token_is_the_identity_message_and_its_cose_signature_verifies(
    modem: tuple[str, Nrf91Modem],
) -> None:
    port, model = modem
    with Nrf91Flasher(port) as flasher:
        flasher.identify()
        token = flasher.attestation_token()
    assert token.device_uuid == model.flash.uuid
    assert token.device_type == 1
    assert len(token.firmware_uuid) == 32
    body, cose = token.text.split(".")
    assert "=" not in token.text
    message = _cbor_array(b64url_decode(body))
    assert message[0] == 1 and message[1] == uuid.UUID(model.flash.uuid).bytes
    signed = b64url_decode(cose)
    assert signed[:2] == b"\xd2\x84"  # COSE_Sign1: tag 18, 4-element array
    protected = _cbor({1: -7})
    assert signed[2 : 2 + len(protected) + 1] == b"\x43" + protected  # bstr(protected {alg: ES256})
    assert b"\xf6" in signed  # the payload is detached (nil): the signature covers the token
    signature = signed[-64:]
    to_sign = _cbor(["Signature1", protected, b"", b64url_decode(body)])
    assert model._attestation_key is not None
    model._attestation_key.public_key().verify(
        encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")),
        to_sign,
        ec.ECDSA(hashes.SHA256()),
    )


def test_nordics_parser_reads_the_token(modem: tuple[str, Nrf91Modem]) -> None:
    parser = pytest.importorskip("nrfcloud_utils.modem_credentials_parser")
    port, model = modem
    with Nrf91Flasher(port) as flasher:
        flasher.identify()
        text = flasher.attestation_token().text
    assert parser.get_device_uuid(text) == model.flash.uuid
    assert parser.parse_attesttoken_output(text) == (None, None)  # no key attestation inside, as documented


def test_the_family_records_it_when_the_product_asks(modem: tuple[str, Nrf91Modem]) -> None:
    port, model = modem
    with Nrf91Flasher(port, read_attestation=True) as flasher:
        info = flasher.identify()
        assert flasher.attestation is not None
        assert flasher.attestation.device_uuid == model.flash.uuid
        assert info.device_id == model.imei
    with Nrf91Flasher(port) as flasher:
        flasher.identify()
        assert flasher.attestation is None  # not asked: one command less per unit


@pytest.mark.parametrize(
    "data", [b"", b"\x81\x01", b"\xa1\x01\x02", b"\x84\x01\x41\x00\x01\x41\x00\x00", b"\x9f"]
)
def test_malformed_cbor_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        fields = _cbor_array(data)
        if len(fields) != 4:
            raise ValueError("not four fields")


class BadToken(Nrf91Modem):
    def _attesttoken(self, args: list[Any], link: Link) -> list[str]:
        return ['%ATTESTTOKEN: "gUE.AA"']  # a one-element array, not the identity message


def test_a_token_that_is_not_the_identity_message_is_garbage(tmp_path: Path) -> None:
    model = BadToken(tmp_path, imei=new_imei())
    with PtyDevice(model) as device, Nrf91Flasher(device.port) as flasher:
        flasher.identify()
        with pytest.raises(DeviceGarbage):
            flasher.attestation_token()
