"""Signed checkpoints of the ledger's chain head, kept OUTSIDE the ledger: tamper evidence against rewrites.

The hash chain alone cannot tell a truncated or fully re-chained ledger from an honest one: whoever can write
the file can recompute every SHA-256. So the ledger signs its head (seq, hash) now and then — every N records,
at every close (a shift's end) and on `Ledger.checkpoint()` — with an HMAC-SHA256 key that is not in the
ledger, and appends the signed checkpoint to an append-only JSON-lines log, also outside the ledger:

- key:  `$STATION_ANCHOR_KEY` (a path), else `<ledger>.anchor-key` (created once, mode 0600, 32 random bytes
        as hex). Keep it where the people who can edit the ledger file cannot (another user, a TPM-backed store,
        a mounted secret) — beside the ledger it only stops someone who does not look for it;
- log:  `$STATION_ANCHOR_LOG`, else `<ledger>.anchors.jsonl`; one line per checkpoint:
        {"seq", "hash", "at", "reason", "sig"}.

`audit()` checks the chain against the newest checkpoint whose signature is valid: a chain shorter than the
anchored seq was truncated; a different hash at the anchored seq was re-chained. What it cannot catch: anyone
holding the key (they can sign a forged head), rows changed after the newest checkpoint and then re-chained
consistently, and a deleted or replaced anchor log (the audit says when there is none).

This module must not open the ledger, must not write the key into the ledger or any log, and never prints it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENV_KEY = "STATION_ANCHOR_KEY"
ENV_LOG = "STATION_ANCHOR_LOG"


class AnchorError(Exception):
    """The anchor log or key cannot be used (unreadable, or a line's signature does not verify)."""


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: float
    reason: str = ""
    units_digest: str = ""  # `base.units_digest` of the unit table at `seq` ("" if the backend keeps none)
    sig: str = ""

    def body(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "hash": self.hash,
                "at": self.at,
                "reason": self.reason,
                "units": self.units_digest,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


class Anchor:
    """One key file and one checkpoint log."""

    def __init__(self, key_path: str | os.PathLike[str], log_path: str | os.PathLike[str]) -> None:
        self.key_path = Path(key_path)
        self.log_path = Path(log_path)
        self._key: bytes | None = None

    @classmethod
    def for_location(cls, location: str) -> Anchor | None:
        """The anchor of a ledger location: the environment's paths, else files beside an SQLite ledger;
        None for an in-memory ledger, or a DynamoDB one without both variables set."""
        key, log = os.environ.get(ENV_KEY), os.environ.get(ENV_LOG)
        if key and log:
            return cls(key, log)
        if location == ":memory:" or location.startswith("dynamodb://"):
            return None
        return cls(key or f"{location}.anchor-key", log or f"{location}.anchors.jsonl")

    # ------------------------------------------------------------------------------------------- key
    def _read_key(self, create: bool) -> bytes | None:
        if self._key is not None:
            return self._key
        try:
            text = self.key_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            if not create:
                return None
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it meanwhile
                return self._read_key(create=False)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(secrets.token_hex(32) + "\n")
            return self._read_key(create=False)
        except OSError as exc:
            raise AnchorError(f"the anchor key {self.key_path} cannot be read ({exc.strerror})") from exc
        try:
            self._key = bytes.fromhex(text)
        except ValueError:
            raise AnchorError(f"the anchor key {self.key_path} is not a hex key") from None
        return self._key

    def _sign(self, key: bytes, checkpoint: Checkpoint) -> str:
        return hmac.new(key, checkpoint.body().encode("ascii"), hashlib.sha256).hexdigest()

    # ---------------------------------------------------------------------------------------- writing
    def append(self, seq: int, head_hash: str, reason: str = "", units_digest: str = "") -> Checkpoint:
        """Sign (seq, hash, unit digest) and append it to the log as one line (O_APPEND: processes do not
        interleave)."""
        key = self._read_key(create=True)
        assert key is not None
        unsigned = Checkpoint(int(seq), str(head_hash), round(time.time(), 3), reason, units_digest)
        checkpoint = Checkpoint(**{**asdict(unsigned), "sig": self._sign(key, unsigned)})
        line = json.dumps(asdict(checkpoint), sort_keys=True, separators=(",", ":")) + "\n"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("ascii"))
            with contextlib.suppress(OSError):
                os.fsync(fd)
        finally:
            os.close(fd)
        return checkpoint

    # ---------------------------------------------------------------------------------------- reading
    def latest(self) -> Checkpoint | None:
        """The newest checkpoint (None when the log does not exist or is empty). Raises AnchorError when
        the key is missing while checkpoints exist, or the newest line does not verify (edited log)."""
        try:
            lines = self.log_path.read_text(encoding="ascii").splitlines()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise AnchorError(f"the anchor log {self.log_path} cannot be read ({exc})") from exc
        lines = [line for line in lines if line.strip()]
        if not lines:
            return None
        key = self._read_key(create=False)
        if key is None:
            raise AnchorError(
                f"the anchor log {self.log_path} has checkpoints but the key {self.key_path} is missing"
            )
        try:
            data: dict[str, Any] = json.loads(lines[-1])
            checkpoint = Checkpoint(
                int(data["seq"]),
                str(data["hash"]),
                float(data["at"]),
                str(data.get("reason", "")),
                str(data.get("units_digest", "")),
                str(data["sig"]),
            )
        except (ValueError, KeyError, TypeError):
            raise AnchorError(
                f"the newest line of the anchor log {self.log_path} cannot be read (edited)"
            ) from None
        if not hmac.compare_digest(checkpoint.sig, self._sign(key, checkpoint)):
            raise AnchorError(
                f"the newest checkpoint in {self.log_path} is not signed by the anchor key (edited or forged)"
            )
        return checkpoint


def anchor_verdict(checkpoint: Checkpoint, head_seq: int, hash_at_anchor: str | None) -> str:
    """Why the chain contradicts a valid checkpoint ("" when it agrees). `head_seq` is the chain's last seq,
    `hash_at_anchor` the stored hash of row `checkpoint.seq` (None if that row is gone)."""
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(checkpoint.at))
    if head_seq < checkpoint.seq or hash_at_anchor is None:
        return (
            f"the chain ends at event {head_seq} but event {checkpoint.seq} was anchored on {when} "
            "(the ledger was truncated)"
        )
    if hash_at_anchor != checkpoint.hash:
        return (
            f"event {checkpoint.seq} does not have the hash anchored on {when} "
            "(the chain was rewritten and re-chained)"
        )
    return ""
