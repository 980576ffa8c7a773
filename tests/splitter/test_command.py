"""The command-template splitter, run with real commands (small Python scripts)."""

from __future__ import annotations

import functools
import json
import shlex
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import uproot
from pydantic import ValidationError

from ess_common.settings import EdgeSettings
from ess_split.split import plan_ranges
from ess_splitter.command import (
    OUTPUT_TAIL_BYTES,
    CommandFailed,
    CommandTemplate,
    split_with_command,
)
from ess_splitter.strategy import SplitOptions, split_file
from tests.helpers import eventually
from tests.split.faithful import data

PYTHON = shlex.quote(sys.executable)


def script(tmp_path: Path, name: str, body: str) -> str:
    """Write a Python script and return the start of a command line that runs it."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return f"{PYTHON} {shlex.quote(str(path))}"


COPY_ENTRIES = """
    import sys
    import uproot

    source, output, skip, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with uproot.open(source) as f:
        entries = f["foriter"].arrays(library="np", entry_start=skip, entry_stop=skip + n)
    with uproot.recreate(output) as out:
        out["foriter"] = entries
"""

ECHO_ARGUMENTS = """
    import json, os, sys

    seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), "cwd_files": os.listdir()}
    with open(sys.argv[2], "w") as stream:
        json.dump(seen, stream)
