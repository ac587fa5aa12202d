"""`station pin-hash`: the line to put in station.toml for a QA PIN (a salted scrypt hash, never the PIN).

    station pin-hash                      (asks twice, not echoed)
    echo "$NEW_PIN" | station pin-hash --pin-stdin
    station pin-hash --person alice       (a QA person's own PIN: names them on what they do)

Prints `qa_pin_hash = "scrypt$…"` for the [station] table, or with --person the [people.NAME] table holding
it. Reads nothing else and writes no file: the person
puts the line in station.toml (replacing any plain qa_pin). A thin layer over `station.qapin.hash_pin`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from station.cli import EXIT_OK
from station.i18n import _

EXAMPLES = """examples:
  station pin-hash
  echo "$NEW_PIN" | station pin-hash --pin-stdin >> station.toml.new
  station pin-hash --person alice >> station.toml

exit codes:
  0  printed the line
  2  not a PIN (4-12 digits), the two entries differ, or no terminal and no --pin-stdin
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pin-hash",
        help="print the qa_pin_hash line for station.toml (the QA PIN as a salted hash)",
        description="Hash a QA PIN for station.toml: the station keeps only the hash, never the PIN.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pin-stdin", action="store_true", help="read the PIN from the first line of stdin")
    p.add_argument(
        "--person", metavar="NAME", help="print a [people.NAME] table: this person's own QA PIN (names them)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from station.commands.register import _stdin_line, is_interactive
    from station.errors import InputError
    from station.qapin import check_pin_format, hash_pin

    if args.pin_stdin:
        pin = _stdin_line("PIN").decode("utf-8", "replace").strip()
    elif is_interactive():
        pin = getpass.getpass("New QA PIN (4-12 digits): ")
        if getpass.getpass("Again: ") != pin:
            raise InputError(_("PINs differ"), _("The two PINs typed are not the same."), _("Run it again."))
    else:
        raise InputError(
            _("No PIN given"), _("There is no terminal to ask on."), _("Give the PIN with --pin-stdin.")
        )
    check_pin_format(pin)
    if args.person:
        print(f"[people.{json.dumps(args.person)}]")
        print(f'qa_pin_hash = "{hash_pin(pin)}"')
        print('Put these lines in station.toml (a badge = "…" line may join them).', file=sys.stderr)
        return EXIT_OK
    print(f'qa_pin_hash = "{hash_pin(pin)}"')
    print("Put this line in station.toml's [station] table (instead of any qa_pin).", file=sys.stderr)
    return EXIT_OK
