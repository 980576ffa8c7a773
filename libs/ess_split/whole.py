"""A file delivered whole: the source itself, byte for byte, as the one range 1..N.

For files the engine does not cut (``UnsplittableFile``), when the operator prefers a whole file
to a failure. A hard link when the output shares the input's file system (the input is never
written to), a copy otherwise; the range file appears under its final name only when complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ess_split.split import RangeFile, check_name_prefix, file_adler32, range_file_name

__all__ = ["deliver_whole"]


def deliver_whole(
    source: Path, out_dir: Path, n_events: int, name_prefix: str = "range"
) -> RangeFile:
    """``source`` itself as the one range file of events 1..n_events."""
    check_name_prefix(name_prefix)
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / range_file_name(name_prefix, 1, n_events)
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
    try:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
        size, adler32 = file_adler32(temp)
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return RangeFile(1, n_events, final, size, adler32)
