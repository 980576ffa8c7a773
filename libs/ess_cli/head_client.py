"""The operator commands' view of the head API: one call per operation, and what went wrong
turned into an exit code that scripts can rely on.

- 0: done
- 1: an unexpected failure (a bug: the message says what)
- 2: the command line is wrong (argparse's usage error)
- 3: not found: no request or edge of that name (404)
- 4: refused: no token or an unknown one, a role that may not, a state that does not allow
  it (401, 403, 409, 422)
- 5: unreachable: no answer from the head, or it is unavailable (503, or another 5xx)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import IntEnum
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    UNREACHABLE = 5


class CliSettings(BaseSettings):
    """Where the head is and the token to show it (`ESS_HEAD_URL`, `ESS_TOKEN`); flags win."""

    model_config = SettingsConfigDict(env_prefix="ESS_", extra="ignore", frozen=True)

    head_url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None


class HeadError(Exception):
    """The head refused, or could not be reached; `code` is the exit code it stands for."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


def _exit_for(status: int) -> Exit:
    if status == 404:
        return Exit.NOT_FOUND
    if status == 503 or status >= 500:
        return Exit.UNREACHABLE
    return Exit.REFUSED


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return detail
    if detail:
        return json.dumps(detail)
    return response.reason_phrase or f"HTTP {response.status_code}"


class HeadClient:
    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> HeadClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HeadError(
                Exit.UNREACHABLE, f"the head at {self.url} did not answer: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise HeadError(
                _exit_for(response.status_code),
                f"{method} {path}: HTTP {response.status_code}: {_detail(response)}",
            )
        return response.json()

    def requests(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["status"] = state
        found: list[dict[str, Any]] = self.call("GET", "/v1/requests", params=params)
        return found

    def request(self, request_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", f"/v1/requests/{quote(request_id, safe='')}")
        return found

    def history(self, request_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.call(
            "GET",
            f"/v1/requests/{quote(request_id, safe='')}/events",
            headers={"Accept": "application/json"},
        )
        return found

    def follow(self, request_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The request's Server-Sent Events, as (event, data), until the stream ends."""
        path = f"/v1/requests/{quote(request_id, safe='')}/events"
        try:
            with self.http.stream(
                "GET", path, headers={"Accept": "text/event-stream"}, timeout=None
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise HeadError(
                        _exit_for(response.status_code),
                        f"GET {path}: HTTP {response.status_code}: {_detail(response)}",
                    )
                event, data = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        yield event, json.loads("\n".join(data))
                        event, data = "message", []
        except httpx.HTTPError as exc:
            raise HeadError(
                Exit.UNREACHABLE, f"the head at {self.url} did not answer: {exc}"
            ) from exc

    def edges(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.call("GET", "/v1/edges")
        return found

    def edge_action(self, name: str, action: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("POST", f"/v1/edges/{quote(name, safe='')}/{action}")
        return found

    def enroll_edge(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("POST", f"/v1/edges/{quote(name, safe='')}/enroll")
        return found

    def revoke_edge(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("DELETE", f"/v1/edges/{quote(name, safe='')}/enrollment")
        return found

    def cancel(self, request_id: str, reason: str | None) -> dict[str, Any]:
        body = {"reason": reason} if reason else None
        found: dict[str, Any] = self.call(
            "POST", f"/v1/requests/{quote(request_id, safe='')}/cancel", json=body
        )
        return found

    def retry(self, request_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call(
            "POST", f"/v1/requests/{quote(request_id, safe='')}/retry"
        )
        return found

    def dead_letters(self, request_id: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if request_id:
            params["request_id"] = request_id
        found: list[dict[str, Any]] = self.call("GET", "/v1/dead-letters", params=params)
        return found
