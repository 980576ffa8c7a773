"""Fixtures of the split engine's tests: ROOT as the judge, and the files they split.

- ``root_judge``: one ROOT process for the whole session (``judge.RootJudge``), closed at the
  end;
- ``coffea_samples``: the ``tests/samples`` folder of coffea 2024.11.0 that
  ``scripts/fetch-samples.sh`` caches and ``scripts/test.sh`` names in
  ``ESS_TEST_COFFEA_SAMPLES``; the run fails without it;
- ``own_files``: the tests' own ROOT files, written once per session by ROOT itself
  (``root_writer.py``, in a subprocess, since ROOT warns on import and pytest turns warnings
  into errors).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.split.judge import RootJudge

_WRITER = Path(__file__).with_name("root_writer.py")


@pytest.fixture(scope="session")
def root_judge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootJudge]:
    judge = RootJudge(tmp_path_factory.mktemp("judge") / "root.log")
    try:
        yield judge
    finally:
        judge.close()


@pytest.fixture(scope="session")
def coffea_samples() -> Path:
    folder = os.environ.get("ESS_TEST_COFFEA_SAMPLES")
    if not folder or not Path(folder, "nano_dy.root").is_file():
        pytest.fail(
            "ESS_TEST_COFFEA_SAMPLES must name coffea 2024.11.0's tests/samples folder "
            f"(got {folder!r}): run `bash scripts/fetch-samples.sh`, or scripts/test.sh"
        )
    return Path(folder)


@pytest.fixture(scope="session")
def own_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of ``root_writer.py``'s files (``vectors-zlib.root``, ``index.root``...)."""
    folder = tmp_path_factory.mktemp("own")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(_WRITER), str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"root_writer.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return folder
