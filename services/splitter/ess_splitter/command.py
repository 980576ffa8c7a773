"""Cut a file into event-range files with an operator's command, one run per range.

For formats that only an experiment's framework can write (the original design ran the
experiment's own tool per range). Consumes a command template such as
``skim.sh --in {input} --out {output} --skip {skip_events} --max {n_events}``, a local input
file and the planned ranges. The template is split like a shell would (``shlex``) but never run
through a shell: placeholders are replaced inside each argument, so file names with spaces or
quotes stay one argument. Placeholders:

- ``{input}``: the cached input file; ``{output}``: the range file the command must write;
- ``{first_event}`` and ``{last_event}``: the range's 1-based inclusive positions in the input;
- ``{skip_events}``: events to skip first (``first_event - 1``); ``{n_events}``: events to keep.

Each run gets its own empty working directory (frameworks leave catalogues and logs there), a
timeout after which it and everything it started are killed, and the tail of its stderr (of its
stdout if stderr is empty). Produces a ``RangeFile`` per range; a non-zero exit, a timeout or a
missing or empty output raises ``CommandFailed`` naming the range, and every range file of the
call is removed again, so nothing half-written is left to upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import string
from dataclasses import dataclass
from pathlib import Path

from ess_split.errors import SplitError
from ess_split.split import RangeFile, check_name_prefix, file_adler32, range_file_name

__all__ = ["PLACEHOLDERS", "CommandFailed", "CommandTemplate", "split_with_command"]

PLACEHOLDERS = frozenset(
    {"input", "output", "first_event", "last_event", "skip_events", "n_events"}
)
_REQUIRED = ("input", "output")

#: Bytes of the command's output kept for the error message.
OUTPUT_TAIL_BYTES = 2048

# After the command exits, how long its output pipes may stay open (held by children it left
# behind) before those children are killed.
_PIPE_GRACE_S = 5.0


class CommandFailed(SplitError):
    """The split command failed for one range; the message names the range and its output."""

    def __init__(self, first_event: int, last_event: int, what: str, output: str) -> None:
        self.first_event = first_event
        self.last_event = last_event
        self.output = output
        detail = f"; its output ends with: {output}" if output else "; it printed nothing"
        super().__init__(f"split command for events {first_event}-{last_event} {what}{detail}")


@dataclass(frozen=True)
class CommandTemplate:
    """A parsed, checked command template."""

    argv: tuple[str, ...]

    @classmethod
    def parse(cls, template: str) -> CommandTemplate:
        """Check ``template`` (placeholders known, ``{input}`` and ``{output}`` used) or raise."""
        try:
            argv = tuple(shlex.split(template))
        except ValueError as exc:
            raise ValueError(f"split command {template!r} does not parse: {exc}") from exc
        if not argv:
            raise ValueError("split command is empty")
        used: set[str] = set()
        for argument in argv:
            try:
                fields = list(string.Formatter().parse(argument))
            except ValueError as exc:
                raise ValueError(f"split command argument {argument!r}: {exc}") from exc
            for _, name, spec, conversion in fields:
                if name is None:
                    continue
                if name not in PLACEHOLDERS or spec or conversion:
                    raise ValueError(
                        f"split command argument {argument!r}: unknown placeholder "
                        f"{{{name}}}; known are {', '.join(sorted(PLACEHOLDERS))} "
                        "(write {{ and }} for literal braces)"
                    )
                used.add(name)
        missing = [name for name in _REQUIRED if name not in used]
        if missing:
            raise ValueError(
                f"split command {template!r} must use {', '.join('{' + m + '}' for m in missing)}"
            )
        return cls(argv)

    def render(self, source: Path, output: Path, first: int, last: int) -> list[str]:
        """The argument vector for the range ``first..last`` (1-based, inclusive)."""
        values = {
            "input": str(source),
            "output": str(output),
            "first_event": str(first),
            "last_event": str(last),
            "skip_events": str(first - 1),
            "n_events": str(last - first + 1),
        }
        return [argument.format_map(values) for argument in self.argv]


async def split_with_command(
    template: CommandTemplate,
    source: Path,
    out_dir: Path,
    ranges: list[tuple[int, int]],
    *,
    timeout_s: float,
    name_prefix: str = "range",
) -> list[RangeFile]:
    """Run ``template`` once per range, in order, and return the range files it wrote."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    check_name_prefix(name_prefix)
    source = Path(source).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[RangeFile] = []
    try:
        for first, last in ranges:
            written.append(
                await _run_range(template, source, out_dir, first, last, timeout_s, name_prefix)
            )
    except BaseException:
        for range_file in written:
            range_file.path.unlink(missing_ok=True)
        raise
    return written


async def _run_range(
    template: CommandTemplate,
    source: Path,
    out_dir: Path,
    first: int,
    last: int,
    timeout_s: float,
    name_prefix: str,
) -> RangeFile:
    name = range_file_name(name_prefix, first, last)
    work_dir = out_dir / f".cmd.{name}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir()
    # Written inside the working directory and moved out only when complete, so that a file
    # half-written by a failed or killed command never sits among the range files.
    output = work_dir / name
    try:
        argv = template.render(source, output, first, last)
        returncode, tail = await _run(argv, work_dir, timeout_s, first, last)
        if returncode is None:
            raise CommandFailed(
                first, last, f"timed out after {timeout_s:g} s and was killed", tail
            )
        if returncode != 0:
            raise CommandFailed(first, last, f"exited with status {returncode}", tail)
        if not output.is_file():
            raise CommandFailed(first, last, f"exited 0 but wrote no file {output.name}", tail)
        if output.stat().st_size == 0:
            raise CommandFailed(first, last, f"exited 0 but left {output.name} empty", tail)
        final = out_dir / name
        os.replace(output, final)
        try:
            size, adler32 = await asyncio.to_thread(file_adler32, final)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return RangeFile(first, last, final, size, adler32)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


async def _run(
    argv: list[str], cwd: Path, timeout_s: float, first: int, last: int
) -> tuple[int | None, str]:
    """Run ``argv``; its exit status (None if it timed out) and the tail of its output."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so that a timeout also kills what it started.
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandFailed(first, last, f"could not start {argv[0]!r}: {exc}", "") from exc
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = _Tail(), _Tail()
    readers = asyncio.gather(stdout.drain(process.stdout), stderr.drain(process.stderr))
    returncode: int | None = None
    try:
        try:
            returncode = await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            returncode = None
        # Children left behind would keep the pipes open and the edge busy.
        _kill_group(process.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(readers), _PIPE_GRACE_S)
    finally:
        if process.returncode is None:
            _kill_group(process.pid)
            await process.wait()
        readers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await readers
    return returncode, stderr.text() or stdout.text()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Tail:
    """The last ``OUTPUT_TAIL_BYTES`` of a stream, however much it writes."""

    def __init__(self) -> None:
        self._data = bytearray()

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self._data += chunk
            del self._data[:-OUTPUT_TAIL_BYTES]

    def text(self) -> str:
        return self._data.decode("utf-8", errors="replace").strip()
