"""XRootD's client as ESS uses it for root:// sources (through fsspec-xrootd).

The client's own defaults keep trying an unreachable server for minutes; `limit_waits` makes a
source that cannot be reached, or that stops answering, fail within ESS's timeouts, so that
the next source is tried. `not_found` tells a file the server does not have from other errors.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

__all__ = ["CONNECT_TIMEOUT_S", "REQUEST_TIMEOUT_S", "limit_waits", "not_found"]

#: Seconds to connect to a server before it counts as unreachable.
CONNECT_TIMEOUT_S = 10
#: Seconds to wait for the answer to any one request.
REQUEST_TIMEOUT_S = 60
#: kXR_NotFound, as the client's error messages quote it.
_NOT_FOUND = "[3011]"


@functools.cache
def limit_waits() -> None:
    """Set the process's XRootD client to connect once, within `CONNECT_TIMEOUT_S`, and to
    give up on a request after `REQUEST_TIMEOUT_S`."""
    client: Any = importlib.import_module("XRootD.client")
    client.EnvPutInt("ConnectionWindow", CONNECT_TIMEOUT_S)
    client.EnvPutInt("ConnectionRetry", 1)
    client.EnvPutInt("RequestTimeout", REQUEST_TIMEOUT_S)


def not_found(exc: BaseException) -> bool:
    """Whether the server answered that the file is not there."""
    return _NOT_FOUND in str(exc)
