"""`station sim <family>`: run one simulated unit on a new pseudo-terminal, for training and trying the station.

    station sim prov1
    station sim prov1 --device-id SIM000123 --state-dir sim --fault corrupt=0.05 --fault lose=0.05
    station sim prov1 --ca-file lab/ca.pem          # the lab's CA, for the device-side connectivity check
    station sim expresslink --ca-file lab/ca.pem --port 8883   # an ExpressLink module (options: --help)
    station sim nrf91 --endpoint localhost:8883 --ca-file lab/ca.pem   # an nRF91 modem (options: --help)
    station sim esp32 --state-dir sim          # an ESP32 in download mode: esptool --before no-reset works on it

The FIRST line on stdout is the port path (flushed at once), so a script can read it and open the port; the
unit's flash file goes to stderr. It serves until Ctrl-C or SIGTERM, then releases the pty and exits 0.
Faults (repeat --fault): corrupt=P, lose=P, disconnect=N (at the Nth DATA frame), slow=SECONDS, silent, garbage,
flood, bad_store, seed=N. A thin layer over `flashers.simulators`: no device behaviour lives here.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from station.errors import InputError

EXAMPLES = """examples:
  station sim prov1
  station sim prov1 --device-id SIM00000123 --state-dir sim --fault corrupt=0.05 --fault lose=0.05
  station sim expresslink --ca-file lab/ca.pem --port 8883
  station sim nrf91 --endpoint localhost:8883 --ca-file lab/ca.pem
  station sim esp32 --state-dir sim          (esptool --before no-reset works on it)

The first line on stdout is the port; `station sim FAMILY --help` lists the family's options and faults.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="run a simulated unit on a new pty (prints the port first)",
        description="Start one simulated device on a new pseudo-terminal and serve it until interrupted.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    families = p.add_subparsers(dest="family", metavar="FAMILY")
    q = families.add_parser(
        "prov1",
        help="the PROV/1 reference device",
        description="A PROV/1 unit whose flash is a JSON file under --state-dir.",
        epilog="Example: station sim prov1 --device-id SIM000001 --fault corrupt=0.05 --fault lose=0.05",
    )
    q.add_argument("--baud", type=int, default=115200, help="baud rate to pace the line at (default 115200)")
    q.add_argument("--no-pace", action="store_true", help="answer at pty speed instead of wire speed")
    q.add_argument(
        "--state-dir", default="sim-state", help="where the unit's flash file lives (default ./sim-state)"
    )
    q.add_argument(
        "--device-id",
        help="the unit's device id (default: SIM + 8 random digits, a serial the lab's products take)",
    )
    q.add_argument("--ca-file", help="server CA (PEM) for the device-side connectivity check (the lab's CA)")
    q.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="inject a fault (repeatable): corrupt=P lose=P disconnect=N slow=S silent garbage flood bad_store seed=N",
    )
    q.set_defaults(func=run_prov1)
    _register_expresslink(families)
    _register_nrf91(families)
    _register_esp32(families)
    p.set_defaults(func=lambda args: _usage(p))


def _register_expresslink(families: argparse._SubParsersAction) -> None:
    from flashers.simulators.expresslink import add_sim_arguments

    e = families.add_parser(
        "expresslink",
        help="an AWS IoT ExpressLink module",
        description="An ExpressLink module whose key, birth certificate and settings live in a JSON file "
        "under --state-dir. It really connects to its endpoint (give the lab's CA and port).",
        epilog="Example: station sim expresslink --ca-file lab/ca.pem --port 40123 --fault slow=0.2",
    )
    add_sim_arguments(e)
    e.set_defaults(func=run_expresslink)


def run_expresslink(args: argparse.Namespace) -> int:
    from flashers.simulators.expresslink import build_sim

    return _build_and_serve(args, build_sim, family="expresslink", unit="module", bad_option=(ValueError,))


def _register_nrf91(families: argparse._SubParsersAction) -> None:
    from flashers.simulators.nrf91 import add_sim_arguments

    n = families.add_parser(
        "nrf91",
        help="a Nordic nRF91 modem (AT %%CMNG / %%KEYGEN)",
        description="An nRF91 modem behind the SDK's AT host, credentials in a JSON file under --state-dir. "
        "With --endpoint it connects and publishes a hello after AT+CFUN=1.",
        epilog="Example: station sim nrf91 --endpoint localhost:40123 --ca-file lab/ca.pem --fault corrupt=0.05",
    )
    add_sim_arguments(n)
    n.set_defaults(func=run_nrf91)


