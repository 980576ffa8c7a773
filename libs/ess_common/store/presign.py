"""Presigned GET URLs of S3 objects (AWS Signature Version 4, query string), made without
botocore's per-call machinery: a pilot's lookup signs one URL per piece, and botocore's
`generate_presigned_url` costs more CPU than the rest of the lookup.

`Presigner.matching(client, bucket)` learns the URL's form (scheme, host, path-style prefix,
credential scope) from one URL botocore presigns, then signs that same URL itself with the
same timestamp: it is used only when the two agree to the byte, so that a configuration it
does not follow (a session token, another addressing style, a future botocore) keeps
botocore's URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
#: What botocore puts in a presigned GET URL of ours, in its order (sorted, as signed).
_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
#: A key with every kind of character object keys may hold (`base.check_key`).
PROBE_KEY = "ess-probe/A.z_0+9=x-y"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


class Presigner:
    """Signs `GET <origin><prefix><key>` for `ttl_s` seconds, for one access key and region."""

    def __init__(
        self, origin: str, prefix: str, access_key: str, secret_key: str, region: str
    ) -> None:
        self.origin = origin
        self.prefix = prefix
        self.host = urlsplit(origin).netloc
        self.access_key = access_key
        self.region = region
        self._secret = f"AWS4{secret_key}".encode()
        self._day_key: tuple[str, bytes] = ("", b"")

    def _signing_key(self, day: str) -> bytes:
        if self._day_key[0] != day:
            key = _hmac(self._secret, day)
            for part in (self.region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._day_key = (day, key)
        return self._day_key[1]

    def url(self, key: str, ttl_s: int, at: float | None = None) -> str:
        """The presigned URL of `key` (a checked object key), signed at `at` (now)."""
        stamp = datetime.fromtimestamp(time.time() if at is None else at, UTC)
        amz_date = stamp.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        scope = f"{day}/{self.region}/s3/aws4_request"
        path = self.prefix + quote(key, safe="/~")
        query = (
            f"X-Amz-Algorithm={ALGORITHM}"
            f"&X-Amz-Credential={_encode(f'{self.access_key}/{scope}')}"
            f"&X-Amz-Date={amz_date}&X-Amz-Expires={ttl_s}&X-Amz-SignedHeaders=host"
        )
        canonical = f"GET\n{path}\n{query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self.origin}{path}?{query}&X-Amz-Signature={signature}"

    @classmethod
    async def matching(
        cls, client: Any, bucket: str, access_key: str, secret_key: str
    ) -> Presigner | None:
        """A presigner whose URLs are botocore's own for `client` (made with these keys), or
        None when it cannot be one: its URL for a probe key differs in any byte."""
        probe_key = PROBE_KEY
        theirs: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": probe_key}, ExpiresIn=3600
        )
        parts = urlsplit(theirs)
        params = parse_qsl(parts.query, keep_blank_values=True)
        if tuple(name for name, _ in params) != _PARAMS:
            return None
        found = dict(params)
        credential = found["X-Amz-Credential"].split("/")
        encoded_key = quote(probe_key, safe="/~")
        if len(credential) != 5 or not parts.path.endswith(encoded_key):
            return None
        signed_by, _, region, service, _ = credential
        if service != "s3" or signed_by != access_key:
            return None
        presigner = cls(
            f"{parts.scheme}://{parts.netloc}",
            parts.path[: -len(encoded_key)],
            access_key,
            secret_key,
            region,
        )
        at = datetime.strptime(found["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        ours = presigner.url(probe_key, 3600, at.timestamp())
        return presigner if ours == theirs else None
