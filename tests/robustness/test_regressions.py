"""One test per crash or stall listed in issue 10, through the library and, where it was found, the CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from station import identity
from station.cli import EXIT_USAGE
from station.config import load_config
from station.errors import ConfigError, InputError
from station.tui.state import parse_scan

ROOT = Path(__file__).resolve().parents[2]
CERTS = ROOT / "fixtures" / "certs"
PRODUCTION = ROOT / "fixtures" / "configs" / "station.toml"
STATION = str(Path(sys.executable).with_name("station"))
BEGIN_1MIB = b"-----BEGIN CERTIFICATE-----\n" * 37449


def _register(tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STATION, "register", *args, "--serial", "SN000001", "--target", "prod-eu", "--config", str(PRODUCTION),
         "--ledger", str(tmp_path / "l.sqlite")],
        input=stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )  # fmt: skip


# -- PKCS#12 password with a NUL byte: pyo3_runtime.PanicException (a BaseException) -------------------------


@pytest.mark.parametrize("password", ["\x00", "sec\x00ret", b"\x00"])
def test_nul_in_a_pkcs12_password_is_an_input_error(password: str | bytes, capfd) -> None:
    with pytest.raises(InputError, match="NUL"):
        identity.load_identity_file(CERTS / "ec-p256-secret.p12", password=password)
    assert "panicked" not in capfd.readouterr().err  # refused before cryptography could panic


def test_nul_password_through_station_register(tmp_path: Path) -> None:
    done = _register(
        tmp_path, "--p12", str(CERTS / "ec-p256-secret.p12"), "--password-stdin", stdin=b"\x00\n"
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Password not usable" in done.stderr and "Traceback" not in done.stderr
    assert "PanicException" not in done.stderr


# -- certificates whose subject or issuer holds an invalid value: ValueError later, outside the import -------


@pytest.mark.parametrize(("name", "field"), [("bad-subject.crt", "subject"), ("bad-issuer.der", "issuer")])
def test_lazily_damaged_certificates_are_refused_at_import(name: str, field: str) -> None:
    with pytest.raises(InputError, match=f"whose {field} cannot be decoded"):
        identity.load_identity_file(CERTS / "bad" / name)
    data = (CERTS / "bad" / name).read_bytes()
    for call in (identity.certificate_id, identity.check_aws_acceptance, identity.describe):
        with pytest.raises(InputError):
            call(data)


def test_lazily_damaged_certificate_through_station_register(tmp_path: Path) -> None:
    done = _register(tmp_path, "--cert", str(CERTS / "bad" / "bad-subject.crt"))
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Damaged certificate" in done.stderr and "Traceback" not in done.stderr


# -- config: NUL byte in a path value, deep nesting ---------------------------------------------------------


def test_nul_in_a_config_path_is_a_config_error(tmp_path: Path) -> None:
    text = PRODUCTION.read_text().replace('ledger = "ledger.sqlite"', 'ledger = "led\\u0000ger.sqlite"')
    text = text.replace('"../', f'"{PRODUCTION.parent}/../')
    (tmp_path / "station.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"\[station\] ledger: contains a NUL"):
        load_config(tmp_path / "station.toml")


def test_nul_in_the_config_path_itself() -> None:
    with pytest.raises(ConfigError, match="NUL"):
        load_config("station\x00.toml")


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "station.toml").write_text("deep = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(tmp_path / "station.toml")


def test_oversized_and_binary_configs(tmp_path: Path) -> None:
    (tmp_path / "big.toml").write_bytes(b"# x\n" * 3_000_000)
    with pytest.raises(ConfigError, match=r"larger than 262,144 bytes"):
        load_config(tmp_path / "big.toml")
    (tmp_path / "utf16.toml").write_bytes(PRODUCTION.read_text().encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "utf16.toml")


# -- a scan with a 5,000-digit slot prefix: int() over Python's digit limit --------------------------------


def test_a_huge_digit_prefix_is_an_input_error() -> None:
    with pytest.raises(InputError, match="Scan too long"):
        parse_scan("7" * 5000 + ":SN000001", ["s1", "s2"])
    with pytest.raises(InputError, match="No such slot"):
        parse_scan("7" * 100 + ":SN000001", ["s1", "s2"])


# -- the stall: 1 MiB that starts a PEM block and never ends took 192 s -------------------------------------


def test_an_unclosed_megabyte_of_pem_is_refused_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(InputError, match="never ends"):
        identity.load_identity_bytes(BEGIN_1MIB)
    assert time.perf_counter() - started < 1.0


def test_the_pem_scan_is_linear() -> None:
    """Doubling the input roughly doubles the time (quadratic work would quadruple it)."""

    def seconds(size: int) -> float:
        data = b"-----BEGIN CERTIFICATE-----\n" * size + b"-----END X-----\n"
        started = time.perf_counter()
        identity._pem_blocks(data)
        return time.perf_counter() - started

    small, large = min(seconds(8000) for _ in range(3)), min(seconds(32000) for _ in range(3))
    assert large < small * 12  # 4× the input; quadratic would be ~16×


def test_an_unclosed_megabyte_through_station_register(tmp_path: Path) -> None:
    (tmp_path / "begin-1MiB.pem").write_bytes(BEGIN_1MIB)
    started = time.perf_counter()
    done = _register(tmp_path, "--cert", str(tmp_path / "begin-1MiB.pem"))
    assert time.perf_counter() - started < 10  # a whole process start, on a busy machine
    assert done.returncode == EXIT_USAGE and "never ends" in done.stderr


def test_too_many_pem_blocks_are_refused() -> None:
    block = (CERTS / "ec-p256.pem").read_bytes()
    with pytest.raises(InputError, match="more than 64 PEM blocks"):
        identity.load_identity_bytes(block * 200)


def test_an_endless_file_is_read_only_up_to_the_limit() -> None:
    with pytest.raises(InputError, match="larger than 1,048,576 bytes"):
        identity.load_identity_file("/dev/zero")


# -- PKCS#12 work: the key derivation a file asks for is capped ---------------------------------------------


def _p12(rounds: int) -> bytes:
    ident = identity.new_identity("kdf-test")
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(ident.certificate_pem.encode())
    assert ident.private_key is not None
    key = serialization.load_pem_private_key(ident.private_key.reveal(), None)
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(rounds)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(b"pw")
    )
    return pkcs12.serialize_key_and_certificates(b"unit", key, cert, None, encryption)  # type: ignore[arg-type]


def test_pkcs12_asking_for_too_many_kdf_iterations_is_refused_without_running_them() -> None:
    data = _p12(identity.MAX_KDF_ITERATIONS * 4)
    started = time.perf_counter()
    with pytest.raises(InputError, match="key-derivation iterations"):
        identity.load_identity_bytes(data, password="pw")
    assert time.perf_counter() - started < 0.5


def test_pkcs12_with_ordinary_kdf_settings_opens() -> None:
    assert identity.load_identity_bytes(_p12(2048), password="pw").private_key is not None


def test_a_huge_rsa_key_file_is_refused_before_its_slow_consistency_check() -> None:
    """RSA's key check grows steeply with size (8192 bits: ~6 s); such a key file must not stall the station."""
    import secrets

    from cryptography.hazmat.primitives.asymmetric import rsa

    p, q = (secrets.randbits(4096) | (3 << 4094) | 1 for _ in range(2))  # top two bits: n has 8192
    numbers = rsa.RSAPrivateNumbers(
        p=p, q=q, d=3, dmp1=1, dmq1=1, iqmp=1, public_numbers=rsa.RSAPublicNumbers(65537, p * q)
    )
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)  # not a real key: made in microseconds
    assert key.key_size == 8192
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert = (CERTS / "ec-p256.pem").read_bytes()
    started = time.perf_counter()
    with pytest.raises(InputError, match="at most 4096 bits"):
        identity.load_identity_bytes(cert, key_data=pem)
    assert time.perf_counter() - started < 0.5


