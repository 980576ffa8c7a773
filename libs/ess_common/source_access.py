"""How an edge reads grid storage over HTTP(S) and WebDAV: the certificate authorities it
trusts and the bearer token it presents.

Grid sites sign their servers' certificates with the IGTF authorities, which are not in the
system's store: an edge points `ESS_SOURCE_CA_PATH` at a bundle or at a directory of hashed
certificates (what `X509_CERT_DIR` names, usually /etc/grid-security/certificates). Storage
that wants a WLCG token gets the one in `ESS_SOURCE_TOKEN_FILE`, read again at every use,
since token agents renew the file in place. Neither is sent anywhere else: presigned S3 URLs
carry their own signature, and the object store's own requests are signed by its client.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from ess_common.errors import PermanentError

__all__ = ["SourceAccess"]


@dataclass(frozen=True)
class SourceAccess:
    #: A CA bundle file or a directory of hashed CA certificates; None: the system's.
    ca_path: Path | None = None
    #: A file holding a bearer token; None: no Authorization header.
    token_file: Path | None = None

    def for_presigned(self) -> SourceAccess:
        """The same authorities and no token: a URL ESS presigned carries its own credential."""
        return SourceAccess(self.ca_path)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What HTTP clients verify servers with: a context trusting `ca_path` (as well as
        the system's authorities), or True for the system's alone."""
        if self.ca_path is None:
            return True
        context = ssl.create_default_context()
        try:
            if self.ca_path.is_dir():
                context.load_verify_locations(capath=str(self.ca_path))
            else:
                context.load_verify_locations(cafile=str(self.ca_path))
        except (OSError, ssl.SSLError) as exc:
            raise PermanentError(f"ESS_SOURCE_CA_PATH {self.ca_path}: {exc}") from exc
        return context

    def headers(self) -> dict[str, str]:
        """The Authorization header with the current token, if there is a token file."""
        if self.token_file is None:
            return {}
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise PermanentError(f"ESS_SOURCE_TOKEN_FILE {self.token_file}: {exc}") from exc
        if not token:
            raise PermanentError(f"ESS_SOURCE_TOKEN_FILE {self.token_file} is empty")
        return {"Authorization": f"Bearer {token}"}
