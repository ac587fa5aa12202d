"""`station register`: register an existing certificate for one unit in one target (the seed's keychain case).

    station register --cert unit.cer --p12 unit.p12 --serial SA00001234 --target prod-eu --verify

The certificate (PEM, DER or PKCS#12, with its key as --key, inside --p12, or none) is checked against AWS
IoT's rules before any AWS call; then it is registered without a CA (ACTIVE), the unit's thing is made and
policy + thing attached, optionally verified over MQTT with the key (rolled back when that fails), and the
attempt is recorded in the ledger with the operator. Registering the same certificate again is harmless.

A thin layer over `station.qa.register_certificate`. This module also holds the few CLI helpers the other
QA commands (revoke, transfer, preflight) share: config/ledger/operator options, the ledger with the QA PIN
checked, the plan and its confirmation, errors.
A password comes from stdin only (never an argument, so it stays out of the process list and shell history).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from station.cli import EXIT_NOT_FOUND, EXIT_OK
from station.commands._options import add_config_argument
from station.errors import InputError, StationError
from station.i18n import _

EXAMPLES = """examples:
  station register --cert unit.cer --p12 unit.p12 --serial SA00001234 --target prod-eu --verify
  station register --cert unit.pem --key unit.key --serial SA00001234 --target prod-eu --json
  echo "$P12_PASSWORD" | station register --p12 unit.p12 --password-stdin --serial SA00001234 --target prod-eu

exit codes:
  0  registered, or already registered (nothing to do)
  1  FAIL: --verify did not pass; what this command registered was rolled back
  2  bad input: arguments, certificate file or key (checked before any AWS call), serial, config
  3  ERROR: station, network or AWS problem (call a technician)
  4  not found: no such target
"""


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by the QA commands
# ---------------------------------------------------------------------------------------------------------


def add_station_arguments(parser: argparse.ArgumentParser, *, operator: bool = True) -> None:
    """--config, --ledger, --operator and --json, as every QA command takes them."""
    add_config_argument(parser)
    parser.add_argument("--ledger", metavar="PATH", help="the ledger (default: the one station.toml names)")
    if operator:
        parser.add_argument(
            "--operator",
            metavar="NAME",
            help="who acts, for the ledger (default: the config's operator, else your login name)",
        )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def ledger_location(args: argparse.Namespace, config: Any) -> str:
    return str(args.ledger) if args.ledger else os.fspath(config.ledger_path)


def print_error(args: argparse.Namespace, error: StationError, *, kind: str | None = None) -> None:
    """An error as `station.cli.main` prints it (JSON on stdout with --json, else on stderr)."""
    if getattr(args, "json", False):
        data = error.as_dict()
        if kind:
            data["kind"] = kind
        print(json.dumps({"error": data}))
    else:
        print(
            _("{title}: {message}\nNext: {next_action}").format(
                title=error.title, message=error.message, next_action=error.next_action
            ),
            file=sys.stderr,
        )


def not_found(args: argparse.Namespace, error: StationError) -> int:
    print_error(args, error, kind="NotFound")
    return EXIT_NOT_FOUND


def is_interactive() -> bool:
    try:
        return bool(sys.stdin.isatty())
    except (AttributeError, ValueError, OSError):  # closed or replaced stdin
        return False


def confirm(question: str, *, yes: bool, flag: str = "--yes") -> bool:
    """True to go on: with --yes at once; on a terminal, if the person answers y; never without a terminal.

    Without a terminal and without --yes it refuses (InputError, exit 2): a script must say so explicitly.
    """
    if yes:
        return True
    if not is_interactive():
        raise InputError(
            _("Confirmation needed"),
            _(
                "This command changes AWS and asks for confirmation, but no one can answer here (no terminal)."
            ),
            _("Add {flag} to run it without asking.").format(flag=flag),
        )
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


@contextmanager
def qa_ledger(args: argparse.Namespace, *, action: str) -> Iterator[tuple[Any, Any, str | None]]:
    """(config, ledger, person) for a QA command that acts on recorded units: the config of --config, its
    ledger (or --ledger) opened for this station, and the QA PIN checked (`require_pin`) before anything else;
    `person` is whose own PIN it was (None: the station's shared PIN)."""
    from station.config import load_config
    from station.ledger import open_ledger

    config = load_config(args.config)
    with open_ledger(ledger_location(args, config), create=False, station_id=config.station_id) as ledger:
        person = require_pin(args, config, ledger, action=action)
        yield config, ledger, person


def confirm_plan(args: argparse.Namespace, plan: Sequence[str], question: str, *, refused: str) -> bool:
    """Show what a QA command is about to do (`plan`, one line each) and ask (`confirm`); False after
    printing `refused` when the person says no. With --json everything goes to stderr (stdout is the
    result's), and --yes --json shows nothing."""
    out = sys.stderr if args.json else sys.stdout
    if not args.yes or not args.json:
        for line in plan:
            print(line, file=out)
    if confirm(question, yes=args.yes):
        return True
    print(refused, file=out)
    return False


MAX_STDIN_LINE = 4096  # a password or PIN; a longer line is not one (and must not fill the memory)


def _stdin_line(what: str) -> bytes:
    """The first line of stdin, without its line ending, at most `MAX_STDIN_LINE` bytes (`InputError` if more)."""
    line = sys.stdin.buffer.readline(MAX_STDIN_LINE + 1)
    if len(line.rstrip(b"\r\n")) > MAX_STDIN_LINE:
        raise InputError(
            _("{what} too long").format(what=what.capitalize()),
            _(
                "The first line of standard input is longer than {MAX_STDIN_LINE} bytes; it is not a {what}."
            ).format(MAX_STDIN_LINE=MAX_STDIN_LINE, what=what),
            _("Pipe only the {what} into the command.").format(what=what),
        )
    return line.rstrip(b"\r\n")


def _read_password() -> bytes:
    """One line from stdin (without its line ending); prompted without echo when stdin is a terminal."""
    if is_interactive():
        return getpass.getpass("Password: ").encode("utf-8")
    return _stdin_line("password")


def add_pin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pin-stdin",
        action="store_true",
        help="read the QA PIN from the first line of standard input (needed when the station has a QA PIN "
        "and there is no terminal; --yes does not replace it)",
    )


