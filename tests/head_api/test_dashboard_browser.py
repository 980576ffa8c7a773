"""The web dashboard in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium,
installed by scripts/ensure-services.sh; no browser is downloaded) against a running
deployment with tokens on. The operator gives the admin token; a request appears on the page
and reaches ready without a reload, followed through its Server-Sent Events; an edge drained
from the page is draining; a dead letter shows with its reason. A screenshot of each page is
written to `$ESS_SCREENSHOTS` (docs/screenshots/ for the README), else next to the test's
files.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.cluster import SlowFiles
from tests.e2e.deployment import ADMIN_TOKEN, Deployment
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Seconds each download of the slow source waits: the request stays open long enough to be
#: watched on its page.
SLOW_S = 10.0


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: run `bash scripts/ensure-services.sh` (Debian's chromium)",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def screenshots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("ESS_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


async def shoot(page: Page, directory: Path, name: str) -> None:
    path = directory / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_dashboard_follows_a_request_and_drains_an_edge(
    deployment: Deployment, browser: Browser, tmp_path: Path
) -> None:
    shots = screenshots(tmp_path)
    slow = SlowFiles(deployment.dataset[0].path.parent, delay_s=SLOW_S)
    await slow.start()
    try:
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        await page.goto(f"{deployment.head_url}/")
        # Tokens are on: without one the page says what it needs.
        await expect(page.locator("#notice")).to_contain_text("token")
        await page.fill("#token", ADMIN_TOKEN)
        await page.click("#token-form button")
        await expect(page.locator("#role")).to_have_text("role: admin")
        await page.evaluate("window.loadedOnce = true")

        # A request made elsewhere (PanDA) appears and is followed to ready on its own page.
        created = await deployment.submit(
            deployment.dataset[:2], source=lambda f: slow.url(f.path.name)
        )
        row = page.locator(f'tr[data-request="{created["id"]}"]')
        await expect(row).to_be_visible(timeout=15_000)
        await row.locator("a").click()
        await expect(page.locator("h1")).to_contain_text(created["id"])
        await expect(page.locator("#files tbody tr")).to_have_count(2)
        state = page.locator(".cards [data-state]").first
        assert await state.get_attribute("data-state") != "ready", "ready before it was watched"
        await expect(state).to_have_attribute("data-state", "ready", timeout=60_000)
        view = (await deployment.http.get(f"/v1/requests/{created['id']}")).json()
        await expect(page.locator("#ranges-count")).to_have_text(str(view["ranges"]))
        await expect(page.locator("#history [data-state=notified]")).to_be_visible(timeout=60_000)
        for kind in ("received", "assigned", "cached", "split", "ready"):
            assert await page.locator(f"#history [data-state={kind}]").count() >= 1, kind
        assert await page.evaluate("window.loadedOnce === true"), "the page was reloaded"
        await shoot(page, shots, "request")

        await page.click("nav a[data-page=requests]")
        await expect(row.locator("[data-state=ready]")).to_be_visible()
        await shoot(page, shots, "requests")

        # Draining an edge from the page takes effect at the head.
        await page.click("nav a[data-page=edges]")
        edge_row = page.locator('tr[data-edge="edge-a"]')
        await expect(edge_row.locator("[data-state=alive]")).to_be_visible(timeout=15_000)
        await edge_row.get_by_role("button", name="Drain").click()
        await expect(edge_row.locator("[data-state=draining]")).to_be_visible(timeout=10_000)
        edge = (await deployment.http.get("/v1/edges/edge-a")).json()
        assert edge["status"] == "draining"
        await shoot(page, shots, "edges")

        # A message ESS cannot take is shown with its reason.
        await deployment.publish("request.created", b'{"dataset": "not:a request"}')

        async def recorded() -> bool:
            return bool((await deployment.http.get("/v1/dead-letters")).json())

        await eventually(recorded, timeout=30, message="the dead letter is recorded")
        await page.click("nav a[data-page=dead-letters]")
        await expect(page.locator("#dead-letters")).to_contain_text("invalid message")
        await shoot(page, shots, "dead-letters")
        assert await page.evaluate("window.loadedOnce === true"), "the page was reloaded"
    finally:
        await slow.stop()
