"""TLS to PostgreSQL: the CA bundle libpq verifies the server's certificate with, and the
reason given to the operator when it refuses one.

libpq verifies the server (``sslmode`` ``verify-full`` or ``verify-ca``) against
``sslrootcert``, by default ``~/.postgresql/root.crt``, which no container image has: a
managed PostgreSQL whose certificate comes from the provider's private CA (RDS, Cloud SQL)
could not be reached. innera always hands libpq a bundle when TLS is verified: a file the
operator names, or the operating system's trust store (``system``).

libpq >= 16 understands ``sslrootcert=system`` itself, but the libpq psycopg[binary] bundles
(18 at the time of writing) is linked to an OpenSSL of its own whose default paths
(``/usr/lib/psycopg-openssl``) exist on no system, so it would trust nothing. ``system`` is
therefore resolved here, to the bundle file of the system's OpenSSL (what Python's ``ssl``
module uses: ``SSL_CERT_FILE`` when set, else Debian's ``/etc/ssl/certs/ca-certificates.crt``
and the like), and libpq is given that file.

A certificate libpq refuses only shows as "SSL error: certificate verify failed"; at start-up
:func:`certificate_problem` asks OpenSSL, over a TLS handshake of its own, for the reason
("unable to get local issuer certificate", "certificate has expired", …).
"""

from __future__ import annotations

import functools
import os
import ssl
import struct
from pathlib import Path

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "SYSTEM",
    "VERIFIED_MODES",
    "certificate_problem",
    "is_certificate_refusal",
    "system_ca_bundle",
    "url_tls_params",
]

#: The value naming the operating system's trust store (as libpq's ``sslrootcert=system``).
SYSTEM = "system"
#: The ``sslmode`` values under which libpq checks the server's certificate against a CA.
VERIFIED_MODES = ("verify-full", "verify-ca")

# Where distributions keep their bundle, when the system OpenSSL's own default is missing
# (Debian/Ubuntu, RHEL/Fedora, Alpine/macOS-style, RHEL's extracted form).
_WELL_KNOWN_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
)

# PostgreSQL's SSLRequest: length 8, then the request code 1234·65536 + 5679.
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def system_ca_bundle() -> Path | None:
    """The operating system's CA bundle file (the one Python's ``ssl`` uses, honouring
    ``SSL_CERT_FILE``), or ``None`` when the system has none (no ca-certificates)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *_WELL_KNOWN_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def url_tls_params(url: str) -> tuple[str | None, str | None]:
    """``(sslmode, sslrootcert)`` written in a PostgreSQL URL or conninfo (``None``: not
    written there). ``ValueError`` if libpq cannot parse it."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ValueError(str(exc)) from exc
    return params.get("sslmode") or None, params.get("sslrootcert") or None


def is_certificate_refusal(error: BaseException) -> bool:
    """Did libpq refuse the server's certificate chain (as opposed to a host-name mismatch,
    a refused connection or an authentication failure)?"""
    return "certificate verify failed" in str(error)


async def certificate_problem(url: str, cafile: str, *, timeout_s: float = 3.0) -> str | None:
    """Why OpenSSL refuses the certificate of the server ``url`` names when verified against
    ``cafile`` (e.g. "unable to get local issuer certificate"); ``None`` when it accepts it
    or the reason cannot be learnt within ``timeout_s`` (the caller then says less).

    A handshake of its own, started like libpq's (an SSLRequest, then TLS), to the first
    host of the URL; the chain is checked, not the host name (libpq reports a mismatch
    itself)."""
    params = conninfo_to_dict(url)
    host = (params.get("hostaddr") or params.get("host") or "localhost").split(",")[0]
    port = int((params.get("port") or "5432").split(",")[0])
    if host.startswith("/"):
        return None  # a Unix socket: libpq does not use TLS there
    try:  # reading and parsing a bundle of ~150 certificates: off the event loop
        context = await trio.to_thread.run_sync(
            functools.partial(ssl.create_default_context, cafile=cafile))
    except (OSError, ssl.SSLError) as exc:
        return f"the CA bundle {cafile} cannot be loaded ({exc})"
    context.check_hostname = False
    with trio.move_on_after(timeout_s):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return None
        try:  # a reset or a closed connection: no diagnosis, libpq's own message stays
            async with stream:
                await stream.send_all(_SSL_REQUEST)
                if await stream.receive_some(1) != b"S":
                    return None
                tls = trio.SSLStream(stream, context,
                                     server_hostname=params.get("host") or host)
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, ssl.SSLCertVerificationError):
                        return cause.verify_message
                    return None
                await tls.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
    return None
