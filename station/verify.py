"""Verify: prove a unit's identity works by connecting to AWS IoT with it, as the device will.

The unmodified awsiotsdk (MQTT 3.1.1 over mTLS): `mtls_from_bytes` with the unit's certificate and its key
from memory, client id = thing name, SNI = the endpoint host (awscrt sends it from `endpoint`). Then subscribe
(QoS 1) to `things/<thing>/verify`, publish nonce messages there, and require every one of them back within
the deadline. A TLS handshake alone proves nothing: AWS completes it for any well-formed certificate and
judges only at CONNECT and per topic.

Failures are told apart by awscrt's error name/code and by the phase they happen in, never by message text:
- a hang-up at CONNECT (AWS_ERROR_MQTT_UNEXPECTED_HANGUP, 5134) or a CONNACK refusal → `UnitFault`
  "certificate not accepted by <account>/<region> …";
- a refused SUBSCRIBE, a hang-up after SUBSCRIBE/PUBLISH, or messages that never come back → `UnitFault`
  (the policy forbids the verify topic);
- TLS, DNS, refused or timed-out connections → `StationFault` saying what to check.

AWS allows one CONNECT per second per client id; a module-wide pacer keeps every verify (retries included,
across threads) at or under that.

It must not: write the key anywhere (it goes from the `Secret` straight to awscrt), put key bytes in an
exception, a log line or a result; modify or monkey-patch the SDK; leave a connection open (always
disconnect); import boto3 or the lab.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from awscrt import mqtt
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt_connection_builder

from station.errors import StationError, StationFault, UnitFault
from station.i18n import N_, _
from station.identity import check_identity
from station.model import Identity
from station.plain import plain_dict

log = logging.getLogger(__name__)

HANGUP = "AWS_ERROR_MQTT_UNEXPECTED_HANGUP"  # 5134: what AWS does to a certificate it does not accept
CONNECT_INTERVAL_S = 1.0  # AWS: one CONNECT per second per client id (not adjustable)
_DISCONNECT_WAIT_S = 2.0


@dataclass(frozen=True)
class VerifyResult:
    """A passed verify and how long each part took (milliseconds)."""

    thing_name: str
    host: str
    port: int
    messages: int
    connect_ms: float
    subscribe_ms: float
    echo_ms: float
    total_ms: float
    connect_attempts: int = 1

    def as_dict(self) -> dict[str, Any]:
        return plain_dict(self)


class _ConnectPacer:
    """At most one CONNECT per interval per client id, in this process, across threads.

    A slot is reserved before connecting and the time is moved to when the connect finished (`mark`): the
    CONNECT packet leaves somewhere in between, so spacing from the finish keeps two CONNECTs at least one
    interval apart however long each TLS handshake took.
    """

    def __init__(self, interval_s: float = CONNECT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def reserve(self, client_id: str, deadline: float) -> bool:
        """Wait for this client id's next CONNECT slot; False (and no wait) if it falls past `deadline`."""
        with self._lock:
            now = time.monotonic()
            # Forget client ids whose slot is long past, so the table stays small on a long shift.
            for key in [k for k, t in self._last.items() if now - t > self.interval_s]:
                del self._last[key]
            start = max(now, self._last.get(client_id, -1e9) + self.interval_s)
            if start > deadline:
                return False
            self._last[client_id] = start
        if start > now:
            time.sleep(start - now)
        return True

    def mark(self, client_id: str) -> None:
        """The connect for this client id finished (either way) now."""
        with self._lock:
            self._last[client_id] = max(self._last.get(client_id, 0.0), time.monotonic())


_pacer = _ConnectPacer()


class _Phase:
    """Watches the connection for a server hang-up while an operation is outstanding."""

    def __init__(self) -> None:
        self.interrupted: concurrent.futures.Future[str] = concurrent.futures.Future()

    def on_interrupted(self, connection: Any = None, error: Any = None, **_: Any) -> None:
        name = getattr(error, "name", None) or type(error).__name__
        if not self.interrupted.done():
            self.interrupted.set_result(str(name))


