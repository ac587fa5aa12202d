"""`station …`: the command line, a thin layer over the library.

Each subcommand lives in its own module under `station.commands` and exposes `register(subparsers)`, which
adds its parser and sets `func(args) -> int`. This module only discovers them, parses, runs, and turns a
`StationError` into a clear message and a documented exit code. It must not hold any business logic.

Exit codes (stable; scripts depend on them):
  0  success / PASS
  1  FAIL: the unit is bad
  2  usage or input error (bad arguments, bad file or path, bad config, invalid scan)
  3  ERROR: station, network or cloud problem; output that could not be written (full disk, closed pipe);
     any unexpected error (never 1: that code means the unit is bad)
  4  not found (no such unit, target or record)
  5  integrity problem (the ledger's hash chain is broken)
 130 interrupted
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from station import commands
from station.errors import InputError, StationError, UnitFault
from station.i18n import _, choose_language, set_language

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_NOT_FOUND = 4
EXIT_INTEGRITY = 5
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="station",
        description="Factory provisioning station for AWS IoT devices.",
        epilog="Exit codes: 0 ok/PASS, 1 FAIL, 2 usage/input, 3 ERROR, 4 not found, 5 integrity, 130 interrupted.",
    )
    add_language_argument(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def add_language_argument(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    """`--lang CODE`: the language of what people read (before or after the command's name)."""
    parser.add_argument(
        "--lang",
        metavar="CODE",
        default=default,  # SUPPRESS on a command: its absence must not undo `station --lang ja COMMAND`
        help="language for operators and QA, e.g. en or ja (default: [station] language, else the locale)",
    )


def apply_language(args: argparse.Namespace, config_language: str | None = None) -> str:
    """Choose the language: --lang, else the config's `[station] language`, else the locale."""
    return set_language(choose_language(getattr(args, "lang", None), config_language))


def exit_code_for(error: StationError) -> int:
    if isinstance(error, UnitFault):
        return EXIT_FAIL
    if isinstance(error, InputError):
        return EXIT_USAGE
    return EXIT_ERROR


DEBUG_ENV = "STATION_DEBUG"  # set to 1 to get the traceback of an unexpected error instead of the message
log = logging.getLogger(__name__)


def _report(args: argparse.Namespace, error: StationError) -> None:
    try:
        if getattr(args, "json", False):
            print(json.dumps({"error": error.as_dict()}))
        else:
            print(_format_error(error), file=sys.stderr)
    except OSError:  # standard output is gone too: standard error is the last place to say it
        print(_format_error(error), file=sys.stderr)


def _format_error(error: StationError) -> str:
    return _("{title}: {message}\nNext: {next_action}").format(
        title=error.title, message=error.message, next_action=error.next_action
    )


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def output_error(error: OSError) -> StationError:
    """A write to standard output or --out failed: what happened, in words (exit 3)."""
    from station.errors import StationFault

    if isinstance(error, BrokenPipeError):
        return StationFault(
            _("Output closed early"),
            _(
                "The program reading the station's output stopped before the end (for example `| head`); the "
                "output is incomplete."
            ),
            _("Read the whole output, or write it to a file with --out."),
        )
    reason = error.strerror or type(error).__name__
    return StationFault(
        _("Output not written"),
        (
            _("Writing the output to {file} failed: {reason}; it is incomplete.")
            if error.filename
            else _("Writing the output failed: {reason}; it is incomplete.")
        ).format(file=error.filename, reason=reason),
        _("Free disk space or choose another --out file, then run the command again."),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    apply_language(args)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe or full disk shows here, while it can still be reported
        return code
    except StationError as error:
        _report(args, error)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print(_("Interrupted."), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError as error:
        _silence_stdout()
        _report(argparse.Namespace(), output_error(error))
        return EXIT_ERROR
    except BaseException as error:  # BaseException: a Rust panic (pyo3 PanicException) is not an Exception
        if isinstance(error, SystemExit | GeneratorExit) or os.environ.get(DEBUG_ENV):
            raise
        if isinstance(error, OSError) and error.errno is not None:
            if _is_write_error(error):
                _report(args, output_error(error))
                return EXIT_ERROR
            if error.filename:  # e.g. --out in a folder that does not exist: the person fixes the path
                _report(args, _file_error(error))
                return EXIT_USAGE
        log.debug("unexpected error", exc_info=error)
        from station.errors import StationFault

        _report(
            args,
            StationFault(
                _("Unexpected error"),
                # The type only: an unexpected error's text is not vetted (it could quote anything).
                _("The command stopped on an error the station did not expect ({error_type}).").format(
                    error_type=type(error).__name__
                ),
                _(
                    "Run it again with {variable}=1 for the details and report them to the station's engineers."
                ).format(variable=DEBUG_ENV),
            ),
        )
        return EXIT_ERROR


def _file_error(error: OSError) -> StationError:
    return InputError(
        _("File not usable"),
        f"{error.filename}: {error.strerror or type(error).__name__}.",
        _("Check the path and its folder's permissions, then run the command again."),
    )


def _is_write_error(error: OSError) -> bool:
    import errno

    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EPIPE, errno.EFBIG, errno.EIO, errno.EROFS)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