"""


async def test_command_copies_the_requested_entries(tmp_path: Path) -> None:
    command = script(tmp_path, "copy_entries.py", COPY_ENTRIES)
    template = CommandTemplate.parse(f"{command} {{input}} {{output}} {{skip_events}} {{n_events}}")
    source = data("uproot-foriter.root")
    out_dir = tmp_path / "out"
    ranges = plan_ranges(46, 20)
    written = await split_with_command(template, source, out_dir, ranges, timeout_s=60)
    assert [(r.first_event, r.last_event) for r in written] == ranges
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "range.000000001-000000020.root",
        "range.000000021-000000040.root",
        "range.000000041-000000046.root",
    ]
    with uproot.open(source) as original:
        expected = original["foriter"]["data"].array(library="np")
    for range_file in written:
        content = range_file.path.read_bytes()
        assert (range_file.size, range_file.adler32) == (
            len(content),
            f"{zlib.adler32(content):08x}",
        )
        with uproot.open(range_file.path) as piece:
            np.testing.assert_array_equal(
                piece["foriter"]["data"].array(library="np"),
                expected[range_file.first_event - 1 : range_file.last_event],
            )


async def test_placeholders_are_substituted_per_argument(tmp_path: Path) -> None:
    command = script(tmp_path, "echo.py", ECHO_ARGUMENTS)
    template = CommandTemplate.parse(
        f"{command} {{input}} {{output}} --first={{first_event}} --last={{last_event}} "
        "--skip={skip_events} -n {n_events} 'two words; $HOME `x`' {{literal}}"
    )
    source = tmp_path / "input with space.root"
    source.write_bytes(b"not looked at")
    written = await split_with_command(
        template, source, tmp_path / "out", [(1, 7), (8, 14), (15, 15)], timeout_s=30
    )
    seen = [json.loads(r.path.read_text()) for r in written]
    assert [s["argv"][2:] for s in seen] == [
        ["--first=1", "--last=7", "--skip=0", "-n", "7", "two words; $HOME `x`", "{literal}"],
        ["--first=8", "--last=14", "--skip=7", "-n", "7", "two words; $HOME `x`", "{literal}"],
        ["--first=15", "--last=15", "--skip=14", "-n", "1", "two words; $HOME `x`", "{literal}"],
    ]
    assert {s["argv"][0] for s in seen} == {str(source)}
    # Each run writes in a working directory of its own, emptied afterwards.
    for s, range_file in zip(seen, written, strict=True):
        assert Path(s["argv"][1]).name == range_file.path.name
        assert Path(s["cwd"]).parent == tmp_path / "out"
        assert s["cwd_files"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        r.path.name for r in written
    )


async def test_service_options_use_the_command_instead_of_uproot(tmp_path: Path) -> None:
    command = script(tmp_path, "echo.py", ECHO_ARGUMENTS)
    settings = EdgeSettings(split_command=f"{command} {{input}} {{output}}")
    options = SplitOptions.from_settings(settings)
    result = await split_file(data("uproot-HZZ.root"), tmp_path / "out", 1000, 2421, options)
    assert [(r.first_event, r.last_event) for r in result.ranges] == [
        (1, 1000),
        (1001, 2000),
        (2001, 2421),
    ]
    assert all(
        json.loads(r.path.read_text())["argv"][0].endswith("HZZ.root") for r in result.ranges
    )


async def test_nonzero_exit_names_the_range_and_keeps_the_tail_of_stderr(tmp_path: Path) -> None:
    command = script(
        tmp_path,
        "fail.py",
        """
        import sys
        sys.stderr.write("noise " * 2000)
        sys.stderr.write("the real reason")
        sys.exit(3)
        """,
    )
    out_dir = tmp_path / "out"
    with pytest.raises(CommandFailed) as raised:
        await split_with_command(
            CommandTemplate.parse(f"{command} {{input}} {{output}}"),
            data("uproot-foriter.root"),
            out_dir,
            [(1, 5), (6, 10)],
            timeout_s=30,
        )
    error = raised.value
    assert (error.first_event, error.last_event) == (1, 5)
    assert "events 1-5 exited with status 3" in str(error)
    assert error.output.endswith("the real reason")
    assert len(error.output) <= OUTPUT_TAIL_BYTES
    assert list(out_dir.iterdir()) == []


async def test_failure_of_a_later_range_removes_the_earlier_ones(tmp_path: Path) -> None:
    command = script(
        tmp_path,
        "second.py",
        """
        import sys
        if int(sys.argv[3]) > 1:
            print("cannot seek past event 1")
            sys.exit(1)
        open(sys.argv[2], "w").write("range")
        """,
    )
    out_dir = tmp_path / "out"
    with pytest.raises(CommandFailed, match="events 4-6 exited with status 1") as raised:
        await split_with_command(
            CommandTemplate.parse(f"{command} {{input}} {{output}} {{first_event}}"),
            data("uproot-foriter.root"),
            out_dir,
            [(1, 3), (4, 6)],
            timeout_s=30,
        )
    # Nothing on stderr: the tail of stdout stands in.
    assert raised.value.output == "cannot seek past event 1"
    assert list(out_dir.iterdir()) == []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    # A killed child of a container's init may linger as a zombie: it runs no more.
    return state == "Z"


async def test_timeout_kills_the_command_and_what_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = script(
        tmp_path,
        "hang.py",
        f"""
        import os, signal, subprocess, sys
        # Both hang until killed.
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        with open({str(pids)!r}, "w") as stream:
            stream.write(f"{{os.getpid()}} {{child.pid}}")
        print("started", file=sys.stderr, flush=True)
        signal.pause()
        """,
    )
    out_dir = tmp_path / "out"
    with pytest.raises(CommandFailed, match="timed out after 2 s and was killed") as raised:
        await split_with_command(
            CommandTemplate.parse(f"{command} {{input}} {{output}}"),
            data("uproot-foriter.root"),
            out_dir,
            [(1, 46)],
            timeout_s=2,
        )
    assert raised.value.output == "started"
    for pid in map(int, pids.read_text().split()):
        await eventually(functools.partial(_gone, pid), message=f"process {pid} still runs")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("pass", "exited 0 but wrote no file range.000000001-000000046.root"),
        ("open(__import__('sys').argv[2], 'w').close()", "exited 0 but left"),
    ],
)
async def test_missing_or_empty_output_fails(body: str, complaint: str, tmp_path: Path) -> None:
    command = script(tmp_path, "lazy.py", body)
    out_dir = tmp_path / "out"
    with pytest.raises(CommandFailed, match=complaint):
        await split_with_command(
            CommandTemplate.parse(f"{command} {{input}} {{output}}"),
            data("uproot-foriter.root"),
            out_dir,
            [(1, 46)],
            timeout_s=30,
        )
    assert list(out_dir.iterdir()) == []


async def test_missing_executable_fails(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="could not start '/nonexistent/splitter'"):
        await split_with_command(
            CommandTemplate.parse("/nonexistent/splitter {input} {output}"),
            data("uproot-foriter.root"),
            tmp_path / "out",
            [(1, 46)],
            timeout_s=30,
        )
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "template",
    [
        "",
        "   ",
        "tool {input}",
        "tool {output}",
        "tool {input} {output} {bogus}",
        "tool {input} {output} {n_events:03d}",
        "tool {input} {output} {n_events!r}",
        "tool {input} {output} {}",
        "tool {input} {output} {input.real}",
        "tool '{input} {output}",
        "tool {input} {output} {",
    ],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="split command"):
        CommandTemplate.parse(template)
    if template.strip():
        # The settings refuse the same at load; an empty setting means "no command".
        with pytest.raises(ValidationError, match="ESS_SPLIT_COMMAND"):
            EdgeSettings(split_command=template)
    else:
        assert EdgeSettings(split_command=template).split_command is None


def test_template_renders_every_placeholder() -> None:
    template = CommandTemplate.parse(
        "run --in={input} --out {output} {first_event}:{last_event} "
        "skip={skip_events} n={n_events} {{x}}"
    )
    assert template.render(Path("/c/in.root"), Path("/o/r.root"), 11, 20) == [
        "run",
        "--in=/c/in.root",
        "--out",
        "/o/r.root",
        "11:20",
        "skip=10",
        "n=10",
        "{x}",
    ]


def test_timeout_setting_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        EdgeSettings(split_command_timeout_s=0)
    assert EdgeSettings(split_command_timeout_s=1.5).split_command_timeout_s == 1.5
