"""QA actions on single units, for the CLI (`station register | revoke | transfer | preflight`) and the QA desk
(which calls nothing else to change AWS or a unit): one module per action, each a recorded attempt
(`station.attempt`) with the operator.

- `register`: an existing certificate (PEM, DER, PKCS#12; key optional) registered for one unit; PASS with
  verify, DONE "registered (not verified)" without.
- `revoke`: the unit's certificate(s) out of their targets (AWS's order), planned from the ledger first.
- `transfer`: the unit's certificate registered in another target, optionally revoked at the source.
- `reverify`: the unit proves its connection again, on a slot (device-side) or host-side with its key.
- `reprovision`: a new identity for a unit on a slot (the line's replace path), the old one revoked.
- `preflight`: every target's read-only checks.

It must not: print or prompt (the CLI and the TUI talk to people), import the lab, write or record a private
key (a key given for verify is used in memory and dropped), decide anything by message text, or touch AWS
before every local check (certificate rules, serial, thing name, target) has passed.
"""

from station.qa.common import (
    ANY_SERIAL,
    QA_SLOT,
    QA_STEP_PREFIX,
    AlreadyDone,
    NotFound,
    RegistryFactory,
    find_target,
    live_records,
    load_certificate,
    made_live,
    operator_name,
    unit_names,
    unit_records,
    unit_state,
)
from station.qa.preflight import PreflightReport, TargetReport, preflight
from station.qa.register import RegisterResult, register_certificate, register_files
from station.qa.reprovision import ReprovisionPlan, plan_reprovision, reprovision_unit
from station.qa.reverify import ReverifyResult, record_slot, reverify_record, reverify_unit
from station.qa.revoke import (
    RevokeDone,
    RevokeItem,
    RevokePlan,
    RevokeResult,
    plan_revoke,
    revoke_unit,
)
from station.qa.transfer import TransferPlan, TransferResult, plan_transfer, transfer_unit

__all__ = [
    "ANY_SERIAL",
    "QA_SLOT",
    "QA_STEP_PREFIX",
    "AlreadyDone",
    "NotFound",
    "PreflightReport",
    "RegisterResult",
    "RegistryFactory",
    "ReprovisionPlan",
    "ReverifyResult",
    "RevokeDone",
    "RevokeItem",
    "RevokePlan",
    "RevokeResult",
    "TargetReport",
    "TransferPlan",
    "TransferResult",
    "find_target",
    "live_records",
    "load_certificate",
    "made_live",
    "operator_name",
    "plan_reprovision",
    "plan_revoke",
    "plan_transfer",
    "preflight",
    "record_slot",
    "register_certificate",
    "register_files",
    "reprovision_unit",
    "reverify_record",
    "reverify_unit",
    "revoke_unit",
    "transfer_unit",
    "unit_names",
    "unit_records",
    "unit_state",
]
