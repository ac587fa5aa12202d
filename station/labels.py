"""Unit labels: the ZPL II a label printer receives when a unit PASSes, and where it is sent.

A label names the unit's thing, serial, certificate id prefix and date, and carries a QR code of a
configurable payload (`{thing_name}`, `{serial}`, `{certificate_id}`, `{date}`, `{station_id}` fields). The QR
symbol is drawn by `segno` and sent as a ZPL graphic field (`^GFA`), so what the printer prints is exactly the
symbol the station checked — no printer firmware's own QR encoder in between — and the same matrix gives the
QA desk's preview.

Printers (`[station.labels] printer`): `tcp://host:9100` (a Zebra's raw port), `lp://QUEUE` (a CUPS queue,
sent raw with `lp -o raw`), `file:PATH` or a plain path (appends; for a print server that watches a folder).

It must not decide outcomes or block a slot for long: a printer that does not answer within its timeout is
reported as `LabelError` (a `StationFault`: the unit is fine, the printer needs a person).
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from urllib.parse import urlsplit

from station.errors import InputError, StationError, StationFault
from station.i18n import _
from station.model import Event

DEFAULT_PAYLOAD = "{thing_name}"
PAYLOAD_FIELDS = frozenset({"thing_name", "serial", "certificate_id", "date", "station_id"})
MAX_PAYLOAD = 512  # bytes: a QR code a line scanner reads in one go at label size
DOTS_PER_MODULE = 4  # 0.5 mm modules at 203 dpi (8 dots/mm)


class LabelError(StationFault):
    """The label could not be printed (printer unreachable, queue refused it)."""


@dataclass(frozen=True)
class Label:
    thing_name: str
    serial: str
    certificate_id: str
    date: str  # YYYY-MM-DD (UTC)
    station_id: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "thing_name": self.thing_name,
            "serial": self.serial,
            "certificate_id": self.certificate_id,
            "date": self.date,
            "station_id": self.station_id,
        }


def check_payload_template(template: str) -> str | None:
    """None when `template` only names known fields; else what is wrong (for the config's message)."""
    try:
        names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return f"the QR payload template is not valid ({exc})."
    unknown = names - PAYLOAD_FIELDS
    if unknown:
        return f"unknown field(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(PAYLOAD_FIELDS))}."
    return None


def qr_payload(label: Label, template: str = DEFAULT_PAYLOAD) -> str:
    problem = check_payload_template(template)
    if problem:
        raise InputError(
            _("Label QR payload"), problem, _("Fix [station.labels] qr_payload in station.toml.")
        )
    payload = template.format(**label.fields())
    if len(payload.encode()) > MAX_PAYLOAD:
        raise InputError(
            _("Label QR payload too long"),
            _("The QR payload is {count} bytes; a label holds at most {MAX_PAYLOAD}.").format(
                count=len(payload.encode()), MAX_PAYLOAD=MAX_PAYLOAD
            ),
            _("Shorten [station.labels] qr_payload in station.toml."),
        )
    return payload


def _escape(text: str) -> str:
    # ^FH lets a field carry any byte as _XX; escaping ^, ~ and _ keeps a serial from ending the field.
    return "".join(f"_{ord(c):02X}" if c in "^~_" or ord(c) < 32 else c for c in text)


def qr_matrix(payload: str) -> list[list[bool]]:
    """The QR symbol's modules (True = dark), quiet zone excluded; error correction M."""
    import segno  # only a station that prints labels pays for it

    symbol = segno.make_qr(payload, error="m", boost_error=False)
    return [[bool(cell) for cell in row] for row in symbol.matrix]


def graphic_field(matrix: list[list[bool]], scale: int = DOTS_PER_MODULE) -> str:
    """`^GFA` (ASCII hex) drawing `matrix` with each module `scale` dots square."""
    width_dots = len(matrix[0]) * scale
    row_bytes = (width_dots + 7) // 8
    lines: list[str] = []
    for row in matrix:
        bits = "".join(("1" if dark else "0") * scale for dark in row).ljust(row_bytes * 8, "0")
        hex_row = f"{int(bits, 2):0{row_bytes * 2}X}"
        lines.extend([hex_row] * scale)
    data = "".join(lines)
    total = row_bytes * len(lines)
    return f"^GFA,{total},{total},{row_bytes},{data}"


def render_zpl(label: Label, template: str = DEFAULT_PAYLOAD) -> str:
    """The label as ZPL II (UTF-8, ^CI28), 50 × 30 mm at 203 dpi."""
    payload = qr_payload(label, template)
    cert = label.certificate_id[:12]
    return "\n".join(
        [
            "^XA",
            "^CI28",
            "^PW400^LL240",
            f"^FO16,16^A0N,30,30^FH^FD{_escape(label.thing_name)}^FS",
            f"^FO16,56^A0N,24,24^FH^FDSN {_escape(label.serial)}^FS",
            f"^FO16,88^A0N,20,20^FH^FDcert {_escape(cert)}^FS",
            f"^FO16,116^A0N,20,20^FH^FD{_escape(label.date)}^FS",
            f"^FO250,16{graphic_field(qr_matrix(payload))}^FS",
            "^XZ",
            "",
        ]
    )


def preview_text(label: Label, template: str = DEFAULT_PAYLOAD) -> str:
    """The label for a terminal: the text lines and the QR symbol in half-block characters."""
    matrix = qr_matrix(qr_payload(label, template))
    size = len(matrix)
    quiet = [[False] * (size + 4) for _ in range(2)]
    rows = quiet + [[False, False, *row, False, False] for row in matrix] + quiet
    if len(rows) % 2:
        rows.append([False] * (size + 4))
    blocks = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}
    art = [
        "".join(blocks[(a, b)] for a, b in zip(top, bottom, strict=True))
        for top, bottom in zip(rows[::2], rows[1::2], strict=True)
    ]
    text = [label.thing_name, f"SN {label.serial}", f"cert {label.certificate_id[:12]}", label.date]
    return "\n".join(text + art)


