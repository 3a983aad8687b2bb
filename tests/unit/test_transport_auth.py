"""The HMAC handshake over real connected sockets (socketpair), both directions."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from tfyarn.errors import AuthenticationError, ConfigError
from tfyarn.transport import auth


def _run_pair(
    server_fn: Callable[[socket.socket], None], client_fn: Callable[[socket.socket], None]
) -> tuple[BaseException | None, BaseException | None]:
    """Run both ends on a socketpair, in two threads; return what each raised."""
    a, b = socket.socketpair()
    errors: dict[str, BaseException | None] = {"s": None, "c": None}

    def wrap(key: str, fn: Callable[[socket.socket], None], sock: socket.socket) -> None:
        try:
            fn(sock)
        except BaseException as exc:
            errors[key] = exc
        finally:
            # Closing tells the other side we are done (a refused client sees EOF).
            sock.close()

    t = threading.Thread(target=wrap, args=("s", server_fn, a))
    t.start()
    wrap("c", client_fn, b)
    t.join(10)
    assert not t.is_alive()
    return errors["s"], errors["c"]


def test_new_job_secret_is_random_and_long_enough() -> None:
    s1, s2 = auth.new_job_secret(), auth.new_job_secret()
    assert len(s1) == auth.SECRET_BYTES >= auth.MIN_SECRET_BYTES
    assert s1 != s2


def test_matching_secrets_authenticate_both_ways() -> None:
    secret = auth.new_job_secret()
    srv, cli = _run_pair(
        lambda s: auth.server_handshake(s, secret, timeout=5),
        lambda s: auth.client_handshake(s, bytearray(secret), timeout=5),
    )
    assert srv is None and cli is None


def test_wrong_secret_is_refused_on_both_sides() -> None:
    srv, cli = _run_pair(
        lambda s: auth.server_handshake(s, auth.new_job_secret(), timeout=5),
        lambda s: auth.client_handshake(s, auth.new_job_secret(), timeout=5),
    )
    assert isinstance(srv, AuthenticationError) and "does not hold" in str(srv)
    assert isinstance(cli, AuthenticationError) and "refused" in str(cli)


def test_client_rejects_server_that_fakes_acceptance() -> None:
    """A server without the secret that says 'accepted' must fail the client's check."""
    secret = auth.new_job_secret()

    def fake_server(s: socket.socket) -> None:
        s.sendall(auth.MAGIC + b"\x07" * auth.NONCE_BYTES)
        got = 0
        buf = bytearray(len(auth.MAGIC) + auth.NONCE_BYTES + auth.MAC_BYTES)
        while got < len(buf):
            got += s.recv_into(memoryview(buf)[got:])
        s.sendall(b"\x01" + b"\x00" * auth.MAC_BYTES)

    _, cli = _run_pair(fake_server, lambda s: auth.client_handshake(s, secret, timeout=5))
    assert isinstance(cli, AuthenticationError) and "server failed" in str(cli)


def test_foreign_protocol_is_refused() -> None:
    def http_client(s: socket.socket) -> None:
        s.recv(len(auth.MAGIC) + auth.NONCE_BYTES)  # let the server speak first
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 60)
        assert s.recv(1) == b"\x00"  # refused

    srv, _ = _run_pair(
        lambda s: auth.server_handshake(s, auth.new_job_secret(), timeout=5), http_client
    )
    assert isinstance(srv, AuthenticationError) and "not a tfyarn endpoint" in str(srv)


def test_silent_peer_times_out() -> None:
    stop = threading.Event()
    srv, _ = _run_pair(
        lambda s: auth.server_handshake(s, auth.new_job_secret(), timeout=0.3),
        lambda s: stop.wait(2),  # says nothing; server gives up first
    )
    assert isinstance(srv, AuthenticationError) and "within 0.3 s" in str(srv)


def test_closed_peer_fails_cleanly() -> None:
    srv, _ = _run_pair(
        lambda s: auth.server_handshake(s, auth.new_job_secret(), timeout=5), lambda s: None
    )
    assert isinstance(srv, AuthenticationError)


@pytest.mark.parametrize("bad", ["a-string-secret-of-some-length", b"short", 12345])
def test_bad_secret_is_a_config_error(bad: object) -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(ConfigError):
            auth.client_handshake(a, bad, timeout=1)  # type: ignore[arg-type]
    finally:
        a.close()
        b.close()


def test_secrets_and_keys_never_show_in_a_repr() -> None:
    """What is logged or shown in a traceback's locals: the spec, the options, the keys."""
    from tfyarn.cluster.plan import RoleSpec
    from tfyarn.node.job import JobSpec
    from tfyarn.transport.integrity import session_keys
    from tfyarn.transport.options import TransportOptions
    from tfyarn.transport.tls import new_job_certificate

    secret = auth.new_job_secret()
    role = RoleSpec(0, "worker", 0)
    job = JobSpec("j", (role,), (role,), b"fn", secret, ("127.0.0.1", 1))
    cert = new_job_certificate()
    keys = session_keys(secret, b"s" * 32, b"c" * 32, client=True)
    for obj in (job, cert, cert.apply(TransportOptions()), keys):
        text = repr(obj)
        for hidden in (secret, cert.key_pem, keys.send, keys.recv):
            assert repr(hidden)[2:-1] not in text and hidden.hex() not in text, type(obj)
    assert b"PRIVATE KEY" in cert.key_pem and "PRIVATE KEY" not in repr(
        cert.apply(TransportOptions())
    )
