"""The piece files a destination directory already holds, verified.

Next to each verified file a small `<file>.ess.json` records which events of which original
file it holds, so that a later range those events cover is served from disk without asking
anyone, by this process or a later one using the same directory. A file is held (in memory)
as soon as it is verified; its sidecar is written later, off the event loop, in batches
(`take_unwritten`, `write_sidecars`), at the latest when the fetch ends: a process killed
meanwhile leaves verified files without sidecars, which a later process finds by a lookup and
uses without downloading them again.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ess_pilot.ranges import Piece, check_key

log = logging.getLogger("ess_pilot")

CHUNK = 1 << 20
SIDECAR = ".ess.json"


def adler32_of_file(path: Path) -> str:
    value = 1
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


@dataclass(frozen=True)
class HeldFile:
    """What a sidecar records: a verified piece file and the events it holds."""

    key: str
    scope: str
    lfn: str
    size: int
    adler32: str
    file_first_event: int
    file_last_event: int

    @classmethod
    def from_json(cls, data: object) -> HeldFile:
        held = cls(**data) if isinstance(data, dict) else None
        if held is None or not (
            all(isinstance(v, str) for v in (held.key, held.scope, held.lfn, held.adler32))
            and all(
                isinstance(v, int) for v in (held.size, held.file_first_event, held.file_last_event)
            )
        ):
            raise ValueError(f"not a held-file record: {data!r}")
        check_key(held.key)
        return held

    def piece(self, start: int, last: int) -> Piece:
        return Piece(
            key=self.key,
            size=self.size,
            adler32=self.adler32,
            file_first_event=self.file_first_event,
            file_last_event=self.file_last_event,
            start_event=start,
            last_event=last,
        )


class HeldFiles:
    """The verified piece files under `dest`, found by their sidecars."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._files: dict[tuple[str, str], dict[str, HeldFile]] = {}
        self._unwritten: dict[str, HeldFile] = {}
        self._loaded = False

    def path(self, key: str) -> Path:
        return self.dest / check_key(key)

    def load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for sidecar in self.dest.rglob(f"*{SIDECAR}"):
            try:
                held = HeldFile.from_json(json.loads(sidecar.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("held.unreadable sidecar=%s error=%s", sidecar, exc)
                continue
            self._files.setdefault((held.scope, held.lfn), {})[held.key] = held

    def add(self, held: HeldFile) -> None:
        """Held from now on; its sidecar waits for `write_sidecars`."""
        self._files.setdefault((held.scope, held.lfn), {})[held.key] = held
        self._unwritten[held.key] = held

    @property
    def unwritten(self) -> int:
        return len(self._unwritten)

    def take_unwritten(self) -> list[HeldFile]:
        """The held files whose sidecars are still to be written (handed over once)."""
        batch = list(self._unwritten.values())
        self._unwritten.clear()
        return batch

    def write_sidecars(self, batch: list[HeldFile]) -> None:
        """Writes each sidecar (file I/O only: safe in a worker thread); a sidecar that cannot
        be written is logged and left out (its file stays held by this process)."""
        for held in batch:
            sidecar = self._sidecar(held.key)
            try:
                sidecar.parent.mkdir(parents=True, exist_ok=True)
                tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(asdict(held)), encoding="utf-8")
                os.replace(tmp, sidecar)
            except OSError as exc:
                log.warning("held.sidecar_unwritten key=%s error=%s", held.key, exc)

    def forget(self, held: HeldFile) -> None:
        self._files.get((held.scope, held.lfn), {}).pop(held.key, None)
        self._unwritten.pop(held.key, None)
        self._sidecar(held.key).unlink(missing_ok=True)

    def covering(self, scope: str, lfn: str, start: int, last: int) -> list[Piece] | None:
        """Held pieces holding every event start..last, fewest first; None if some is not
        held. Greedy: at each gap, the file reaching furthest."""
        files = list(self._files.get((scope, lfn), {}).values())
        pieces: list[Piece] = []
        needed = start
        while needed <= last:
            candidates = [f for f in files if f.file_first_event <= needed <= f.file_last_event]
            if not candidates:
                return None
            best = max(candidates, key=lambda f: f.file_last_event)
            hi = min(last, best.file_last_event)
            pieces.append(best.piece(needed, hi))
            needed = hi + 1
        return pieces

    def held(self, scope: str, lfn: str, key: str) -> HeldFile | None:
        return self._files.get((scope, lfn), {}).get(key)

    def _sidecar(self, key: str) -> Path:
        path = self.path(key)
        return path.with_name(path.name + SIDECAR)
