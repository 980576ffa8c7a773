"""A one-line progress report on a terminal (stderr by default); silent when not a TTY, so
logs and the JSON on stdout stay clean in batch jobs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        min_interval_s: float = 0.1,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.min_interval_s = min_interval_s
        self.files_total = 0
        self.files_done = 0
        self.files_reused = 0
        self.files_failed = 0
        self.bytes_total = 0
        self.bytes_done = 0
        self._last_draw = 0.0
        self._drawn = False

    def add(self, files: int, size: int) -> None:
        self.files_total += files
        self.bytes_total += size
        self._draw()

    def advance(self, size: int) -> None:
        self.bytes_done += size
        self._draw()

    def rewind(self, size: int) -> None:
        """Bytes thrown away (a corrupt or restarted transfer) are counted again."""
        self.bytes_done = max(0, self.bytes_done - size)
        self._draw()

    def file_done(self, *, ok: bool, reused: bool = False) -> None:
        self.files_done += 1
        self.files_reused += reused
        self.files_failed += not ok
        self._draw(force=True)

    def line(self) -> str:
        mb = 1024 * 1024
        return (
            f"ess-pilot: {self.files_done}/{self.files_total} files"
            f" ({self.files_reused} reused, {self.files_failed} failed)"
            f" {self.bytes_done / mb:.1f}/{self.bytes_total / mb:.1f} MiB"
        )

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval_s:
            return
        self._last_draw = now
        self._drawn = True
        self.stream.write(f"\r\x1b[K{self.line()}")
        self.stream.flush()

    def close(self) -> None:
        """The final state, and the line ended."""
        if self.enabled and self._drawn:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
