"""Edge credentials: the token an operator gives an edge, and the keys derived from it.

An operator enrolls an edge (`ess edge enroll NAME`): the head makes a token
`<edge name>.<secret>`, shows it once and keeps only its key, an HMAC-SHA256 of the token that
does not give the token back. The edge is configured with the token (`ESS_EDGE_TOKEN`) and
derives the same key. Two signing keys come from it, one per direction, so that nothing one
side signs can be passed off as the other's:

- upward: the edge signs its heartbeats and results (`x-ess-edge-signature`); the broker
  checks them with the key of the edge the message names;
- downward: the broker signs the work it gives the edge (`x-ess-head-signature` on
  `file.assigned`); the edge's workers check it before doing anything.

While its enrollment stands, the token is also the edge's bearer token at the head (role
`edge`). Revoking it ends all three at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any

HEAD_SIGNATURE_HEADER = "x-ess-head-signature"
_EDGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def new_token(edge: str) -> str:
    if not _EDGE_NAME.fullmatch(edge):
        raise ValueError(f"not an edge name: {edge!r}")
    return f"{edge}.{secrets.token_urlsafe(32)}"


def edge_of(token: str) -> str | None:
    """The edge a token was made for, or None when it is not an edge's token."""
    edge, dot, secret = token.partition(".")
    return edge if dot and secret and _EDGE_NAME.fullmatch(edge) else None


def key_of(token: str) -> str:
    """What the head keeps of a token (hex)."""
    return hmac.new(b"ess edge enrollment", token.encode(), hashlib.sha256).hexdigest()


def upward_key(key: str) -> bytes:
    return hmac.new(bytes.fromhex(key), b"edge to head", hashlib.sha256).digest()


def downward_key(key: str) -> bytes:
    return hmac.new(bytes.fromhex(key), b"head to edge", hashlib.sha256).digest()


def sign(signing_key: bytes, body: bytes) -> str:
    return hmac.new(signing_key, body, hashlib.sha256).hexdigest()


def signed_with(signing_key: bytes, body: bytes, headers: Mapping[str, Any], header: str) -> bool:
    """Whether the header holds the body's signature with this key (compared in constant
    time)."""
    given = headers.get(header)
    if isinstance(given, bytes):
        given = given.decode(errors="replace")
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(sign(signing_key, body), given)
