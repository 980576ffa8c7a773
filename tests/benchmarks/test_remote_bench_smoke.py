"""The remote-split benchmark runs end to end against the real S3 server on a tiny input and
writes its page (no timings checked)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchmarks.remote_bench import main
from tests.helpers import S3Settings

if TYPE_CHECKING:
    from tests.conftest import XRootDServer


async def test_tiny_run_prints_and_writes_the_table(
    s3_settings: S3Settings,
    xrootd: XRootDServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = f"ess-bench-{uuid.uuid4().hex[:12]}"
    for name, value in s3_settings.env(bucket).items():
        monkeypatch.setenv(name, value)
    page = tmp_path / "remote-split.md"
    argv = ["--size-mb", "2", "--workdir", str(tmp_path / "work"), "--repeat", "1"]
    argv += ["--events", "100", "--bucket", bucket, "--out", str(page)]
    argv += ["--xrootd-url", xrootd.url, "--xrootd-dir", str(xrootd.directory)]
    try:
        # main() runs its own event loop, so it gets a thread of its own.
        assert await asyncio.to_thread(main, argv) == 0
    finally:
        store = s3_settings.store(bucket, create_bucket=False)
        await store.start()
        try:
            for key in ("ntuple-2MB.root", "ntuple-2MB-baskets-1000.root"):
                await store.delete(key)
            await store.client.delete_bucket(Bucket=bucket)
        finally:
            await store.close()
            shutil.rmtree(xrootd.directory / bucket, ignore_errors=True)

    printed = capsys.readouterr().out
    text = page.read_text()
    for content in (printed, text):
        assert content.count("| middle |") == 2
        assert content.count("| middle, from XRootD |") == 2
        assert content.count("| middle + ½ basket |") == 2
    assert "### Source baskets of 20,000 events (`ntuple-2MB.root`)" in text
    assert "### Source baskets of 1,000 events (`ntuple-2MB-baskets-1000.root`)" in text
    assert "## What limits it" in text
    # Both layouts stay in the work directory for the next run to reuse.
    cached = sorted(p.name for p in (tmp_path / "work").glob("ntuple-2MB*.root"))
    assert cached == ["ntuple-2MB-baskets-1000.root", "ntuple-2MB.root"]