def print_label(zpl: str, printer: str, *, timeout_s: float = 5.0) -> None:
    """Send `zpl` to `printer` (tcp://host:port, lp://QUEUE, file:PATH or a path); `LabelError` on failure."""
    data = zpl.encode("utf-8")
    where = printer.strip()
    parts = urlsplit(where)
    next_action = _("Check the label printer (power, paper, network); reprint the label from the QA desk.")
    if parts.scheme == "tcp":
        host, port = parts.hostname or "", parts.port or 9100
        try:
            with socket.create_connection((host, port), timeout=timeout_s) as conn:
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise LabelError(
                _("Label not printed"),
                _("The label printer at {host}:{port} did not take the label ({error_type}).").format(
                    host=host, port=port, error_type=type(exc).__name__
                ),
                next_action,
            ) from None
        return
    if parts.scheme == "lp":
        queue = parts.netloc or parts.path.lstrip("/")
        try:
            subprocess.run(
                ["lp", "-d", queue, "-o", "raw"],
                input=data,
                capture_output=True,
                timeout=timeout_s,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise LabelError(
                _("Label not printed"),
                _("The print queue {queue!r} did not take the label ({error_type}).").format(
                    queue=queue, error_type=type(exc).__name__
                ),
                next_action,
            ) from None
        return
    path = Path(where[5:] if parts.scheme == "file" else where)
    try:
        with path.open("ab") as out:
            out.write(data)
    except OSError as exc:
        raise LabelError(
            _("Label not written"),
            _("The label file {path} could not be written ({error_type}).").format(
                path=path, error_type=type(exc).__name__
            ),
            next_action,
        ) from None


def label_for(*, thing_name: str, serial: str, certificate_id: str, at: float, station_id: str = "") -> Label:
    return Label(
        thing_name=thing_name,
        serial=serial,
        certificate_id=certificate_id,
        date=time.strftime("%Y-%m-%d", time.gmtime(at)),
        station_id=station_id,
    )


class LabelPrinter:
    """Prints a label for every PASS it hears of (`unit_finished` events), on its own thread so a slow printer
    never holds a slot. A label that cannot be printed is reported through `on_problem(serial, error)`; the
    unit's outcome stays what it was (the identity is proven; the label can be reprinted)."""

    def __init__(
        self,
        printer: str,
        *,
        qr_payload: str = DEFAULT_PAYLOAD,
        timeout_s: float = 5.0,
        station_id: str = "",
        on_problem: Callable[[str, LabelError], None] | None = None,
    ) -> None:
        self.printer = printer
        self.qr_payload = qr_payload
        self.timeout_s = timeout_s
        self.station_id = station_id
        self.on_problem = on_problem
        self._jobs: queue.SimpleQueue[Label | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # started by the first label, ended by close()

    def handle(self, event: Event) -> None:
        if event.kind != "unit_finished" or event.outcome != "PASS":
            return
        data = event.data or {}
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="label-printer", daemon=True)
                self._thread.start()
        self._jobs.put(
            label_for(
                thing_name=str(data.get("thing_name", "")),
                serial=event.serial,
                certificate_id=str(data.get("certificate_id", "")),
                at=event.at or time.time(),
                station_id=self.station_id,
            )
        )

    def print_now(self, label: Label) -> None:
        """Print one label and wait (the QA desk's reprint); `LabelError` when it cannot."""
        print_label(render_zpl(label, self.qr_payload), self.printer, timeout_s=self.timeout_s)

    def _run(self) -> None:
        while (label := self._jobs.get()) is not None:
            try:
                self.print_now(label)
            except StationError as error:
                problem = (
                    error
                    if isinstance(error, LabelError)
                    else LabelError(error.title, error.message, error.next_action)
                )
                if self.on_problem is not None:
                    self.on_problem(label.serial, problem)

    def close(self, timeout: float = 10.0) -> None:
        """Print what is queued (up to `timeout`), then stop the thread; the next label starts a new one."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
        if thread is not None:
            thread.join(timeout)
