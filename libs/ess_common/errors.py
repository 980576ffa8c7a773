"""The ESS error hierarchy.

Each boundary maps it once: the HTTP layer to status codes, the message consumer to
ack / retry / dead-letter.
"""

from __future__ import annotations


class EssError(Exception):
    """Base of every error ESS raises on purpose."""


class RetryableError(EssError):
    """A passing fault (a server down, a timeout): the same work may succeed later."""


class Busy(RetryableError):
    """Refused at once for want of capacity: ask again after `retry_after_s` seconds."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.retry_after_s = max(1, retry_after_s)


class HeadUnavailable(RetryableError):
    """The head, ESS's own service, could not be reached or could not serve (its database
    down): an outage, retried for as long as it lasts, not a reason to give work up."""


class PermanentError(EssError):
    """The input itself is wrong: retrying cannot help, the work is dead-lettered."""


class BadMessage(PermanentError):
    """A message that does not parse or does not fit its contract."""


class NotFound(PermanentError):
    """A thing asked for by id does not exist."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key} not found")
        self.kind = kind
        self.key = key


class Unauthorized(PermanentError):
    """No credentials, or credentials that are not valid."""


class Forbidden(PermanentError):
    """Valid credentials that do not allow this (or a signature that does not match)."""


class TooLarge(PermanentError):
    """The input is past a configured limit (named in the reason)."""


class Conflict(PermanentError):
    """The request contradicts what is already recorded."""


class ChecksumMismatch(RetryableError):
    """A transfer arrived with the wrong size or adler32; a new attempt may fetch it right."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


def retry_after(exc: RetryableError | EssError, default: int = 5) -> int:
    """Seconds an HTTP `Retry-After` tells the client to wait after this error."""
    return exc.retry_after_s if isinstance(exc, Busy) else default


class Unroutable(RetryableError):
    """The message broker took a message that no queue is bound for: it was returned to the
    sender, not kept (until a consumer's queue is bound, e.g. its service has started)."""
