"""The whole lab: control plane + data plane, wired, with `lab.json` and a ready `station.toml`.

`Lab` is what `station lab`, `station demo` and the tests start. It owns nothing clever: it picks the
(account, region) registries, starts moto's control plane and one TLS data endpoint per registry, and writes
two files into its state dir:

- `lab.json`: how a script outside the project reaches the lab (control-plane URL and keys, the CA file, per
  account its role ARN and per region the data endpoint, port and the matching target name);
- `station.toml`: a station configuration whose targets point at the lab (lab = true, least-privilege policy).

It must not be imported by the station's core; only wiring (demo, tests, `station lab`) uses it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from station.errors import InputError
from station.lab.control import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_REGION,
    LAB_ACCESS_KEY_ID,
    LAB_SECRET_ACCESS_KEY,
    SECOND_ACCOUNT_ID,
    ControlPlane,
)
from station.lab.dataplane import DataPlane
from station.lab.dynamodb import DynamoServer
from station.model import Target
from station.qapin import hash_pin

DEFAULT_REGIONS = (DEFAULT_REGION, "us-east-1")
LAB_POLICY_NAME = "station-lab-device"
LAB_SERIAL_PATTERN = "SIM[0-9]{4,8}"
LAB_QA_PIN = "0000"


def lab_account_ids(count: int) -> tuple[str, ...]:
    """`count` distinct 12-digit account ids: moto's default first (the static keys land there)."""
    if count < 1 or count > 9:
        raise InputError(
            "Bad account count", f"The lab can run 1 to 9 accounts, not {count}.", "Use --accounts 1..9."
        )
    fixed = [DEFAULT_ACCOUNT_ID, SECOND_ACCOUNT_ID]
    extra = [str(n) * 12 for n in range(3, 10)]
    return tuple((fixed + extra)[:count])


def target_name(account_index: int, region: str) -> str:
    """The station target name for the lab registry (account n, region): `lab1-ap-northeast-1`."""
    return f"lab{account_index + 1}-{region}"


@dataclass(frozen=True)
class LabProduct:
    """A product for `Lab.station_toml`: its device family, serial pattern and `[products.NAME.options]`.

    `thing_name_template` is a target setting in station.toml; a product that needs its own (an ExpressLink
    module must be named by its ThingName, `{device_id}`) goes to a target of its own, `<first target>-<product>`,
    on the same lab registry as the first target.
    """

    flasher: str = "prov1"
    serial_pattern: str = LAB_SERIAL_PATTERN
    options: Mapping[str, bool | int | float | str] = field(default_factory=dict)
    thing_name_template: str | None = None


def _toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@dataclass(frozen=True)
class LabRegistry:
    """One (account, region) of the lab: its data endpoint and the station target pointing at it."""

    account_id: str
    region: str
    role_arn: str | None
    data_port: int
    target: Target


