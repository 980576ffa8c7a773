"""A grid site's HTTPS storage, for the tests of reading sources over HTTPS and WebDAV.

It has a certificate authority of its own (the IGTF's are not in the system's store either),
given as a bundle and as a directory of hashed certificates (as X509_CERT_DIR is), serves a
directory's files with byte ranges, and answers 401 to any request without its bearer token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import secrets
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ess_common.source_access import SourceAccess


@dataclass(frozen=True)
class GridHttps:
    #: https://127.0.0.1:<port>/files: the directory's files are under it.
    base_url: str
    ca_file: Path
    #: The CA certificate under its OpenSSL subject hash.
    ca_dir: Path
    token_file: Path
    requests: list[str]

    def access(self, *, ca: bool = True, token: bool = True) -> SourceAccess:
        return SourceAccess(self.ca_dir if ca else None, self.token_file if token else None)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1: the CA file, the server's
    certificate and its key."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("ESS test grid CA"))
        .issuer_name(_name("ESS test grid CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("storage.grid.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def _hashed_directory(ca_file: Path, directory: Path) -> Path:
    """`directory` holding the CA under its subject hash, as X509_CERT_DIR holds them."""
    directory.mkdir()
    (directory / "ca.pem").write_bytes(ca_file.read_bytes())
    subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True)
    return directory


@asynccontextmanager
async def grid_https(served: Path, scratch: Path) -> AsyncIterator[GridHttps]:
    """HTTPS storage serving `served`; its certificates and token are written to `scratch`."""
    ca_file, cert_file, key_file = _certificates(scratch)
    ca_dir = await asyncio.to_thread(_hashed_directory, ca_file, scratch / "certificates")
    token = secrets.token_urlsafe(24)
    token_file = scratch / "token"
    token_file.write_text(token + "\n")
    requests: list[str] = []

    @web.middleware
    async def bearer(request: web.Request, handler: Any) -> web.StreamResponse:
        requests.append(request.path)
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401, text="a bearer token is required")
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[bearer])
    app.router.add_static("/files", served)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield GridHttps(f"https://127.0.0.1:{port}/files", ca_file, ca_dir, token_file, requests)
    finally:
        await runner.cleanup()
