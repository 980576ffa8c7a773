"""Files that are not sound ROOT files raise ``CorruptFile`` saying how: empty, truncated (inside
the header, inside a basket, without its tail), not ROOT at all, or with random bytes over its
last part. Nothing is left in the output directory."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ess_split.errors import CorruptFile
from ess_split.split import split_root_file
from tests.split.faithful import data


def _random_tail(fraction: float) -> Callable[[bytes], bytes]:
    def damage(content: bytes) -> bytes:
        size = max(1, int(len(content) * fraction))
        noise = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
        return content[:-size] + noise

    return damage


#: (what is done to the file, what the error must say: a regular expression)
DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "zero bytes": (lambda content: b"", r"^it is empty \(0 bytes\)$"),
    "inside the header": (lambda content: content[:50], r"^its header does not read"),
    "after the header": (lambda content: content[:300], r"^it is truncated: 300 bytes of the \d+"),
    "inside a basket": (lambda content: content[: len(content) // 2], r"^it is truncated: "),
    "without its tail": (lambda content: content[:-100], r"^it is truncated: "),
    "not ROOT": (
        lambda content: b"PK\x03\x04" + content[4:],
        r"^it is not a ROOT file \(it starts with b'PK",
    ),
    "random last 2%": (_random_tail(0.02), r"do(es)? not (read|inflate)"),
    "random last 10%": (_random_tail(0.10), r"do(es)? not (read|inflate)"),
    "random last 30%": (_random_tail(0.30), r"do(es)? not (read|inflate)"),
}


@pytest.mark.parametrize("source", ["vectors-zlib.root", "uproot-HZZ-lzma.root"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_is_corrupt_and_says_how(
    source: str, damage: str, own_files: Path, tmp_path: Path
) -> None:
    original = own_files / source if (own_files / source).exists() else data(source)
    damaged = tmp_path / source
    change, says = DAMAGE[damage]
    damaged.write_bytes(change(original.read_bytes()))
    out_dir = tmp_path / "out"
    with pytest.raises(CorruptFile) as raised:
        split_root_file(damaged, out_dir, 137)
    assert raised.value.path == str(damaged)
    assert re.search(says, raised.value.how), raised.value.how
    assert str(raised.value).startswith(f"{damaged}: corrupt ROOT file: ")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_a_missing_file_is_not_called_corrupt(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        split_root_file(tmp_path / "missing.root", tmp_path / "out", 10)
