"""The lab's data plane: one MQTT-over-TLS endpoint per (account, region), the way AWS IoT Core behaves.

Each endpoint is a TLS front on its own port on 127.0.0.1 (clients use host ``localhost``: the lab server
certificate has SANs for ``localhost`` and 127.0.0.1 and chains to the lab CA in ``ca_file``). All fronts pipe
to one shared amqtt broker on loopback (`station.lab.broker`). Per connection:

1. TLS 1.2+ that accepts ANY client certificate, as AWS does (self-signed, or signed by a CA never seen):
   pyOpenSSL with ``VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT`` and a verify callback that returns True.
2. The MQTT CONNECT is read and parsed (it may arrive split over several TLS records). The certificate is
   looked up by SHA-256(DER) in the registry of THAT endpoint's (account, region), read live from the control
   plane (`station.lab.registry_view`), so register / deactivate / delete / detach act on the next connection.
   Unknown, not ACTIVE, or no attached policy allowing ``iot:Connect`` on ``client/<clientId>`` → the front
   closes the connection AWS's way: TLS close_notify, then close, no CONNACK. awscrt reports that as
   ``AWS_ERROR_MQTT_UNEXPECTED_HANGUP`` (5134), exactly what AWS IoT produces. Thing policy variables resolve
   when a thing named like the client id is attached to the certificate.
3. Then bytes flow both ways between device and broker, with the packets parsed on the way:

   - PUBLISH from the device needs ``iot:Publish`` on ``topic/<name>``. Unauthorized → AWS IoT closes the
     connection (MQTT 3.1.1 has no negative PUBACK); the lab does the same. Sources: AWS IoT developer guide,
     "AWS IoT Core policy actions" (iot:Publish is checked every time a PUBLISH request is sent) and
     "Lifecycle events" (disconnectReason AUTH_ERROR: "the client failed to authenticate or authorization
     failed"); aws/aws-iot-device-sdk-python-v2#260 (2022): a QoS 0 publish outside the policy makes awscrt
     report AWS_ERROR_MQTT_UNEXPECTED_HANGUP, a QoS 1 one is retried across reconnects.
   - SUBSCRIBE needs ``iot:Subscribe`` on ``topicfilter/<filter>``, per filter. Unauthorized filters get the
     MQTT 3.1.1 failure return code 0x80 in the SUBACK and the connection stays up; authorized filters of the
     same SUBSCRIBE are granted. Sources: "AWS IoT Core policy actions" (iot:Subscribe is checked every time a
     SUBSCRIBE request is sent); awslabs/aws-c-mqtt#165 and PR #170 (the awscrt MQTT 3.1.1 client reads the
     SUBACK return code because the broker "can fail a subscribe with 0x80 return in SUBACK"; awscrt raises
     ``SubscribeError``). In 2017 AWS closed the connection instead (aws/aws-iot-device-sdk-js#125); the lab
     follows the current behaviour.
   - PUBLISH from the broker to the device needs ``iot:Receive`` on ``topic/<name>``, checked on every
     delivery ("AWS IoT Core policy actions"). Unauthorized → the message is not delivered (the front
     acknowledges it to the broker itself so it is not redelivered); the connection stays up.
   - A PUBLISH payload over AWS's 128 KB limit, a second CONNECT or a malformed packet → connection closed
     (lifecycle disconnectReason CLIENT_ERROR).

Policies are read once per connection, at CONNECT, and used for that connection's whole life (AWS IoT also
caches a connection's authorization, so a policy change is only guaranteed to apply to new connections);
every new connection re-reads certificate, policies and things.

Accounts and regions share one broker, but never see each other's sessions or messages: the front puts every
client id and topic of an endpoint into that endpoint's namespace (``<account>:<region>/<topic>``) on the way
in and strips it on the way out, so the device sees exactly its own topics, as on AWS.

Latency: TCP_NODELAY on every socket the lab owns, TCP_QUICKACK re-armed before each read from a device
(awscrt does not set TCP_NODELAY; without quick ACKs its small writes wait for Linux's 40 ms delayed ACK).
Threads: one accept thread per endpoint, two per connection (device→broker, broker→device), all daemon;
`stop()` closes listeners and live connections within a bounded time.

The MQTT framing and packet parsing live in `station.lab._mqtt`.

What this module must not do: touch moto internals (only `registry_view` does), write or log any private key,
or listen on anything but the configured loopback host.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from station.errors import InputError
from station.lab._mqtt import (
    AWS_MAX_PAYLOAD,
    CONNECT,
    DISCONNECT,
    MAX_DEVICE_PACKET,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBACK_FAILURE,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Connect,
    MalformedPacket,
    Packet,
    PacketReader,
    Publish,
    encode_ack,
    encode_connect,
    encode_publish,
    encode_suback,
    encode_subscribe,
    encode_unsubscribe,
    packet_id_of,
    parse_connect,
    parse_publish,
    parse_suback,
    parse_subscribe,
    parse_unsubscribe,
)
from station.lab.broker import LabBroker
from station.lab.policy import (
    IOT_CONNECT,
    IOT_PUBLISH,
    IOT_RECEIVE,
    IOT_SUBSCRIBE,
    Policy,
    PolicyError,
    RequestContext,
    evaluate,
)
from station.lab.registry_view import Registry, RegistryView
from station.lab.tls import LabTls, ensure_lab_tls

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_POLL_S = 0.25  # longest a pump waits before looking at the stop flag again
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class DataPlaneEvent:
    """Something a front decided, for the lab's log, the TUI and tests.

    kind: ``refused`` (connection closed before CONNACK), ``connected``, ``publish_denied`` (connection
    closed), ``subscribe_denied`` (SUBACK 0x80), ``receive_dropped``, ``closed``, ``protocol_error``.
    """

    kind: str
    account_id: str
    region: str
    detail: str
    certificate_id: str | None = None
    client_id: str | None = None


@dataclass
class _Endpoint:
    account_id: str
    region: str
    requested_port: int
    registry: Registry
    namespace: str
    listener: socket.socket | None = None
    port: int = 0
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class _Grant:
    """What a connection was allowed at CONNECT: its policies and the values its variables resolve to."""

    certificate_id: str
    client_id: str
    policies: tuple[Policy, ...]
    context: RequestContext


class DataPlane:
    """TLS fronts per (account, region) in front of one shared broker; a context manager.

    `endpoints` maps ``(account_id, region)`` to a port (0 = pick a free one). `state_dir` receives the lab CA
    and server certificate (`station.lab.tls`). `registry_factory(account_id, region)` gives the registry a
    front judges by (moto's, live, by default).
    """

    def __init__(
        self,
        endpoints: Mapping[tuple[str, str], int],
        state_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        broker_port: int = 0,
        handshake_timeout: float = 5.0,
        registry_factory: Callable[[str, str], Registry] = RegistryView,
        on_event: Callable[[DataPlaneEvent], None] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("the data plane needs at least one (account, region) endpoint")
        self.host = host
        self.state_dir = Path(state_dir)
        self.handshake_timeout = handshake_timeout
        self._on_event = on_event
        self._broker = LabBroker(host, broker_port)
        self._endpoints = {
            (account, region): _Endpoint(
                account_id=account,
                region=region,
                requested_port=port,
                registry=registry_factory(account, region),
                namespace=f"{account}:{region}",
            )
            for (account, region), port in endpoints.items()
        }
        self._tls: LabTls | None = None
        self._ssl_context: SSL.Context | None = None
        self._stopping = threading.Event()
        self._links: set[_Link] = set()
        self._links_lock = threading.Lock()
        self._started = False

    # --- public API ---------------------------------------------------------------------------------------

    def __enter__(self) -> DataPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ca_file(self) -> Path:
        """The lab CA (PEM): what a client passes as ``ca_filepath`` (or reads for ``ca_bytes``)."""
        if self._tls is None:
            raise RuntimeError("the data plane is not started")
        return self._tls.ca_file

    @property
    def ca_bytes(self) -> bytes:
        return self.ca_file.read_bytes()

    @property
    def broker_address(self) -> tuple[str, int]:
        return self._broker.address

    def port_for(self, account_id: str, region: str) -> int:
        endpoint = self._endpoints.get((account_id, region))
        if endpoint is None:
            raise KeyError(f"the lab has no data endpoint for account {account_id} in {region}")
        if not endpoint.port:
            raise RuntimeError("the data plane is not started")
        return endpoint.port

    @property
    def ports(self) -> dict[tuple[str, str], int]:
        return {key: e.port for key, e in self._endpoints.items()}

    def start(self) -> None:
        if self._started:
            raise RuntimeError("the data plane is already started")
        self._stopping.clear()
        for endpoint in self._endpoints.values():
            try:
                endpoint.registry.certificate("0" * 64)  # fails now, with a clear message, not per connection
            except LookupError as exc:
                raise InputError(
                    "Unknown lab region",
                    f"The lab has no IoT registry for account {endpoint.account_id} in {endpoint.region!r} ({exc}).",
                    "Use an AWS region name that AWS IoT offers, such as us-east-1 or ap-northeast-1.",
                ) from exc
        self._tls = ensure_lab_tls(self.state_dir)
        self._ssl_context = self._make_ssl_context(self._tls)
        self._broker.start()
        self._started = True
        try:
            for endpoint in self._endpoints.values():
                endpoint.listener = self._listen(endpoint)
                endpoint.port = endpoint.listener.getsockname()[1]
        except BaseException:
            self.stop()
            raise
        for endpoint in self._endpoints.values():
            endpoint.thread = threading.Thread(
                target=self._accept_loop,
                args=(endpoint,),
                name=f"lab-front-{endpoint.account_id}-{endpoint.region}",
                daemon=True,
            )
            endpoint.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close listeners and live connections, stop the broker; returns within about `timeout` seconds."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        for endpoint in self._endpoints.values():
            if endpoint.listener is not None:
                with contextlib.suppress(OSError):  # wakes a blocked accept() at once on Linux
                    endpoint.listener.shutdown(socket.SHUT_RDWR)
        for endpoint in self._endpoints.values():
            if endpoint.thread is not None:
                endpoint.thread.join(max(0.0, deadline - time.monotonic()))
                endpoint.thread = None
            if endpoint.listener is not None:
                endpoint.listener.close()
                endpoint.listener = None
            endpoint.port = 0
        with self._links_lock:
            links = list(self._links)
        for link in links:
            link.close("the lab is stopping")
        for link in links:
            link.join(max(0.0, deadline - time.monotonic()))
        self._broker.stop(max(0.5, deadline - time.monotonic()))
        self._started = False

    # --- setup --------------------------------------------------------------------------------------------

    @staticmethod
    def _make_ssl_context(tls: LabTls) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)  # AWS IoT Core: TLS 1.2 and 1.3
        ctx.use_certificate_file(str(tls.server_cert_file))
        ctx.use_privatekey_file(str(tls.server_key_file))
        ctx.check_privatekey()
        # Ask for a client certificate and accept whatever chain it has: AWS judges it by the registry later.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
        # Full handshakes only: every connection then presents its certificate afresh.
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        return ctx

    def _listen(self, endpoint: _Endpoint) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, endpoint.requested_port))
        except OSError as exc:
            listener.close()
            raise InputError(
                "Lab data port in use",
                f"The lab cannot listen on {self.host}:{endpoint.requested_port} for account "
                f"{endpoint.account_id} in {endpoint.region}: {exc.strerror or exc}.",
                "Choose another data port (0 picks a free one) or stop the program using it.",
            ) from exc
        listener.listen(128)
        listener.settimeout(_POLL_S)
        return listener

    def _accept_loop(self, endpoint: _Endpoint) -> None:
        listener = endpoint.listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                sock, _peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed on the %s/%s front", endpoint.account_id, endpoint.region)
                time.sleep(_POLL_S)  # e.g. out of file descriptors: do not spin
                continue
            link = _Link(self, endpoint, sock)
            with self._links_lock:
                self._links.add(link)
            link.start()

    # --- used by links ------------------------------------------------------------------------------------

    def _forget(self, link: _Link) -> None:
        with self._links_lock:
            self._links.discard(link)

    def _emit(self, event: DataPlaneEvent) -> None:
        level = logging.INFO if event.kind in ("connected", "closed") else logging.WARNING
        log.log(
            level,
            "%s/%s %s cert=%s client=%r: %s",
            event.account_id,
            event.region,
            event.kind,
            (event.certificate_id or "-")[:12],
            event.client_id,
            event.detail,
        )
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a listener's bug must not break a connection
                log.exception("data plane event listener failed")

    def _authorize_connect(self, endpoint: _Endpoint, certificate_id: str, client_id: str) -> _Grant | str:
        """Judge a CONNECT by the live registry: a grant, or the reason for refusing it."""
        where = f"account {endpoint.account_id} in {endpoint.region}"
        record = endpoint.registry.certificate(certificate_id)
        if record is None:
            return f"certificate {certificate_id} is not registered in {where}"
        if record.status != "ACTIVE":
            return f"certificate {certificate_id} is {record.status} in {where}"
        policies: list[Policy] = []
        for attached in endpoint.registry.attached_policies(record.arn):
            try:
                policies.append(Policy.from_document(attached.name, attached.document))
            except PolicyError as exc:
                log.warning("ignoring policy %r in %s: %s", attached.name, where, exc)
        if not policies:
            return f"no policy is attached to certificate {certificate_id} in {where}"
        things = endpoint.registry.attached_things(record.arn)
        context = RequestContext(
            region=endpoint.region,
            account_id=endpoint.account_id,
            client_id=client_id,
            thing_name=client_id if client_id in things else None,
        )
        decision = evaluate(policies, IOT_CONNECT, context.client_arn(), context)
        if not decision.allowed:
            return decision.reason
        return _Grant(certificate_id, client_id, tuple(policies), context)


def _accept_any_certificate(conn: SSL.Connection, cert: object, errnum: int, depth: int, ok: int) -> bool:
    # AWS IoT accepts self-signed certificates and ones from CAs it never saw at the TLS layer.
    return True


def _set_low_latency(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quickack(sock: socket.socket) -> None:
    # Linux resets TCP_QUICKACK after a while; re-arming it before each read keeps ACKs immediate.
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


class _Closed(Exception):
    """The link is closing: stop what you are doing."""


class _Link:
    """One device connection: TLS to the device, TCP to the broker, a pump thread for each direction."""

    def __init__(self, plane: DataPlane, endpoint: _Endpoint, sock: socket.socket) -> None:
        self.plane = plane
        self.endpoint = endpoint
        self.sock = sock
        self.broker: socket.socket | None = None
        assert plane._ssl_context is not None
        self.tls = SSL.Connection(plane._ssl_context, sock)
        self.tls.set_accept_state()
        self._tls_lock = threading.Lock()  # OpenSSL objects are not safe for concurrent read and write
        self._closed = threading.Event()
        self._close_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._grant: _Grant | None = None
        self._certificate_id: str | None = None
        self._client_id: str | None = None
        self._pending_subacks: dict[int, list[bool]] = {}
        self._dropped_qos2: set[int] = set()
        self._state_lock = threading.Lock()
        self._prefix = endpoint.namespace + "/"
        self._close_reason = ""

    def __hash__(self) -> int:
        return id(self)

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="lab-link-up", daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def close(self, reason: str) -> None:
        """Close both sides: TLS close_notify to the device (how AWS hangs up), then the sockets."""
        with self._close_lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self._close_reason = reason
        log.debug("closing link (%s)", reason)
        with self._tls_lock, contextlib.suppress(SSL.Error, OSError):
            self.tls.shutdown()
        for sock in (self.sock, self.broker):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    # --- events -------------------------------------------------------------------------------------------

    def _event(self, kind: str, detail: str) -> None:
        self.plane._emit(
            DataPlaneEvent(
                kind=kind,
                account_id=self.endpoint.account_id,
                region=self.endpoint.region,
                detail=detail,
                certificate_id=self._certificate_id,
                client_id=self._client_id,
            )
        )

    # --- TLS I/O on a non-blocking socket, shared by two threads ------------------------------------------

    def _tls_call(self, op: Callable[[], _T], deadline: float | None) -> _T:
        while True:
            if self._closed.is_set():
                raise _Closed()
            with self._tls_lock:
                try:
                    return op()
                except SSL.WantReadError:
                    want_write = False
                except SSL.WantWriteError:
                    want_write = True
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            if deadline is not None and wait <= 0:
                raise TimeoutError("TLS operation timed out")
            if not want_write:
                _quickack(self.sock)
            try:
                if want_write:
                    select.select([], [self.sock], [], wait)
                else:
                    select.select([self.sock], [], [], wait)
            except (OSError, ValueError) as exc:
                raise _Closed() from exc

    def _tls_recv(self, deadline: float | None = None) -> bytes:
        """Next bytes from the device; b"" when it closed (close_notify, EOF or reset)."""
        try:
            return self._tls_call(lambda: self.tls.recv(_READ_SIZE), deadline)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return b""
        except SSL.Error as exc:
            raise _Closed() from exc

    def _tls_send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                sent = self._tls_call(functools.partial(self.tls.send, view), None)
                view = view[sent:]
        except SSL.Error as exc:
            raise _Closed() from exc

    def _broker_send(self, data: bytes) -> None:
        assert self.broker is not None
        try:
            self.broker.sendall(data)
        except OSError as exc:
            raise _Closed() from exc

    # --- connection setup ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup_and_pump()
        except _Closed:
            pass
        except TimeoutError as exc:
            self._event("protocol_error", f"device too slow: {exc}")
        except Exception:
            log.exception("data plane connection failed unexpectedly")
        finally:
            self.close("the device closed the connection")
            self.join(self.plane.handshake_timeout)
            if self._grant is not None:
                self._event("closed", self._close_reason)
            for sock in (self.sock, self.broker):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            self.plane._forget(self)

    def _setup_and_pump(self) -> None:
        self.sock.setblocking(False)
        _set_low_latency(self.sock)
        deadline = time.monotonic() + self.plane.handshake_timeout
        try:
            self._tls_call(self.tls.do_handshake, deadline)
        except SSL.Error as exc:
            log.debug("TLS handshake failed: %s", exc)  # not TLS, or the client gave up: nothing to judge
            return
        peer = self.tls.get_peer_certificate()
        if peer is None:  # VERIFY_FAIL_IF_NO_PEER_CERT makes this unreachable; be safe anyway
            return
        der = peer.to_cryptography().public_bytes(serialization.Encoding.DER)
        self._certificate_id = hashlib.sha256(der).hexdigest()

        reader = PacketReader(MAX_DEVICE_PACKET)
        packets: list[Packet] = []
        while not packets:
            data = self._tls_recv(deadline)
            if not data:
                return  # closed before sending CONNECT
            try:
                packets = reader.feed(data)
            except MalformedPacket as exc:
                self._refuse(f"malformed first packet: {exc}")
                return
        try:
            connect = parse_connect(packets[0])
        except MalformedPacket as exc:
            self._refuse(f"first packet is not a valid MQTT 3.1.1 CONNECT: {exc}")
            return
        self._client_id = connect.client_id

        grant = self.plane._authorize_connect(self.endpoint, self._certificate_id, connect.client_id)
        if isinstance(grant, str):
            self._refuse(grant)
            return
        self._grant = grant

        self.broker = socket.create_connection(
            self.plane.broker_address, timeout=self.plane.handshake_timeout
        )
        self.broker.settimeout(None)
        _set_low_latency(self.broker)
        self._broker_send(encode_connect(self._namespaced_connect(connect)))
        self._event("connected", f"{IOT_CONNECT} allowed; session clean={connect.clean_session}")

        down = threading.Thread(target=self._pump_down, name="lab-link-down", daemon=True)
        self._threads.append(down)
        down.start()
        self._pump_up(reader, packets[1:])

    def _refuse(self, reason: str) -> None:
        self._event("refused", reason)
        self.close(reason)

    def _namespaced_connect(self, connect: Connect) -> Connect:
        # An empty client id stays empty: the broker then applies MQTT's own rules for it.
        client_id = f"{self.endpoint.namespace}:{connect.client_id}" if connect.client_id else ""
        will_topic = self._prefix + connect.will_topic if connect.will_topic is not None else None
        return Connect(
            protocol_name=connect.protocol_name,
            protocol_level=connect.protocol_level,
            clean_session=connect.clean_session,
            keep_alive=connect.keep_alive,
            client_id=client_id,
            will_topic=will_topic,
            will_message=connect.will_message,
            will_qos=connect.will_qos,
            will_retain=connect.will_retain,
            username=connect.username,
            password=connect.password,
        )

    def _allowed(self, action: str, resource: str) -> tuple[bool, str]:
        assert self._grant is not None
        decision = evaluate(self._grant.policies, action, resource, self._grant.context)
        return decision.allowed, decision.reason

    # --- device → broker ----------------------------------------------------------------------------------

    def _pump_up(self, reader: PacketReader, packets: list[Packet]) -> None:
        while True:
            out = bytearray()
            try:
                for packet in packets:
                    forwarded = self._from_device(packet)
                    if forwarded is None:
                        return  # the front hung up on the device
                    out += forwarded
            except MalformedPacket as exc:
                self._event("protocol_error", f"malformed packet from the device: {exc}")
                return
            if out:
                self._broker_send(bytes(out))
            data = self._tls_recv()
            if not data:
                # The device is gone: let the broker see the disconnect, then wait for its side to finish.
                if self.broker is not None:
                    with contextlib.suppress(OSError):
                        self.broker.shutdown(socket.SHUT_WR)
                return
            try:
                packets = reader.feed(data)
            except MalformedPacket as exc:
                self._event("protocol_error", f"malformed packet from the device: {exc}")
                return

    def _from_device(self, packet: Packet) -> bytes | None:
        """Bytes to forward to the broker for `packet` (maybe b""), or None after hanging up on the device."""
        assert self._grant is not None
        context = self._grant.context
        if packet.kind == PUBLISH:
            publish = parse_publish(packet)
            if len(publish.payload) > AWS_MAX_PAYLOAD:
                self._event(
                    "protocol_error", f"PUBLISH payload of {len(publish.payload)} bytes exceeds 128 KB"
                )
                self.close("payload too large")
                return None
            allowed, reason = self._allowed(IOT_PUBLISH, context.topic_arn(publish.topic))
            if not allowed:
                self._event("publish_denied", reason)
                self.close(reason)
                return None
            return encode_publish(_retopic(publish, self._prefix + publish.topic))
        if packet.kind == SUBSCRIBE:
            packet_id, subscriptions = parse_subscribe(packet)
            verdicts = []
            for topic_filter, _qos in subscriptions:
                allowed, reason = self._allowed(IOT_SUBSCRIBE, context.topicfilter_arn(topic_filter))
                if not allowed:
                    self._event("subscribe_denied", reason)
                verdicts.append(allowed)
            granted = [
                (self._prefix + f, q) for (f, q), ok in zip(subscriptions, verdicts, strict=True) if ok
            ]
            if not granted:
                self._tls_send(encode_suback(packet_id, [SUBACK_FAILURE] * len(subscriptions)))
                return b""
            if not all(verdicts):
                with self._state_lock:
                    self._pending_subacks[packet_id] = verdicts
            return encode_subscribe(packet_id, granted)
        if packet.kind == UNSUBSCRIBE:
            packet_id, filters = parse_unsubscribe(packet)
            return encode_unsubscribe(packet_id, [self._prefix + f for f in filters])
        if packet.kind == CONNECT:
            self._event("protocol_error", "second CONNECT on one connection")
            self.close("second CONNECT")
            return None
        if packet.kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ, DISCONNECT):
            return packet.raw
        raise MalformedPacket(f"packet type {packet.kind} is not sent by clients")

    # --- broker → device ----------------------------------------------------------------------------------

    def _pump_down(self) -> None:
        reader = PacketReader()
        assert self.broker is not None
        try:
            while not self._closed.is_set():
                try:
                    data = self.broker.recv(_READ_SIZE)
                except OSError:
                    return
                if not data:
                    return
                out = bytearray()
                back = bytearray()
                for packet in reader.feed(data):
                    out += self._from_broker(packet, back)
                if back:
                    self._broker_send(bytes(back))
                if out:
                    self._tls_send(bytes(out))
        except (_Closed, MalformedPacket):
            return
        except Exception:
            log.exception("data plane broker pump failed")
        finally:
            # The broker ended the session (DISCONNECT processed, take-over, shutdown): hang up like AWS.
            self.close("the broker ended the session")

    def _from_broker(self, packet: Packet, back: bytearray) -> bytes:
        """Bytes to send to the device for `packet`; answers the broker itself (in `back`) when it drops one."""
        assert self._grant is not None
        if packet.kind == PUBLISH:
            publish = parse_publish(packet)
            if not publish.topic.startswith(self._prefix):
                return b""  # not this endpoint's namespace: cannot happen with prefixed subscriptions
            topic = publish.topic[len(self._prefix) :]
            allowed, reason = self._allowed(IOT_RECEIVE, self._grant.context.topic_arn(topic))
            if allowed:
                return encode_publish(_retopic(publish, topic))
            self._event("receive_dropped", reason)
            if publish.qos == 1 and publish.packet_id is not None:
                back += encode_ack(PUBACK, publish.packet_id)
            elif publish.qos == 2 and publish.packet_id is not None:
                back += encode_ack(PUBREC, publish.packet_id)
                with self._state_lock:
                    self._dropped_qos2.add(publish.packet_id)
            return b""
        if packet.kind == PUBREL:
            packet_id = packet_id_of(packet)
            with self._state_lock:
                dropped = packet_id in self._dropped_qos2
                self._dropped_qos2.discard(packet_id)
            if dropped:
                back += encode_ack(PUBCOMP, packet_id)
                return b""
            return packet.raw
        if packet.kind == SUBACK:
            packet_id, codes = parse_suback(packet)
            with self._state_lock:
                verdicts = self._pending_subacks.pop(packet_id, None)
            if verdicts is None:
                return packet.raw
            granted = iter(codes)
            return encode_suback(
                packet_id, [next(granted, SUBACK_FAILURE) if ok else SUBACK_FAILURE for ok in verdicts]
            )
        return packet.raw


def _retopic(publish: Publish, topic: str) -> Publish:
    return Publish(
        topic=topic,
        qos=publish.qos,
        retain=publish.retain,
        dup=publish.dup,
        packet_id=publish.packet_id,
        payload=publish.payload,
    )