def require_pin(args: argparse.Namespace, config: Any, ledger: Any, *, action: str) -> str | None:
    """When a production station has a QA PIN, the person must give it: `InputError` (exit 2) unless right.
    Returns whose PIN it was when it was a person's own (`[people.NAME] qa_pin_hash`): that person acts.

    A station whose every target is a lab (`lab = true`: the lab, the demo, training) needs no PIN here.

    From stdin with --pin-stdin, else asked on the terminal (not echoed); --yes never replaces it. Wrong
    PINs count in the ledger with the QA desk's, with the same back-off and lock (`station.qapin`).
    """
    from station.people import qa_pins
    from station.qapin import PinGuard

    stored = qa_pins(config)  # the shared PIN and each person's own
    targets = getattr(config, "targets", {}) or {}
    if not stored or (targets and all(getattr(t, "lab", False) for t in targets.values())):
        return None  # no PIN, or a lab/demo station (every target lab = true): --yes is enough there
    if getattr(args, "pin_stdin", False):
        pin = _stdin_line("PIN").decode("utf-8", "replace")
    elif is_interactive():
        pin = getpass.getpass("QA PIN: ")
    else:
        raise InputError(
            _("QA PIN needed"),
            _(
                "This station has a QA PIN, and `station {action}` needs it; --yes only skips the question."
            ).format(action=action),
            _(
                "Give the PIN with --pin-stdin (from the QA lead or a secrets store), or run it on a terminal."
            ),
        )
    operator = getattr(args, "operator", None) or getattr(config, "operator", None) or ""
    who = PinGuard(stored, ledger=ledger, where=f"station {action}", operator=operator).check(pin.strip())
    return who or None


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="register an existing certificate (PEM, DER or PKCS#12) for one unit",
        description=(
            "Check a certificate against AWS IoT's rules, register it without a CA (ACTIVE) in a target, "
            "make the unit's thing, attach policy and thing, optionally verify over MQTT, and record it."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cert", metavar="FILE", help="the certificate: PEM, DER (.cer/.der) or PKCS#12 (.p12/.pfx)"
    )
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key", metavar="FILE", help="the private key (PEM or DER), for --verify")
    keys.add_argument(
        "--p12",
        metavar="FILE",
        help="a PKCS#12 file with the key (and the certificate, when --cert is left out)",
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the PKCS#12 (or key) password from stdin; without it an empty password is tried",
    )
    p.add_argument("--serial", required=True, help="the unit's serial")
    p.add_argument("--target", required=True, help="the target to register in (see station.toml)")
    p.add_argument("--thing", metavar="NAME", help="thing name (default: the target's thing-name template)")
    p.add_argument("--product", help="product, for the serial pattern and the thing name (default: inferred)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="connect over MQTT with the key afterwards; roll back if that fails",
    )
    add_station_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station import qa
    from station.config import load_config
    from station.ledger import open_ledger

    if args.cert is None and args.p12 is None:
        raise InputError(
            _("No certificate given"),
            _("Registering needs the unit's certificate."),
            _("Give --cert FILE (PEM, DER or PKCS#12), or --p12 FILE holding certificate and key."),
        )
    password = _read_password() if args.password_stdin else None
    config = load_config(args.config)
    try:
        qa.find_target(config, args.target)
    except qa.NotFound as error:
        return not_found(args, error)
    location = ledger_location(args, config)
    # The ledger is opened by the library once every local check (files, names) has passed.
    result = qa.register_files(
        config,
        lambda: open_ledger(location, station_id=config.station_id),
        cert=args.cert,
        key=args.key,
        p12=args.p12,
        password=password,
        serial=args.serial,
        target=args.target,
        operator=qa.operator_name(config, args.operator),
        thing=args.thing,
        product=args.product,
        verify=args.verify,
    )
    del password
    if args.json:
        print(json.dumps({"ok": True, **result.as_dict()}))
        return EXIT_OK
    headline = "Registered" if not result.already_registered else "Already registered"
    if result.verify is None:
        headline += " (not verified)"
    print(f"{headline}: {result.serial} in {result.target} ({result.account_id}/{result.region})")
    print(f"  {result.message}")
    thing_state = "created" if result.thing_created else "existed"
    print(f"  thing        {result.thing_name} ({thing_state})")
    print(f"  certificate  {result.certificate_id}")
    if result.verify is not None:
        took = result.verify.get("total_ms")
        count = result.verify.get("messages")
        print(f"  verify       PASS: {count} messages echoed" + (f" in {took:.0f} ms" if took else ""))
    print(f"  recorded     attempt {result.attempt_id} by {result.operator}")
    return EXIT_OK
