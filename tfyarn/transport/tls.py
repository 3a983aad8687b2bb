"""TLS for the tcp and grpc backends: contexts from TransportOptions, and per-job certificates.

Two ways to give a job TLS:

* **A certificate per job** (``tfyarn.run(tls=True)``, ``tfyarn submit --tls``): the
  driver makes a fresh ECDSA P-256 key and a self-signed certificate for the name
  :data:`JOB_SERVER_NAME` (:func:`new_job_certificate`), and hands both to the roles
  with the job secret. Every listener serves it, and every connection trusts it and
  nothing else, checking the name :data:`JOB_SERVER_NAME` rather than the host's
  address (roles of one job are one trust domain: holding the job's key is what
  proves membership, as holding the secret does). Nothing to set up; it ends with the
  job.
* **The site's own PKI**: ``TransportOptions(tls_cert_chain=..., tls_private_key=...,
  tls_root_certs=..., tls_server_name=...)``, with paths readable on every node.

The HMAC handshake and the frame tags (:mod:`tfyarn.transport.integrity`) still run
inside TLS: TLS encrypts, the tags prove membership of this job, frame by frame.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tfyarn.errors import ConfigError
from tfyarn.transport.base import Buffer

if TYPE_CHECKING:
    from tfyarn.transport.options import TransportOptions

__all__ = [
    "JOB_SERVER_NAME",
    "JobCertificate",
    "client_context",
    "new_job_certificate",
    "server_context",
    "uses_tls",
]

#: The name a per-job certificate is made for, and that connections check.
JOB_SERVER_NAME = "tfyarn-job"
_KEY_MARKER = b"-----BEGIN PRIVATE KEY-----"  # PKCS#8, as new_job_certificate writes it
#: Parts of a frame shorter than this are joined into one TLS record by ``sendmsg``.
_JOIN_BELOW = 64 << 10


@dataclass(frozen=True)
class JobCertificate:
    """A job's self-signed certificate and its private key (PEM); the key never prints."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    server_name: str = JOB_SERVER_NAME

    def to_pem(self) -> bytes:
        """The certificate then the key, as one PEM file holds them (keep it 0600)."""
        return self.cert_pem + self.key_pem

    @classmethod
    def from_pem(cls, pem: bytes, server_name: str = JOB_SERVER_NAME) -> JobCertificate:
        """Read what :meth:`to_pem` wrote.

        Raises
        ------
        ConfigError
            ``pem`` holds no private key.
        """
        cert, marker, key = pem.partition(_KEY_MARKER)
        if not marker:
            raise ConfigError("the PEM holds a certificate but no private key after it")
        return cls(cert_pem=cert, key_pem=marker + key, server_name=server_name)

    def apply(self, options: TransportOptions) -> TransportOptions:
        """``options`` with this certificate served by listeners and trusted by connections."""
        return options.replace(
            tls_cert_chain=self.cert_pem,
            tls_private_key=self.key_pem,
            tls_root_certs=self.cert_pem,
            tls_server_name=self.server_name,
        )


def new_job_certificate(
    days: int = 30, *, names: Sequence[str] = (JOB_SERVER_NAME,), addresses: Sequence[str] = ()
) -> JobCertificate:
    """A fresh ECDSA P-256 key and a self-signed certificate for :data:`JOB_SERVER_NAME`.

    Parameters
    ----------
    days : int
        Validity; a job that runs longer needs a new one at its next restart.
    names, addresses : sequence of str
        The DNS names (the first is also the subject's common name, and the
        ``server_name`` connections check) and IP addresses it is valid for.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alternatives += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # hosts' clocks differ a little
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return JobCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        server_name=names[0],
    )


def uses_tls(options: TransportOptions) -> bool:
    """Whether ``options`` make listeners serve TLS or connections use it."""
    return options.tls_cert_chain is not None or options.tls_root_certs is not None


def server_context(options: TransportOptions) -> ssl.SSLContext | None:
    """The context a tcp listener serves TLS with; None without a certificate.

    Raises
    ------
    ConfigError
        The certificate or key cannot be read or do not match.
    """
    cert, key = options.read_pem("tls_cert_chain"), options.read_pem("tls_private_key")
    if cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = _FramedSSLSocket
    # load_cert_chain takes only files: write the PEMs to a private folder for the call.
    with tempfile.TemporaryDirectory(prefix="tfyarn-tls-") as folder:
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, pem in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                "TransportOptions.tls_cert_chain / tls_private_key: not a PEM certificate "
                f"chain and its private key ({exc})"
            ) from exc
    return context


def client_context(options: TransportOptions) -> ssl.SSLContext | None:
    """The context a tcp connection uses TLS with; None without root certificates.

    The server's certificate must chain to ``tls_root_certs`` and name
    ``tls_server_name`` (or the address's host when that is not set).

    Raises
    ------
    ConfigError
        The root certificates cannot be read or parsed.
    """
    roots = options.read_pem("tls_root_certs")
    if roots is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = _FramedSSLSocket
    try:
        context.load_verify_locations(cadata=roots.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"TransportOptions.tls_root_certs: not PEM certificates ({exc})") from exc
    return context


class _FramedSSLSocket(ssl.SSLSocket):
    """An SSL socket with the ``sendmsg`` the stream comms send frames with.

    ``ssl.SSLSocket`` has no ``sendmsg`` (TLS records are not scatter/gather); small parts
    (a header, a tag) are joined into one record, large ones sent as they are: the TLS
    layer copies them into records anyway.
    """

    def sendmsg(  # type: ignore[override]
        self,
        buffers: Iterable[Buffer],
        ancdata: Iterable[Any] = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        if tuple(ancdata) or flags or address is not None:
            raise NotImplementedError("sendmsg with ancillary data, flags or an address over TLS")
        small: list[bytes] = []
        total = 0
        for buf in buffers:
            view = memoryview(buf).cast("B")
            total += view.nbytes
            if view.nbytes < _JOIN_BELOW:
                small.append(bytes(view))
                continue
            if small:
                self.sendall(b"".join(small))
                small = []
            self.sendall(view)
        if small:
            self.sendall(b"".join(small))
        return total