def run_nrf91(args: argparse.Namespace) -> int:
    from flashers.simulators.nrf91 import build_sim

    # A missing --ca-file is a bad option, not an unusable state dir (FileNotFoundError is an OSError).
    return _build_and_serve(
        args, build_sim, family="nrf91", unit="modem", bad_option=(ValueError, FileNotFoundError)
    )


def _register_esp32(families: argparse._SubParsersAction) -> None:
    from flashers.simulators.esp32rom import add_sim_arguments

    n = families.add_parser(
        "esp32",
        help="an ESP32 in serial download mode (esptool's ROM loader protocol)",
        description="An ESP32 waiting in its ROM download mode, its 4 MB flash a file under --state-dir. A pty "
        "has no DTR/RTS: run esptool with --before no-reset --after no-reset.",
        epilog="Example: station sim esp32 --state-dir sim --fault bad_store",
    )
    add_sim_arguments(n)
    n.set_defaults(func=run_esp32)


def run_esp32(args: argparse.Namespace) -> int:
    from flashers.simulators.esp32rom import build_sim

    return _build_and_serve(args, build_sim, family="esp32", unit="unit", bad_option=(ValueError,))


def _build_and_serve(
    args: argparse.Namespace,
    build_sim: Callable[[Any], tuple[Any, str]],
    *,
    family: str,
    unit: str,
    bad_option: tuple[type[Exception], ...],
) -> int:
    """Build a family's simulator from its options and serve it; a bad option or an unusable state dir is
    an InputError the person can fix (the family module is imported by the caller, only when asked for)."""
    try:
        device, flash = build_sim(args)
    except bad_option as exc:
        raise InputError(
            "Bad simulator option", f"{exc}.", f"Run `station sim {family} --help` for the options."
        ) from None
    except OSError as exc:
        raise InputError(
            "State directory not usable",
            f"The {unit}'s flash file cannot be used under {args.state_dir} ({exc.strerror}).",
            "Give a writable --state-dir.",
        ) from None
    return serve(device, flash)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_prov1(args: argparse.Namespace) -> int:
    from flashers.simulators.prov1 import Faults, Prov1Device
    from flashers.simulators.pty import PtyDevice

    try:
        faults = Faults.parse(args.fault)
    except ValueError as exc:
        raise InputError(
            "Bad fault", f"{exc}.", "Run `station sim prov1 --help` for the fault names."
        ) from None
    if args.baud <= 0:
        raise InputError(
            "Bad baud rate", f"{args.baud} is not a baud rate.", "Give a positive number, e.g. 115200."
        )
    try:
        model = Prov1Device(args.state_dir, device_id=args.device_id, ca_file=args.ca_file, faults=faults)
    except ValueError as exc:
        raise InputError("Bad device id", f"{exc}.", "Give a device id without spaces.") from None
    except FileNotFoundError:
        raise InputError(
            "CA file not found",
            f"There is no file {args.ca_file} to use as the server CA.",
            "Give the path of the lab's CA certificate, or leave --ca-file out.",
        ) from None
    except OSError as exc:
        raise InputError(
            "State directory not usable",
            f"The flash file cannot be written under {args.state_dir} ({exc.strerror}).",
            "Give a writable --state-dir.",
        ) from None
    return serve(PtyDevice(model, baudrate=args.baud, pace=not args.no_pace), str(model.flash_path))


def serve(device: object, flash: str) -> int:
    """Print the port, serve until SIGINT/SIGTERM (or the unit disconnects itself), stop, return 0."""
    from flashers.simulators.pty import PtyDevice

    assert isinstance(device, PtyDevice)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    device.start()
    try:
        print(device.port, flush=True)
        print(f"simulated unit on {device.port}; flash {flash}; Ctrl-C to stop", file=sys.stderr, flush=True)
        while not done.wait(0.2):
            if not device.connected:
                print(
                    "the simulated unit disconnected (fault injection); stopping", file=sys.stderr, flush=True
                )
                break
    finally:
        device.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
