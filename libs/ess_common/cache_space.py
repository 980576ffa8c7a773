"""An edge's cache space, shared by its processes (precacher, splitter, the edge's server and
evictor) through files under the cache directory, so that together they never exceed the quota.

    files/<scope>/<lfn>        cached inputs (precacher)
    split/f<id>.a<attempt>/    range files of a split until they are uploaded (splitter)
    objects/<key>              range files pulled through from the object store (edge server)
    pins/f<id>.a<attempt>      work cached (or being cached) here and not yet split
    .ess/lock, .ess/ledger     reservations of downloads in progress, unmet wants

What counts against the quota: every byte on disk, plus what reservations hold beyond what their
files already have, plus the room each pin holds for its split's output beyond what that output
already takes. A download reserves its bytes before it starts and is refused (or waits for the
evictor) when they do not fit. The evictor removes least recently used cached inputs that no pin
protects and pulled-through range files when the cache is above its high watermark, or when a
refused reservation wants room, down to its low watermark. Every decision is taken under one
`flock`, so the processes see one account. Wiping the directory loses nothing but copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ess_common.errors import RetryableError

#: Room a split needs beyond the input's size, per range file: header, streamers, metadata.
SPLIT_OVERHEAD_PER_RANGE = 32 * 1024
#: A want not repeated within this long is forgotten: its download gave up or got room.
_WANT_TTL_S = 15.0
#: A reservation of a process that died is dropped; one this old is dropped anyway.
_RESERVATION_TTL_S = 24 * 3600.0


def split_headroom(size: int, n_events: int, events_per_range: int) -> int:
    """The room a split of a file takes while its range files wait for upload: about the
    input's size, plus a fixed cost per range file."""
    n_ranges = -(-n_events // events_per_range)
    return size + n_ranges * SPLIT_OVERHEAD_PER_RANGE


def pin_name(file_id: int, attempt: int) -> str:
    """Shared with the splitter's output directory: `split/<pin name>`."""
    return f"f{file_id}.a{attempt}"


@dataclass(frozen=True)
class Pin:
    """Work on this edge between caching and upload: its input stays, its split has room."""

    file_id: int
    attempt: int
    scope: str
    lfn: str
    headroom: int

    @property
    def name(self) -> str:
        return pin_name(self.file_id, self.attempt)


@dataclass(frozen=True)
class Usage:
    quota: int
    on_disk: int
    #: Reserved or pinned room not yet taken on disk.
    held: int
    #: Of what is on disk, what the evictor could remove now.
    evictable: int
    wanted: int = 0

    @property
    def used(self) -> int:
        return self.on_disk + self.held

    @property
    def free(self) -> int:
        return max(0, self.quota - self.used)


class SpaceRefused(RetryableError):
    def __init__(self, usage: Usage, wanted: int) -> None:
        super().__init__(
            f"cache quota: {usage.used} bytes used of {usage.quota}, {wanted} more do not fit"
        )
        self.usage = usage
        self.wanted = wanted


@dataclass
class _Entry:
    path: Path
    size: int
    mtime: float


@dataclass
class _Scan:
    """One look at the disk and the ledger, taken under the lock."""

    entries: list[_Entry] = field(default_factory=list)
    sizes: dict[Path, int] = field(default_factory=dict)
    split_dirs: dict[str, int] = field(default_factory=dict)
    pins: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)

    @property
    def on_disk(self) -> int:
        return sum(e.size for e in self.entries)

    def size_of(self, path: Path) -> int:
        return self.sizes.get(path, 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CacheSpace:
    """The account of one cache directory. Its methods block (file lock, directory walk):
    call them from a thread in async code."""

    def __init__(self, cache_dir: Path, quota_bytes: int, *, pin_ttl_s: float = 6 * 3600.0) -> None:
        self.root = cache_dir
        self.quota = quota_bytes
        self.pin_ttl_s = pin_ttl_s
        self._meta = cache_dir / ".ess"
        self._pins = cache_dir / "pins"

    # --- locking and reading ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Scan]:
        self._meta.mkdir(parents=True, exist_ok=True)
        with (self._meta / "lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                scan = self._scan()
                try:
                    yield scan
                finally:
                    # Also after a refusal: its want is news for the evictor.
                    self._write_ledger(scan.ledger)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_ledger(self) -> dict[str, Any]:
        try:
            data = json.loads((self._meta / "ledger.json").read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        now = time.time()
        reservations = {
            k: r
            for k, r in (data.get("reservations") or {}).items()
            if _pid_alive(int(r["pid"])) and now - float(r["at"]) < _RESERVATION_TTL_S
        }
        wants = {k: w for k, w in (data.get("wants") or {}).items() if now - w["at"] < _WANT_TTL_S}
        return {
            "reservations": reservations,
            "wants": wants,
            "evictor_at": data.get("evictor_at", 0.0),
        }

    def _write_ledger(self, ledger: dict[str, Any]) -> None:
        tmp = self._meta / f"ledger.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(ledger))
        os.replace(tmp, self._meta / "ledger.json")

    def _scan(self) -> _Scan:
        scan = _Scan(ledger=self._read_ledger())
        for directory, subdirs, names in os.walk(self.root):
            here = Path(directory)
            if here == self.root:
                subdirs[:] = [d for d in subdirs if d not in (".ess", "pins")]
            for name in names:
                path = here / name
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # removed while we walked
                scan.entries.append(_Entry(path, stat.st_size, stat.st_mtime))
                scan.sizes[path] = stat.st_size
                parts = path.relative_to(self.root).parts
                if len(parts) > 2 and parts[0] == "split":
                    scan.split_dirs[parts[1]] = scan.split_dirs.get(parts[1], 0) + stat.st_size
        if self._pins.is_dir():
            for pin in self._pins.iterdir():
                try:
                    scan.pins[pin.name] = json.loads(pin.read_text())
                except (FileNotFoundError, ValueError):
                    continue
        return scan

    def _held(self, scan: _Scan, *, without_pin: str | None = None) -> int:
        held = 0
        for r in scan.ledger["reservations"].values():
            written = sum(scan.size_of(self.root / p) for p in r["paths"])
            held += max(0, int(r["bytes"]) - written)
        for name, pin in scan.pins.items():
            if name != without_pin:
                held += max(0, int(pin["headroom"]) - scan.split_dirs.get(name, 0))
        return held

    def _evictable(self, scan: _Scan) -> list[_Entry]:
        """Least recently used first: cached inputs no pin protects, pulled-through range
        files; never a partial download or a file a reservation is writing."""
        pinned = {self.root / "files" / p["scope"] / p["lfn"] for p in scan.pins.values()}
        reserved = {self.root / p for r in scan.ledger["reservations"].values() for p in r["paths"]}
        found = []
        for e in scan.entries:
            top = e.path.relative_to(self.root).parts[0]
            if top not in ("files", "objects") or e.path.name.startswith("."):
                continue
            if e.path in pinned or e.path in reserved:
                continue
            found.append(e)
        return sorted(found, key=lambda e: e.mtime)

    def _usage(self, scan: _Scan, *, without_pin: str | None = None) -> Usage:
        return Usage(
            quota=self.quota,
            on_disk=scan.on_disk,
            held=self._held(scan, without_pin=without_pin),
            evictable=sum(e.size for e in self._evictable(scan)),
            wanted=sum(int(w["bytes"]) for w in scan.ledger["wants"].values()),
        )

    # --- what the processes do -------------------------------------------------------------

    def usage(self) -> Usage:
        with self._locked() as scan:
            return self._usage(scan)

    def reserve(
        self, wanted: int, paths: Sequence[Path] = (), *, pin: Pin | None = None, want_id: str = ""
    ) -> str:
        """Reserve `wanted` bytes for files about to be written at `paths` (and the pin's
        headroom); returns the reservation id. Raises SpaceRefused, leaving a want the evictor
        sees (under `want_id`, so that a waiting caller's repeated tries count once)."""
        headroom = pin.headroom if pin is not None else 0
        with self._locked() as scan:
            usage = self._usage(scan, without_pin=pin.name if pin is not None else None)
            if usage.used + wanted + headroom > self.quota:
                scan.ledger["wants"][want_id or uuid.uuid4().hex] = {
                    "bytes": wanted + headroom,
                    "at": time.time(),
                }
                raise SpaceRefused(usage, wanted + headroom)
            scan.ledger["wants"].pop(want_id, None)
            reservation = uuid.uuid4().hex
            if wanted:
                scan.ledger["reservations"][reservation] = {
                    "bytes": wanted,
                    "paths": [str(p.relative_to(self.root)) for p in paths],
                    "pid": os.getpid(),
                    "at": time.time(),
                }
            if pin is not None:
                self._pins.mkdir(parents=True, exist_ok=True)
                (self._pins / pin.name).write_text(
                    json.dumps(
                        {
                            "scope": pin.scope,
                            "lfn": pin.lfn,
                            "headroom": headroom,
                            "at": time.time(),
                        }
                    )
                )
            return reservation

    def release(self, reservation: str) -> None:
        """The reserved files are written (they count by themselves now) or given up."""
        with self._locked() as scan:
            scan.ledger["reservations"].pop(reservation, None)

    def unpin(self, file_id: int, attempt: int) -> None:
        unpin(self.root, file_id, attempt)

    def evict(self, high_watermark: float, low_watermark: float) -> list[Path]:
        """Evict (least recently used first) when above the high watermark or when a refused
        reservation wants room; down to the low watermark, or below it as far as the wants
        need. Also forgets stale pins. Marks the evictor alive. Returns what was removed."""
        removed: list[Path] = []
        with self._locked() as scan:
            scan.ledger["evictor_at"] = time.time()
            for name, pin in list(scan.pins.items()):
                if time.time() - float(pin.get("at", 0)) > self.pin_ttl_s:
                    (self._pins / name).unlink(missing_ok=True)
                    del scan.pins[name]
            usage = self._usage(scan)
            if usage.used <= high_watermark * self.quota and not usage.wanted:
                return removed
            target = min(low_watermark * self.quota, self.quota - usage.wanted)
            used = usage.used
            for entry in self._evictable(scan):
                if used <= target:
                    break
                entry.path.unlink(missing_ok=True)
                removed.append(entry.path)
                used -= entry.size
            if removed:
                # Their wants are met or cannot be: the next refusal says again.
                scan.ledger["wants"] = {}
        return removed

    def evictor_alive(self, within_s: float) -> bool:
        # Read without the lock: the ledger is replaced whole, never written in place.
        return time.time() - float(self._read_ledger()["evictor_at"]) <= within_s


def unpin(cache_dir: Path, file_id: int, attempt: int) -> None:
    """The work is split and uploaded: its input may be evicted, its headroom is free. One
    unlink, atomic: no lock needed (an evictor that still saw the pin only evicts less)."""
    (cache_dir / "pins" / pin_name(file_id, attempt)).unlink(missing_ok=True)


def touch(path: Path) -> None:
    """Mark a cached file as just used, for least-recently-used eviction."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


async def reserve_waiting(
    space: CacheSpace,
    wanted: int,
    paths: Sequence[Path] = (),
    *,
    pin: Pin | None = None,
    wait_s: float,
    evictor_every_s: float,
    poll_s: float = 0.25,
) -> str:
    """Reserve, waiting up to `wait_s` while an evictor runs (it may free room, and splits
    finishing release theirs); without one, or after the wait, the refusal is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    want_id = uuid.uuid4().hex
    while True:
        try:
            return await asyncio.to_thread(space.reserve, wanted, paths, pin=pin, want_id=want_id)
        except SpaceRefused:
            alive = await asyncio.to_thread(space.evictor_alive, 3 * evictor_every_s + 1.0)
            if not alive or loop.time() >= deadline:
                raise
        await asyncio.sleep(poll_s)
