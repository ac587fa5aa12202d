"""Verify by observing: the station's own MQTT identity in a target, watching units announce themselves.

A unit whose key the station never held (a device-made key) and that cannot check its own connection (the
nRF91 modem) is verified by watching it: the station subscribes to `things/<thing>/hello` with an identity of
its own, tells the unit to go online, and waits a bounded time for the unit's hello — JSON
`{"certificate_id", "imei", "firmware"}` published by the unit with its own credentials. A hello carrying the
registered certificate id proves what a host-side verify proves: that certificate, with the key only the unit
holds, is accepted by the target and may publish as the thing. (`station.pipeline` compares the ids and decides
the outcome; this module only connects, subscribes and hands over what arrived.)

The observer identity, by design:
- In production an observer identity would be provisioned once per station and target: a certificate kept in
  the station's secure store, registered by an administrator with the policy below.
- This implementation makes an ephemeral one instead, per target and per station run, on first use: a fresh
  EC P-256 key that exists in memory only (a `Secret`, handed straight to awscrt), a self-signed certificate
  valid for `OBSERVER_DAYS`, registered by the target's registry together with a thing and a policy of its own
  (`Registry.provision_observer`), all three named `station-observer-<station>-<random>`. The policy allows
  `iot:Connect` as that one client id and `iot:Subscribe`/`iot:Receive` on `things/*/hello` — no publish, and
  not the target's device policy. When the station stops (`StationContext.close`) the observer disconnects
  and its certificate, thing and policy are deleted (`Observer.release`).
- It is never journaled as a unit, so `station reconcile` never mistakes it for an orphan (and never records
  a unit for it); `station preflight` checks only the target's device policy. A station killed before it
  stops leaves its observer behind: it can only watch hello topics, and its certificate expires after
  `OBSERVER_DAYS` (delete `station-observer-*` leftovers in the console). A station that runs longer gets a
  fresh observer before the old one expires (the wiring rotates it).

One connection per observer, shared by every slot: each unit's watch subscribes to its own thing's topic
before the unit goes online and unsubscribes afterwards. A connection interrupted while a watch is open fails
that watch (the hello may have been missed) as a `StationFault`.

Faults: an observer that cannot connect, subscribe or stay connected is a `StationFault` (the station or the
target is broken, not the unit). No hello in time is not decided here: `HelloWatch.wait` returns None.

It must not: write the observer's key anywhere, or put it in a log line, an event or an exception; publish
anything; import boto3, serial or the lab.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from awscrt import mqtt
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt_connection_builder

from station.errors import StationError, StationFault
from station.i18n import N_, _
from station.identity import new_identity
from station.model import Identity

log = logging.getLogger(__name__)

HELLO_TOPIC = "things/{thing}/hello"
HELLO_TOPICS = ("things/*/hello",)  # what the observer's policy lets it watch (AWS policy wildcards)
OBSERVER_PREFIX = "station-observer-"  # the registry refuses observer names without it
OBSERVER_DAYS = 7
ROTATE_BEFORE_S = 3600.0  # a new observer is made when the current one has less than this left
HANGUP = "AWS_ERROR_MQTT_UNEXPECTED_HANGUP"
_CONNECT_INTERVAL_S = 1.0  # AWS: one CONNECT per second per client id
_DISCONNECT_WAIT_S = 2.0
_HELLO_FIELDS = ("certificate_id", "imei", "firmware")

_TECHNICIAN = N_("Call a technician; the unit itself may be fine, scan it again once this is fixed.")


def hello_topic(thing_name: str) -> str:
    """The topic a unit announces itself on (the nRF91 family's `flashers.nrf91.hello_topic`)."""
    return HELLO_TOPIC.format(thing=thing_name)


def parse_hello(payload: bytes) -> dict[str, str] | None:
    """A unit's hello as a dict of its known fields (`certificate_id` always), or None if it is not one."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("certificate_id"), str):
        return None
    return {k: str(data[k]) for k in _HELLO_FIELDS if k in data}


def observer_name(station_id: str) -> str:
    """`station-observer-<station>-<8 hex>`: a valid client id, thing name, policy name and certificate CN."""
    station = re.sub(r"[^A-Za-z0-9_-]", "-", station_id or "station")[:30].strip("-") or "station"
    return f"{OBSERVER_PREFIX}{station}-{secrets.token_hex(4)}"


class RegistryForObserver(Protocol):
    """What the observer needs of a target's registry (`station.registry.Registry`)."""

    def provision_observer(self, identity: Identity, name: str, *, topics: Any) -> Any: ...
    def remove_observer(self, observer: Any) -> None: ...


@dataclass(frozen=True)
class ObserverInfo:
    """What may be shown about an observer (no key)."""

    name: str
    certificate_id: str
    where: str
    expires_at: float


class Observer:
    """The station's observer in one target: a registered identity and one MQTT connection.

    Make it with `Observer.start(...)`; it is connected when returned. Thread-safe: slots share one.
    """

    def __init__(
        self,
        *,
        registry: RegistryForObserver,
        registration: Any,
        identity: Identity,
        name: str,
        host: str,
        port: int,
        ca_bytes: bytes | None,
        where: str,
        expires_at: float,
    ) -> None:
        self._registry = registry
        self._registration = registration
        self._identity: Identity | None = identity  # memory only; dropped on release
        self.name = name
        self.host = host
        self.port = port
        self.where = where
        self._ca_bytes = ca_bytes
        self.expires_at = expires_at
        self._cond = threading.Condition()
        self._connection: Any = None
        self._connected = False
        self._interruptions = 0  # bumped on every interruption: a watch open across one has failed
        self._active = 0  # open watches
        self._released = False

    def __repr__(self) -> str:
        return f"Observer({self.name!r}, {self.where})"

    @property
    def info(self) -> ObserverInfo:
        return ObserverInfo(
            self.name, str(getattr(self._registration, "certificate_id", "")), self.where, self.expires_at
        )

    @property
    def certificate_id(self) -> str:
        return self.info.certificate_id

    @property
    def active_watches(self) -> int:
        with self._cond:
            return self._active

    def expires_soon(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) > self.expires_at - ROTATE_BEFORE_S

    # ------------------------------------------------------------------------------------------- making
    @classmethod
    def start(
        cls,
        registry: RegistryForObserver,
        *,
        station_id: str,
        host: str,
        port: int,
        ca_bytes: bytes | None,
        where: str,
        connect_timeout_s: float = 15.0,
    ) -> Observer:
        """Make the observer identity, register it (certificate, thing, policy), and connect.

        A connect that fails removes what was registered again before the `StationFault` is raised.
        """
        name = observer_name(station_id)
        identity = new_identity(name, days=OBSERVER_DAYS)
        not_after = _not_after(identity.certificate_pem)
        registration = registry.provision_observer(identity, name, topics=HELLO_TOPICS)
        observer = cls(
            registry=registry,
            registration=registration,
            identity=identity,
            name=name,
            host=host,
            port=port,
            ca_bytes=ca_bytes,
            where=where,
            expires_at=not_after,
        )
        try:
            observer._connect(connect_timeout_s)
        except BaseException:
            try:
                observer.release()
            except StationError:
                log.warning("could not remove the observer %s after its connect failed", name, exc_info=True)
            raise
        return observer

    def _connect(self, timeout_s: float) -> None:
        identity = self._identity
        if identity is None or identity.private_key is None:
            raise StationFault(
                _("Observer released"), _("The station's observer was already removed."), _(_TECHNICIAN)
            )
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            connection = self._build(identity, deadline)
            try:
                self._wait_connect(connection, deadline)
            except _HungUp:
                # AWS may take a moment to know a just-registered certificate: try again while time allows,
                # never faster than one CONNECT per second for this client id.
                _stop(connection)
                if time.monotonic() + _CONNECT_INTERVAL_S >= deadline or attempt >= 5:
                    raise StationFault(
                        _("Observer not accepted"),
                        _(
                            "{where} would not let the station's observer {name} connect (its "
                            "certificate or policy was refused)."
                        ).format(where=self.where, name=self.name),
                        _(
                            "Call a technician: the station's AWS role must be able to register certificates and "
                            "policies in this target."
                        ),
                    ) from None
                time.sleep(_CONNECT_INTERVAL_S)
                continue
            except BaseException:
                _stop(connection)
                raise
            with self._cond:
                self._connection = connection
                self._connected = True
            return

    def _build(self, identity: Identity, deadline: float) -> Any:
        assert identity.private_key is not None
        remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
        try:
            return mqtt_connection_builder.mtls_from_bytes(
                cert_bytes=identity.certificate_pem.encode("ascii"),
                pri_key_bytes=identity.private_key.reveal(),
                endpoint=self.host,
                port=self.port,
                client_id=self.name,
                clean_session=True,
                ca_bytes=self._ca_bytes,
                keep_alive_secs=30,
                tcp_connect_timeout_ms=min(5000, remaining_ms),
                protocol_operation_timeout_ms=10000,
                on_connection_interrupted=self._on_interrupted,
                on_connection_resumed=self._on_resumed,
            )
        except AwsCrtError as error:
            # No chaining: the exception came from handling key bytes.
            raise StationFault(
                _("Observer cannot set up TLS"),
                _("awscrt could not load the station observer's certificate and key ({name}).").format(
                    name=error.name
                ),
                _(_TECHNICIAN),
            ) from None

    def _wait_connect(self, connection: Any, deadline: float) -> None:
        endpoint = f"{self.host}:{self.port}"
        try:
            connection.connect().result(timeout=max(0.1, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise StationFault(
                _("Observer cannot connect"),
                _("The station's observer got no MQTT connection to {endpoint} in time.").format(
                    endpoint=endpoint
                ),
                _(
                    "Check the network, the target's endpoint and port, and its CA file; then scan the unit again."
                ),
            ) from None
        except AwsCrtError as error:
            if error.name == HANGUP:
                raise _HungUp() from None
            raise StationFault(
                _("Observer cannot connect"),
                _("The station's observer could not connect to {endpoint} ({name}).").format(
                    endpoint=endpoint, name=error.name
                ),
                _(
                    "Check the network, the target's endpoint and port, and its CA file; then scan the unit again."
                ),
            ) from None
        except Exception as error:
            code = error.args[0] if error.args else None
            if isinstance(code, mqtt.ConnectReturnCode):
                raise _HungUp() from None
            raise

    def _on_interrupted(self, connection: Any = None, error: Any = None, **_: Any) -> None:
        with self._cond:
            self._connected = False
            self._interruptions += 1
            self._cond.notify_all()
        log.warning("observer %s: connection interrupted (%s)", self.name, getattr(error, "name", error))

    def _on_resumed(self, connection: Any = None, return_code: Any = None, **_: Any) -> None:
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------------ watching
    def watch(self, thing_name: str, *, timeout_s: float = 10.0) -> HelloWatch:
        """Subscribe to `thing_name`'s hello topic (acknowledged before this returns). Close the watch."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._released:
                raise StationFault(
                    _("Observer released"), _("The station's observer was already removed."), _(_TECHNICIAN)
                )
            # awscrt reconnects by itself after an interruption; give it a moment before giving up.
            while not self._connected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StationFault(
                        _("Observer disconnected"),
                        _("The station's observer is not connected to {where}.").format(where=self.where),
                        _("Check the network; then scan the unit again."),
                    )
                self._cond.wait(remaining)
            connection = self._connection
            generation = self._interruptions
            self._active += 1
        watch = HelloWatch(self, thing_name, generation)
        try:
            future, _packet_id = connection.subscribe(watch.topic, mqtt.QoS.AT_LEAST_ONCE, watch._on_message)
            future.result(timeout=max(0.1, deadline - time.monotonic()))
        except mqtt.SubscribeError:
            watch.close()
            raise StationFault(
                _("Observer may not subscribe"),
                _("{where} refused the station's observer a subscription to {topic}.").format(
                    where=self.where, topic=watch.topic
                ),
                _("Call a technician: the observer's policy must allow things/*/hello."),
            ) from None
        except (concurrent.futures.TimeoutError, AwsCrtError) as error:
            watch.close()
            name = getattr(error, "name", type(error).__name__)
            raise StationFault(
                _("Observer cannot subscribe"),
                _("The station's observer could not subscribe to {topic} at {where} ({name}).").format(
                    topic=watch.topic, where=self.where, name=name
                ),
                _("Check the network; then scan the unit again."),
            ) from None
        except BaseException:
            watch.close()
            raise
        return watch

    def _unsubscribe(self, topic: str) -> None:
        with self._cond:
            connection = self._connection
            self._active = max(0, self._active - 1)
            connected = self._connected
        if connection is None or not connected:
            return
        try:
            connection.unsubscribe(topic)[0].result(timeout=_DISCONNECT_WAIT_S)
        except Exception:
            log.debug("observer %s: unsubscribe from %s did not complete", self.name, topic, exc_info=True)

    # ------------------------------------------------------------------------------------------- release
    def release(self) -> None:
        """Disconnect and delete the observer's certificate, thing and policy (StationFault if some remain)."""
        with self._cond:
            if self._released:
                return
            self._released = True
            connection, self._connection = self._connection, None
            self._connected = False
            self._interruptions += 1  # any watch still open cannot see a hello any more
            self._cond.notify_all()
        self._identity = None
        if connection is not None:
            _stop(connection)
        self._registry.remove_observer(self._registration)


class HelloWatch:
    """One unit's hello topic, subscribed on the observer's connection until `close()`."""

    def __init__(self, observer: Observer, thing_name: str, generation: int) -> None:
        self._observer = observer
        self.thing_name = thing_name
        self.topic = hello_topic(thing_name)
        self._generation = generation
        self._hellos: list[dict[str, str]] = []
        self.ignored = 0  # messages on the topic that were not a hello
        self._closed = False

    def _on_message(self, topic: str = "", payload: bytes = b"", **_: Any) -> None:
        hello = parse_hello(payload)
        with self._observer._cond:
            if hello is None:
                self.ignored += 1
            else:
                self._hellos.append(hello)
            self._observer._cond.notify_all()

    def wait(self, timeout_s: float) -> Mapping[str, str] | None:
        """The first hello within `timeout_s`, or None. StationFault if the observer lost its connection."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        cond = self._observer._cond
        with cond:
            while True:
                if self._hellos:
                    return dict(self._hellos[0])
                if self._observer._interruptions != self._generation:
                    raise StationFault(
                        _("Observer lost its connection"),
                        _(
                            "The station's observer lost its connection to {where} while "
                            "waiting for {thing_name}'s hello."
                        ).format(where=self._observer.where, thing_name=self.thing_name),
                        _("Check the network; then scan the unit again."),
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                cond.wait(remaining)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._observer._unsubscribe(self.topic)

    def __enter__(self) -> HelloWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HungUp(Exception):
    """The server hung up at CONNECT or refused it: the observer's certificate or policy is not (yet) known."""


def _stop(connection: Any) -> None:
    try:
        connection.disconnect().result(timeout=_DISCONNECT_WAIT_S)
    except Exception:
        log.debug("observer: disconnect did not complete cleanly", exc_info=True)


def _not_after(certificate_pem: str) -> float:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
    end: datetime = cert.not_valid_after_utc
    return end.astimezone(UTC).timestamp()