def verify(
    identity: Identity,
    *,
    thing_name: str,
    host: str,
    port: int,
    ca_bytes: bytes | None,
    messages: int = 3,
    timeout_s: float = 10.0,
    where: str | None = None,
    connect_attempts: int = 2,
) -> VerifyResult:
    """Connect with the unit's identity, subscribe, publish `messages` nonces and get them all back.

    `where` names the registry in messages ("<account>/<region>"; default: the host). `connect_attempts`
    > 1 retries a hang-up at CONNECT (a just-registered certificate can take a moment to be known across
    AWS) while the deadline allows, never faster than one CONNECT per second for this client id.
    """
    if identity.private_key is None:
        raise StationFault(
            _("No key to verify with"),
            _(
                "The station does not hold the private key of {thing_name}, so it cannot connect as the unit."
            ).format(thing_name=thing_name),
            _("Call a technician: this product needs device-side verify."),
        )
    try:
        check_identity(identity)
    except StationError as error:
        raise UnitFault(error.title, error.message, error.next_action) from None
    messages = max(1, int(messages))
    registry = where or host
    topic = f"things/{thing_name}/verify"
    started = time.monotonic()
    deadline = started + timeout_s

    attempts = 0
    while True:
        attempts += 1
        if not _pacer.reserve(thing_name, deadline):
            raise StationFault(
                _("Verify timed out"),
                _(
                    "No CONNECT slot for {thing_name} within {timeout_s:.0f} s (AWS allows one per second)."
                ).format(thing_name=thing_name, timeout_s=timeout_s),
                _("Scan the unit again in a few seconds."),
            )
        try:
            return _attempt(
                identity,
                thing_name=thing_name,
                host=host,
                port=port,
                ca_bytes=ca_bytes,
                topic=topic,
                messages=messages,
                started=started,
                deadline=deadline,
                registry=registry,
                attempts=attempts,
            )
        except _HungUpAtConnect as hangup:
            remaining = deadline - time.monotonic()
            if attempts >= connect_attempts or remaining <= CONNECT_INTERVAL_S:
                raise hangup.fault from None
            log.info(
                "verify %s: hang-up at CONNECT, retrying once the client id may connect again", thing_name
            )


class _HungUpAtConnect(Exception):
    def __init__(self, fault: UnitFault) -> None:
        super().__init__(fault.message)
        self.fault = fault


def _attempt(
    identity: Identity,
    *,
    thing_name: str,
    host: str,
    port: int,
    ca_bytes: bytes | None,
    topic: str,
    messages: int,
    started: float,
    deadline: float,
    registry: str,
    attempts: int,
) -> VerifyResult:
    phase = _Phase()
    assert identity.private_key is not None
    remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
    try:
        connection = mqtt_connection_builder.mtls_from_bytes(
            cert_bytes=identity.certificate_pem.encode("ascii"),
            pri_key_bytes=identity.private_key.reveal(),
            endpoint=host,
            port=port,
            client_id=thing_name,
            clean_session=True,
            ca_bytes=ca_bytes,
            keep_alive_secs=30,
            tcp_connect_timeout_ms=min(5000, remaining_ms),
            protocol_operation_timeout_ms=remaining_ms,
            on_connection_interrupted=phase.on_interrupted,
        )
    except AwsCrtError as error:
        # No chaining: the exception came from handling key bytes.
        raise StationFault(
            _("Cannot set up TLS"),
            _("awscrt could not load the unit's certificate and key ({name}).").format(name=error.name),
            _("Call a technician: the identity's format is not usable for TLS."),
        ) from None
    connected = False
    try:
        t0 = time.monotonic()
        try:
            _connect(connection, thing_name, host, port, deadline, registry)
        finally:
            _pacer.mark(thing_name)
        connected = True
        connect_ms = (time.monotonic() - t0) * 1000.0

        # Subscribe to the unit's verify topic; the server may refuse (SUBACK 0x80) or hang up.
        pending = {f"{i}:{secrets.token_hex(8)}" for i in range(messages)}
        payloads = {
            nonce: json.dumps({"verify": nonce, "thing": thing_name}).encode("utf-8") for nonce in pending
        }
        echoed: concurrent.futures.Future[None] = concurrent.futures.Future()
        lock = threading.Lock()

        def on_message(topic: str, payload: bytes, **_: Any) -> None:
            try:
                nonce = json.loads(payload).get("verify")
            except (ValueError, AttributeError):
                return
            with lock:
                pending.discard(nonce)
                if not pending and not echoed.done():
                    echoed.set_result(None)

        t1 = time.monotonic()
        subscribe_future, _packet_id = connection.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, on_message)
        try:
            _wait(subscribe_future, phase, deadline)
        except mqtt.SubscribeError:
            raise UnitFault(
                _("Verify failed: subscribe refused"),
                _(
                    "{registry} refused {thing_name}'s subscription to {topic}: the policy does not allow it."
                ).format(registry=registry, thing_name=thing_name, topic=topic),
                _(_POLICY_NEXT),
            ) from None
        except _Interrupted as hung:
            raise _policy_hangup(registry, thing_name, topic, _("subscribing to"), hung.name) from None
        except _Deadline:
            raise _echo_timeout(
                registry, thing_name, topic, _("the subscription was not acknowledged")
            ) from None
        except AwsCrtError as error:
            raise _op_failed(registry, thing_name, topic, N_("subscribe"), error) from None
        subscribe_ms = (time.monotonic() - t1) * 1000.0

        t2 = time.monotonic()
        publishes = [
            connection.publish(topic, payloads[n], mqtt.QoS.AT_LEAST_ONCE)[0] for n in sorted(payloads)
        ]
        try:
            for future in publishes:
                _wait(future, phase, deadline)
            _wait(echoed, phase, deadline)
        except _Interrupted as hung:
            raise _policy_hangup(registry, thing_name, topic, _("publishing to"), hung.name) from None
        except _Deadline:
            with lock:
                missing = len(pending)
            raise _echo_timeout(
                registry,
                thing_name,
                topic,
                _("{missing} of {messages} messages did not come back").format(
                    missing=missing, messages=messages
                ),
            ) from None
        except AwsCrtError as error:
            raise _op_failed(registry, thing_name, topic, N_("publish"), error) from None
        echo_ms = (time.monotonic() - t2) * 1000.0
        return VerifyResult(
            thing_name=thing_name,
            host=host,
            port=port,
            messages=messages,
            connect_ms=round(connect_ms, 3),
            subscribe_ms=round(subscribe_ms, 3),
            echo_ms=round(echo_ms, 3),
            total_ms=round((time.monotonic() - started) * 1000.0, 3),
            connect_attempts=attempts,
        )
    finally:
        _disconnect(connection, connected)


