"""The pilots of the scale benchmark: lookups against the head API from a process of their own.

Runs as `python -m benchmarks.scale_load` beside the benchmark, so that the benchmark's own
work (the broker's handlers in its event loop) never delays a lookup's send. It reads one
command per line on stdin and answers each with one JSON line on stdout:

- `{"open": RATE, "seconds": S}`: lookups sent at RATE per second (open loop: each at its
  scheduled time whatever the earlier ones did, its latency counted from that time; past
  `MAX_IN_FLIGHT` unanswered it waits for answers, and the wait counts against the next), until
  `stop` is read or S seconds have passed;
- `{"closed": N, "seconds": S}`: N lookups in flight (each client sends its next one when its
  answer came), until `stop` or S seconds;
- `stop`: ends the running phase (answered with the phase's result line);
- `quit` or the end of stdin: exits.

A phase's result: requests answered, errors (non-200 or transport), unfinished (open loop:
not answered 5 s after the phase), seconds, p50/p99/max latency in ms. Each lookup asks a
random range of a random file of the fill that retention does not delete, with the pilot
token, as `GET /v1/ranges`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass

import aiohttp

from benchmarks.scale_fill import EVENTS_PER_RANGE, SCOPE, fill_lfn

#: Lookups sent and not answered at most, in the open loop: past that it waits for answers.
MAX_IN_FLIGHT = 1024


@dataclass
class PhaseResult:
    done: int
    errors: int
    unfinished: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def throughput(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @classmethod
    def of(
        cls, latencies: list[float], errors: int, unfinished: int, seconds: float
    ) -> PhaseResult:
        ordered = sorted(latencies)

        def at(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else -1.0

        return cls(len(ordered), errors, unfinished, seconds, at(0.5), at(0.99), at(1.0))


def lookup_urls(
    base: str, first_file: int, files: int, ranges_per_file: int, n: int, seed: int
) -> list[str]:
    rng = random.Random(seed)
    urls = []
    for _ in range(n):
        file_index = rng.randrange(first_file, files)
        first = rng.randrange(ranges_per_file) * EVENTS_PER_RANGE + 1
        start = first + rng.randrange(EVENTS_PER_RANGE // 2)
        last = start + rng.randrange(EVENTS_PER_RANGE // 2)
        urls.append(
            f"{base}/v1/ranges?scope={SCOPE}&LFN={fill_lfn(file_index)}"
            f"&startEvent={start}&lastEvent={last}"
        )
    return urls


class Pilots:
    def __init__(self, session: aiohttp.ClientSession, urls: list[str], token: str) -> None:
        self.session, self.urls = session, urls
        self.headers = {"Authorization": f"Bearer {token}"}
        self.latencies: list[float] = []
        self.errors = 0
        self._next = 0

    def url(self) -> str:
        self._next += 1
        return self.urls[self._next % len(self.urls)]

    async def one(self, t0: float) -> None:
        try:
            async with self.session.get(self.url(), headers=self.headers) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            self.latencies.append((time.perf_counter() - t0) * 1000)
        else:
            self.errors += 1

    async def open_loop(self, rate: float, seconds: float, stop: asyncio.Event) -> PhaseResult:
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.02
        i = 0
        while not stop.is_set() and i < rate * seconds:
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if len(tasks) >= MAX_IN_FLIGHT:
                # Behind by that many: wait for answers (the wait counts against the next
                # lookups, whose latency runs from their scheduled time).
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # behind: still let answers and `stop` in
            task = asyncio.create_task(self.one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        elapsed = time.perf_counter() - start
        unfinished = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            unfinished = len(pending)
        return PhaseResult.of(self.latencies, self.errors, unfinished, elapsed)

    async def closed_loop(
        self, connections: int, seconds: float, stop: asyncio.Event
    ) -> PhaseResult:
        end = time.perf_counter() + seconds

        async def client() -> None:
            while not stop.is_set() and time.perf_counter() < end:
                await self.one(time.perf_counter())

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        return PhaseResult.of(self.latencies, self.errors, 0, time.perf_counter() - started)


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line.strip())
    loop.call_soon_threadsafe(queue.put_nowait, "quit")


async def serve(base: str, token: str, first_file: int, files: int, ranges_per_file: int) -> None:
    urls = lookup_urls(base, first_file, files, ranges_per_file, 50_000, seed=20_261_206)
    commands: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_stdin_lines, args=(loop, commands), daemon=True).start()
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        while True:
            line = await commands.get()
            if line in ("quit", ""):
                return
            if line == "stop":
                continue  # no phase running: nothing to stop
            command = json.loads(line)
            pilots = Pilots(session, urls, token)
            stop = asyncio.Event()
            if "open" in command:
                phase = asyncio.create_task(
                    pilots.open_loop(float(command["open"]), float(command["seconds"]), stop)
                )
            else:
                phase = asyncio.create_task(
                    pilots.closed_loop(int(command["closed"]), float(command["seconds"]), stop)
                )
            reader = asyncio.create_task(commands.get())
            done, _ = await asyncio.wait({phase, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                stop.set()
                if reader.result() == "quit":
                    phase.cancel()
                    return
            else:
                reader.cancel()
            result = await phase
            print(json.dumps(asdict(result)), flush=True)


def main() -> None:
    base, token, first_file, files, ranges_per_file = sys.argv[1:6]
    asyncio.run(serve(base, token, int(first_file), int(files), int(ranges_per_file)))


if __name__ == "__main__":
    main()


class LoadProcess:
    """The benchmark's handle on a `scale_load` process: start a phase, stop it, read its
    result."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls, base: str, token: str, first_file: int, files: int, ranges_per_file: int
    ) -> LoadProcess:
        from benchmarks.lookup_bench import PROJECT_ROOT

        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.scale_load",
            base,
            token,
            str(first_file),
            str(files),
            str(ranges_per_file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=PROJECT_ROOT,
        )
        return cls(process)

    async def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def begin(
        self, *, rate: float | None = None, connections: int | None = None, seconds: float = 600.0
    ) -> None:
        command = {"open": rate} if rate is not None else {"closed": connections}
        await self._send(json.dumps({**command, "seconds": seconds}))

    async def end(self) -> PhaseResult:
        await self._send("stop")
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the load process exited")
        return PhaseResult(**json.loads(line))

    async def run(
        self, seconds: float, *, rate: float | None = None, connections: int | None = None
    ) -> PhaseResult:
        """A phase of a fixed length."""
        await self.begin(rate=rate, connections=connections, seconds=seconds)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), seconds + 60)
        if not line:
            raise RuntimeError("the load process exited")
        return PhaseResult(**json.loads(line))

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                await self._send("quit")
                await asyncio.wait_for(self.process.wait(), 10)
            except (TimeoutError, ConnectionError):
                self.process.kill()
                await self.process.wait()
