"""Build the object store named by `ESS_STORE_URL`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ess_common.settings import EssSettings
from ess_common.store.base import ObjectStore
from ess_common.store.local import LocalStore
from ess_common.store.s3 import S3Store


def make_store(settings: EssSettings) -> ObjectStore:
    url = settings.store_url
    if url.startswith("file://"):
        return LocalStore(
            Path(url.removeprefix("file://")),
            settings.head_url,
            settings.url_signing_key.get_secret_value().encode(),
        )
    parsed = urlparse(url)
    return S3Store(
        parsed.netloc,
        prefix=parsed.path,
        endpoint_url=settings.s3_endpoint_url,
        access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
        secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
        region=settings.s3_region,
        max_connections=settings.upload_concurrency,
    )