# ---------------------------------------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Deadline(Exception):
    pass


# What an outstanding operation fails with when the connection under it is gone.
_CONNECTION_LOST = frozenset(
    {
        HANGUP,
        "AWS_ERROR_MQTT_CANCELLED_FOR_CLEAN_SESSION",
        "AWS_ERROR_MQTT_NOT_CONNECTED",
        "AWS_ERROR_MQTT_CONNECTION_DESTROYED",
        "AWS_IO_SOCKET_CLOSED",
    }
)


def _wait(future: concurrent.futures.Future[Any], phase: _Phase, deadline: float) -> Any:
    """The future's result, unless the server hangs up first (_Interrupted) or the deadline passes."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        concurrent.futures.wait(
            [future, phase.interrupted], timeout=remaining, return_when=concurrent.futures.FIRST_COMPLETED
        )
    if future.done():
        error = future.exception()
        if isinstance(error, AwsCrtError) and error.name in _CONNECTION_LOST:
            # The server hung up and awscrt cancelled what was pending (clean session): that is the hang-up,
            # whichever of the two callbacks ran first.
            raise _Interrupted(phase.interrupted.result() if phase.interrupted.done() else error.name)
        return future.result()
    if phase.interrupted.done():
        raise _Interrupted(phase.interrupted.result())
    raise _Deadline()


def _connect(connection: Any, thing_name: str, host: str, port: int, deadline: float, registry: str) -> None:
    future = connection.connect()
    remaining = max(0.0, deadline - time.monotonic())
    try:
        future.result(timeout=remaining)
    except concurrent.futures.TimeoutError:
        raise StationFault(
            _("Verify timed out"),
            _("No MQTT connection to {host}:{port} within the deadline.").format(host=host, port=port),
            _(
                "Check the network, the target's endpoint and port, and the CA file; then scan the unit again."
            ),
        ) from None
    except AwsCrtError as error:
        if error.name == HANGUP:
            raise _HungUpAtConnect(_not_accepted(registry, thing_name)) from None
        raise _connect_fault(error, host, port) from None
    except Exception as error:
        # A CONNACK with a non-zero return code arrives as Exception(ConnectReturnCode).
        code = error.args[0] if error.args else None
        if isinstance(code, mqtt.ConnectReturnCode):
            raise _connack_fault(code, thing_name, host, port, registry) from None
        raise


def _disconnect(connection: Any, connected: bool) -> None:
    """Always close: a connect still in progress is stopped too (it also stops awscrt's reconnects)."""
    try:
        connection.disconnect().result(timeout=_DISCONNECT_WAIT_S)
    except Exception:
        if connected:
            log.debug("verify: disconnect did not complete cleanly", exc_info=True)


# ---------------------------------------------------------------------------------------------------------
# Operator words
# ---------------------------------------------------------------------------------------------------------

_POLICY_NEXT = N_(
    "Set the unit aside for rework; if every unit fails like this, call a technician to check the target's "
    "policy (it must allow things/<thing>/* for the thing)."
)
_NOT_ACCEPTED_NEXT = N_(
    "Set the unit aside for rework; if every unit fails like this, call a technician to check the target "
    "(registration, certificate status, policy)."
)


def _not_accepted(registry: str, thing_name: str) -> UnitFault:
    return UnitFault(
        _("Certificate not accepted"),
        _(
            "certificate not accepted by {registry}: not registered, inactive, or no policy allowing connect "
            "for {thing_name}."
        ).format(registry=registry, thing_name=thing_name),
        _(_NOT_ACCEPTED_NEXT),
    )


def _connect_fault(error: AwsCrtError, host: str, port: int) -> StationFault:
    name = error.name or ""
    endpoint = f"{host}:{port}"
    if name.startswith("AWS_IO_DNS_"):
        return StationFault(
            _("Endpoint not found"),
            _("The endpoint host {host} does not resolve ({name}).").format(host=host, name=name),
            _("Check the target's endpoint in station.toml and the station's DNS/network."),
        )
    if name.startswith("AWS_IO_TLS_") or name.startswith("AWS_ERROR_PKCS") or "_TLS_" in name:
        return StationFault(
            _("TLS with the endpoint failed"),
            _("The TLS handshake with {endpoint} failed ({name}).").format(endpoint=endpoint, name=name),
            _("Check the target's CA file, that the endpoint host name is right, and the station's clock."),
        )
    if name in (
        "AWS_IO_SOCKET_CONNECTION_REFUSED",
        "AWS_IO_SOCKET_TIMEOUT",
        "AWS_IO_SOCKET_NO_ROUTE_TO_HOST",
        "AWS_IO_SOCKET_NETWORK_DOWN",
        "AWS_IO_SOCKET_CLOSED",
        "AWS_IO_SOCKET_CONNECT_ABORTED",
        "AWS_ERROR_MQTT_TIMEOUT",
    ):
        return StationFault(
            _("Endpoint unreachable"),
            _("The station could not hold a connection to {endpoint} ({name}).").format(
                endpoint=endpoint, name=name
            ),
            _("Check the network and firewall (port 8883 outbound) and the target's endpoint and port."),
        )
    return StationFault(
        _("Verify connection failed"),
        _("Connecting to {endpoint} failed ({code}).").format(endpoint=endpoint, code=name or error.code),
        _("Check the network, the target's endpoint and CA file; call a technician if it persists."),
    )


def _connack_fault(
    code: mqtt.ConnectReturnCode, thing_name: str, host: str, port: int, registry: str
) -> StationError:
    if code in (
        mqtt.ConnectReturnCode.NOT_AUTHORIZED,
        mqtt.ConnectReturnCode.BAD_USERNAME_OR_PASSWORD,
        mqtt.ConnectReturnCode.IDENTIFIER_REJECTED,
    ):
        return UnitFault(
            _("Certificate not accepted"),
            _(
                "certificate not accepted by {registry}: the connection for {thing_name} was refused "
                "({name})."
            ).format(registry=registry, thing_name=thing_name, name=code.name),
            _(_NOT_ACCEPTED_NEXT),
        )
    return StationFault(
        _("MQTT service refused the connection"),
        _("{host}:{port} refused the MQTT connection ({name}).").format(host=host, port=port, name=code.name),
        _("Check that the target's endpoint is an AWS IoT data endpoint; call a technician if it persists."),
    )


def _policy_hangup(registry: str, thing_name: str, topic: str, action: str, name: str) -> UnitFault:
    return UnitFault(
        _("Verify failed: disconnected"),
        _("{registry} hung up on {thing_name} when {action} {topic} ({name}): the policy forbids it.").format(
            registry=registry, thing_name=thing_name, action=action, topic=topic, name=name
        ),
        _(_POLICY_NEXT),
    )


def _echo_timeout(registry: str, thing_name: str, topic: str, what: str) -> UnitFault:
    return UnitFault(
        _("Verify failed: no echo"),
        _(
            "Verify on {topic} at {registry} did not complete in time: {what}. The policy may forbid "
            "{thing_name} to publish or receive there."
        ).format(topic=topic, registry=registry, what=what, thing_name=thing_name),
        _(_POLICY_NEXT),
    )


def _op_failed(registry: str, thing_name: str, topic: str, op: str, error: AwsCrtError) -> StationError:
    if error.name == "AWS_ERROR_MQTT_TIMEOUT":
        return _echo_timeout(registry, thing_name, topic, _("the {op} was not acknowledged").format(op=_(op)))
    return StationFault(
        _("Verify failed"),
        _("The {op} on {topic} at {registry} failed ({name}).").format(
            op=_(op), topic=topic, registry=registry, name=error.name
        ),
        _("Check the network and scan the unit again; call a technician if it persists."),
    )