def test_an_inconsistent_small_rsa_key_is_still_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    real = rsa.generate_private_key(65537, 2048).private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=real.p, q=real.q, d=real.d + 2, dmp1=real.dmp1, dmq1=real.dmq1, iqmp=real.iqmp,
        public_numbers=real.public_numbers,
    )  # fmt: skip
    pem = broken.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InputError, match="Unreadable"):
        identity.load_identity_bytes((CERTS / "rsa-2048.pem").read_bytes(), key_data=pem)


def _indefinite(pfx: bytes, mac_iterations: bytes | None = None) -> bytes:
    """The PFX re-written with BER's indefinite outer length (as some exporters do), its MAC count replaced."""
    outer = identity._der_element(pfx, 0)
    items = identity._ber_children(pfx, 0)
    assert outer is not None and items is not None and len(items) == 3
    mac_pos = items[1][2]
    mac = pfx[mac_pos:]
    if mac_iterations is not None:
        mac_items = identity._ber_children(pfx, mac_pos)
        assert mac_items is not None
        header = identity._der_header(pfx, mac_pos)
        assert header is not None
        content = (
            pfx[header[1] : mac_items[2][1] - 2] + b"\x02" + bytes([len(mac_iterations)]) + mac_iterations
        )
        mac = b"\x30" + bytes([len(content)]) + content
    return b"\x30\x80" + pfx[outer[1] : mac_pos] + mac + b"\x00\x00"


def test_a_ber_pkcs12_asking_for_billions_of_mac_iterations_is_refused() -> None:
    pfx = (CERTS / "ec-p256-secret.p12").read_bytes()
    started = time.perf_counter()
    with pytest.raises(InputError, match="2,147,483,647 key-derivation iterations"):
        identity.load_identity_bytes(_indefinite(pfx, b"\x7f\xff\xff\xff"), password="secret")
    assert time.perf_counter() - started < 0.5


@pytest.mark.filterwarnings("ignore:PKCS#12 bundle could not be parsed as DER")
def test_a_ber_pkcs12_with_ordinary_settings_still_opens() -> None:
    pfx = (CERTS / "ec-p256-secret.p12").read_bytes()
    assert identity._mac_iterations(_indefinite(pfx)) == 2048
    assert identity.load_identity_bytes(_indefinite(pfx), password="secret").private_key is not None