class Lab:
    """Control plane + data plane on 127.0.0.1, as a context manager (ready in well under 3 s).

    >>> with Lab(tmp_path) as lab:
    ...     target = lab.target()          # the first account's first region
    ...     lab.control.client("iot", account_id=lab.accounts[1], region="us-east-1")
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        accounts: int = 2,
        regions: Sequence[str] = DEFAULT_REGIONS,
        throttling: bool = True,
        control_port: int = 0,
        data_ports: dict[tuple[str, str], int] | None = None,
        dynamodb_process: bool = False,
    ) -> None:
        """`dynamodb_process`: serve DynamoDB (the shared ledger and budget) from a process of its own
        (`station.lab.dynamodb.DynamoServer`, what `station lab` does for many station processes) instead of
        the control plane's."""
        if not regions:
            raise InputError("No region", "The lab needs at least one region.", "Give --regions R1[,R2…].")
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.accounts = lab_account_ids(accounts)
        self.regions = tuple(regions)
        self.control = ControlPlane(
            port=control_port,
            accounts=self.accounts,
            default_region=self.regions[0],
            throttling=throttling,
        )
        endpoints = {(a, r): (data_ports or {}).get((a, r), 0) for a in self.accounts for r in self.regions}
        self._endpoints = endpoints
        self.data: DataPlane | None = None
        self.dynamodb: DynamoServer | None = DynamoServer() if dynamodb_process else None
        self.registries: list[LabRegistry] = []
        self.start_seconds: float | None = None

    # -- lifecycle

    def start(self) -> Lab:
        started = time.perf_counter()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise InputError(
                "Lab state dir not writable",
                f"The lab cannot write to {self.state_dir} ({error.strerror or error}).",
                "Give a folder you can write to with --state-dir.",
            ) from None
        self.control.start()
        try:
            if self.dynamodb is not None:
                self.dynamodb.start()
            self.data = DataPlane(self._endpoints, self.state_dir)
            self.data.start()
            self.registries = [
                self._registry(i, a, r) for i, a in enumerate(self.accounts) for r in self.regions
            ]
            self.write_files()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        if self.data is not None:
            self.data.stop()
            self.data = None
        if self.dynamodb is not None:
            self.dynamodb.stop()
        self.control.stop()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what the lab offers

    @property
    def ca_file(self) -> Path:
        assert self.data is not None, "the lab is not started"
        return Path(self.data.ca_file)

    @property
    def ca_bytes(self) -> bytes:
        return self.ca_file.read_bytes()

    @property
    def lab_json_path(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "station.toml"

    def registry(self, account_id: str | None = None, region: str | None = None) -> LabRegistry:
        account_id = account_id or self.accounts[0]
        region = region or self.regions[0]
        for registry in self.registries:
            if registry.account_id == account_id and registry.region == region:
                return registry
        raise InputError(
            "Unknown lab registry",
            f"The lab has no registry for account {account_id} in {region}.",
            f"Use one of accounts {', '.join(self.accounts)} and regions {', '.join(self.regions)}.",
        )

    def target(self, account_id: str | None = None, region: str | None = None) -> Target:
        """The station target for a lab registry (default: first account, first region)."""
        return self.registry(account_id, region).target

    @property
    def targets(self) -> dict[str, Target]:
        return {r.target.name: r.target for r in self.registries}

    def iot(self, account_id: str | None = None, region: str | None = None) -> Any:
        """A boto3 IoT client acting in that lab registry (for tests and QA scripts)."""
        return self.control.client("iot", account_id=account_id, region=region or self.regions[0])

    # -- files

    def _registry(self, index: int, account_id: str, region: str) -> LabRegistry:
        assert self.data is not None
        port = self.data.port_for(account_id, region)
        role_arn = None if account_id == DEFAULT_ACCOUNT_ID else self.control.role_arn(account_id)
        from station.policy import LEAST_PRIVILEGE_POLICY_JSON

        target = Target(
            name=target_name(index, region),
            region=region,
            policy_name=LAB_POLICY_NAME,
            policy_document=LEAST_PRIVILEGE_POLICY_JSON,
            account_id=account_id,
            role_arn=role_arn,
            endpoint="localhost",
            port=port,
            ca_file=str(self.ca_file),
            endpoint_url=self.control.endpoint_url,
            aws_access_key_id=LAB_ACCESS_KEY_ID,
            aws_secret_access_key=LAB_SECRET_ACCESS_KEY,
            lab=True,
        )
        return LabRegistry(account_id, region, role_arn, port, target)

    def description(self) -> dict[str, Any]:
        """The content of lab.json (the interface scripts outside the project depend on)."""
        accounts = []
        for account_id in self.accounts:
            regions = {
                r.region: {"data_endpoint": "localhost", "data_port": r.data_port, "target": r.target.name}
                for r in self.registries
                if r.account_id == account_id
            }
            accounts.append(
                {"account_id": account_id, "role_arn": self.control.role_arn(account_id), "regions": regions}
            )
        return {
            "control_plane": {
                "endpoint_url": self.control.endpoint_url,
                "aws_access_key_id": LAB_ACCESS_KEY_ID,
                "aws_secret_access_key": LAB_SECRET_ACCESS_KEY,
            },
            "ca_file": str(self.ca_file),
            "accounts": accounts,
            # DynamoDB (the control plane's, or a process of its own): a shared ledger and a shared rate budget
            # for several station processes on one lab (same keys as the control plane).
            "dynamodb": {
                "endpoint_url": self.dynamodb_url,
                "region": self.regions[0],
                "ledger_url": f"dynamodb://station-ledger?region={self.regions[0]}&endpoint_url={self.dynamodb_url}",
                "budget_url": f"dynamodb://station-budget?region={self.regions[0]}&endpoint_url={self.dynamodb_url}",
            },
        }

    @property
    def dynamodb_url(self) -> str:
        """Where the lab answers DynamoDB."""
        return self.dynamodb.endpoint_url if self.dynamodb is not None else self.control.endpoint_url

    def station_toml(
        self,
        *,
        ledger: str = "ledger.sqlite",
        slots: dict[str, str] | None = None,
        products: Mapping[str, LabProduct] | None = None,
        slot_products: Mapping[str, str] | None = None,
        label_printer: str | None = None,
        station_id: str = "lab-station",
        budget_store: str | None = None,
    ) -> str:
        """A ready station.toml pointing at this lab; `slots` maps slot name → port URL; `label_printer`
        adds `[station.labels]` (where PASS labels go).

        By default there is one product, `sim` (PROV/1, serials `SIM####`). `products` replaces it (name →
        `LabProduct`); `slot_products` names each slot's product (default: `sim` if there is one, else the
        first product).
        """
        products = dict(products) if products is not None else {"sim": LabProduct()}
        if not products:
            raise InputError("No product", "The lab's station.toml needs at least one product.", "Give one.")
        default_product = "sim" if "sim" in products else next(iter(products))
        lines = [
            "# Written by the lab: every target points at the local AWS IoT (lab = true).",
            "[station]",
            f"id = {json.dumps(station_id)}",
            f"ledger = {json.dumps(ledger)}",
            'operator = "trainee"',
            # The lab's QA PIN is 0000 (the demo's help panel, F1, says so); even here only its salted hash is kept.
            f"qa_pin_hash = {json.dumps(hash_pin(LAB_QA_PIN))}",
            "",
        ]
        if label_printer:
            lines += ["[station.labels]", f"printer = {json.dumps(label_printer)}", ""]
        if budget_store:
            lines += ["[budget]", f"store = {json.dumps(budget_store)}", ""]
        first = self.registries[0].target
        for registry in self.registries:
            lines += self._target_toml(registry.target.name, registry.target)
        product_targets: dict[str, str] = {}
        for name, product in products.items():
            product_targets[name] = first.name
            if product.thing_name_template is not None:
                product_targets[name] = f"{first.name}-{name}"
                lines += self._target_toml(
                    product_targets[name], first, thing_name_template=product.thing_name_template
                )
        for name, product in products.items():
            lines += [
                f"[products.{name}]",
                f"serial_pattern = {json.dumps(product.serial_pattern)}",
                f"flasher = {json.dumps(product.flasher)}",
                f'target = "{product_targets[name]}"',
                "",
            ]
            if product.options:
                lines.append(f"[products.{name}.options]")
                lines += [f"{key} = {_toml_value(value)}" for key, value in product.options.items()]
                lines.append("")
        for name, port in (slots or {}).items():
            product_name = (slot_products or {}).get(name, default_product)
            lines += [f"[slots.{name}]", f"port = {json.dumps(port)}", f'product = "{product_name}"', ""]
        if not slots:
            # `station run` needs a slot: say how to add one for a unit started with `station sim`.
            lines += [
                "# No slots yet. Start a simulated unit (`station sim prov1` prints its port first), then:",
                "# [slots.s1]",
                '# port = "/dev/pts/N"',
                f'# product = "{default_product}"',
                "",
            ]
        return "\n".join(lines)

    @staticmethod
    def _target_toml(name: str, t: Target, *, thing_name_template: str | None = None) -> list[str]:
        lines = [
            f"[targets.{name}]",
            "lab = true",
            f'region = "{t.region}"',
            f'account_id = "{t.account_id}"',
        ]
        if t.role_arn:
            lines.append(f'role_arn = "{t.role_arn}"')
        lines += [
            f'endpoint_url = "{t.endpoint_url}"',
            f'endpoint = "{t.endpoint}"',
            f"port = {t.port}",
            f"ca_file = {json.dumps(t.ca_file)}",
            f'aws_access_key_id = "{t.aws_access_key_id}"',
            f'aws_secret_access_key = "{t.aws_secret_access_key}"',
            f'policy_name = "{t.policy_name}"',
            f"policy_document = '''{t.policy_document}'''",
        ]
        if thing_name_template is not None:
            lines.append(f"thing_name_template = {json.dumps(thing_name_template)}")
        return [*lines, ""]

    def write_files(self) -> None:
        self.lab_json_path.write_text(json.dumps(self.description(), indent=2) + "\n")
        self.config_path.write_text(self.station_toml())


class JoinedLab(Lab):
    """A lab that another process runs (`station lab`), reached through its `lab.json`: what a station process
    uses to join it, so that several stations share one lab. Starting and stopping it touch nothing but this
    station's own `state_dir` (where its station.toml goes); the lab's files are only read."""

    def __init__(self, lab_json: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> None:
        path = Path(lab_json).expanduser()
        try:
            described = json.loads(path.read_text(encoding="utf-8"))
            control = described["control_plane"]
            accounts = described["accounts"]
            ca_file = Path(described["ca_file"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(
                "No lab to join",
                f"{path} is not a running lab's lab.json ({type(error).__name__}).",
                "Start the lab with `station lab --state-dir DIR` and give --lab DIR/lab.json.",
            ) from None
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.described = described
        self.accounts = tuple(str(a["account_id"]) for a in accounts)
        self.regions = tuple(accounts[0]["regions"])
        self.data = None
        self.dynamodb = None
        self.start_seconds = 0.0
        self._ca_file = ca_file
        from station.policy import LEAST_PRIVILEGE_POLICY_JSON

        self.registries = []
        for account in accounts:
            account_id = str(account["account_id"])
            role_arn = None if account_id == DEFAULT_ACCOUNT_ID else account.get("role_arn")
            for region, where in account["regions"].items():
                target = Target(
                    name=str(where["target"]),
                    region=region,
                    policy_name=LAB_POLICY_NAME,
                    policy_document=LEAST_PRIVILEGE_POLICY_JSON,
                    account_id=account_id,
                    role_arn=role_arn,
                    endpoint=str(where["data_endpoint"]),
                    port=int(where["data_port"]),
                    ca_file=str(ca_file),
                    endpoint_url=str(control["endpoint_url"]),
                    aws_access_key_id=str(control["aws_access_key_id"]),
                    aws_secret_access_key=str(control["aws_secret_access_key"]),
                    lab=True,
                )
                self.registries.append(LabRegistry(account_id, region, role_arn, target.port, target))

    def start(self) -> JoinedLab:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self

    def stop(self) -> None:
        """The lab belongs to another process: nothing to stop here."""

    @property
    def ca_file(self) -> Path:
        return self._ca_file

    @property
    def budget_url(self) -> str | None:
        """The shared rate budget the lab offers its stations (lab.json `dynamodb.budget_url`)."""
        value = (self.described.get("dynamodb") or {}).get("budget_url")
        return str(value) if value else None
