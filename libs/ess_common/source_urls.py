"""The source URLs ESS reads input files from, and how each is read.

Rucio lists WebDAV replicas as ``davs://`` (``dav://`` without TLS): plain HTTP(S) GETs with
byte ranges read them, so they are read as ``https://`` (``http://``) URLs.
"""

from __future__ import annotations

__all__ = ["SOURCE_SCHEMES", "as_read"]

#: What a file's sources may start with.
SOURCE_SCHEMES = ("file://", "http://", "https://", "dav://", "davs://", "s3://", "root://")

_WEBDAV = {"davs://": "https://", "dav://": "http://"}


def as_read(url: str) -> str:
    """``url`` as it is read: a WebDAV URL as the HTTP(S) URL of the same file."""
    for scheme, http in _WEBDAV.items():
        if url.startswith(scheme):
            return http + url.removeprefix(scheme)
    return url
