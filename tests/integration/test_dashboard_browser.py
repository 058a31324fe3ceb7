"""The dashboard as a person uses it, in a real browser (Debian's Chromium, driven by
Playwright): the example servers healthy on the overview, a killed instance turning red and
back, a task cancelled from its page, a trace followed into its waterfall, and signing in.
A screenshot of each page is written to build/screenshots/dashboard/ for a person to look at.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from meshgate.testing.gateway import create_key
from meshgate.testing.redis_server import RedisServer
from tests.gateway import (
    NODE_BIN,
    REPO,
    Gateway,
    fault_server,
    git_repo,
    recording_service,
    run_gateway,
)
from tests.integration.test_cluster import node, wait_until
from tests.integration.test_example_servers import EXAMPLES, NPM_BINS, example_servers

pytestmark = [pytest.mark.timeout(240), pytest.mark.npm]

API = "/api/v1/mesh/v2"
SHOTS = REPO / "build" / "screenshots" / "dashboard"
# Chromium as root in a sandbox of its own, with nothing of Google's to call home to.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `apt-get install chromium` (.ci/run does)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The example configuration as shipped (its six servers), with every request traced."""
    missing = [b for b in NPM_BINS if not (NODE_BIN / b).exists()]
    assert not missing, f"{missing} missing from node_modules: run `make setup` (npm ci) first"
    work = tmp_path_factory.mktemp("dashboard")
    git_repo(work / "repo", "hello\n")
    (work / "files").mkdir()
    policy = (EXAMPLES / "meshgate.toml").read_text()
    env = {"npm_config_offline": "true", "MESHGATE_TRACE_SAMPLE_RATIO": "0"}
    servers = example_servers(work / "repo", work / "files")
    with run_gateway(work, servers, policy, env=env) as gw:
        deadline = time.monotonic() + 120
        while not all(
            s["state"] == "healthy" for s in gw.get("/api/v1/mcp/servers").json()["items"]
        ):
            assert time.monotonic() < deadline, "the example servers never all became healthy"
            time.sleep(0.2)
        yield gw


def test_the_overview_shows_the_six_example_servers_healthy(example: Gateway, page: Page) -> None:
    page.goto(f"{example.url}/ui/")
    sections = page.locator("section.svc[data-service]")
    expect(sections).to_have_count(6)
    for name in ("time", "git", "everything", "memory", "filesystem", "sequential-thinking"):
        header = page.locator(f'section.svc[data-service="{name}"] > header')
        expect(header.locator(".badge")).to_have_text("●healthy")
    expect(page.locator("#live")).to_contain_text("Live")
    # The words are there for whoever cannot tell the colours apart, and for screen readers.
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Overview")
    shot(page, "overview")
    # Found by name as it is typed; the filter holds while the page updates itself.
    page.get_by_label("Service name contains").type("thinking")
    expect(sections).to_have_count(1)
    for _ in range(2):  # two more readings of the gateway later: still filtered, focused
        live = page.locator("#live").inner_text()
        expect(page.locator("#live")).not_to_have_text(live)
    expect(sections).to_have_count(1)
    expect(page.get_by_label("Service name contains")).to_be_focused()
    page.get_by_label("Service name contains").fill("")
    expect(sections).to_have_count(6)


def test_a_killed_instance_turns_red_then_green(example: Gateway, page: Page) -> None:
    page.goto(f"{example.url}/ui/")
    row = page.locator('tr[data-instance="time-1"]')
    expect(row.locator("td.state .badge")).to_have_attribute("data-state", "healthy")
    # Every state the row shows, as the page draws it (a redraw replaces the row).
    page.evaluate(
        """() => {
          window.seen = [];
          const note = () => {
            const b = document.querySelector('tr[data-instance="time-1"] td.state .badge');
            if (b) window.seen.push([b.dataset.state, performance.now()]);
          };
          new MutationObserver(note).observe(document.getElementById("view"),
                                             {childList: true, subtree: true});
        }"""
    )
    pid = example.instances("time")[0]["pid"]
    killed_at = page.evaluate("performance.now()")
    os.kill(pid, signal.SIGKILL)
    # Red within two seconds of the kill (the page's own clock; the timeline on failure).
    red = row.locator("td.state .badge.bad")
    expect(red).to_be_visible(timeout=10_000)
    shot(page, "overview-instance-killed")
    seen: list[list[Any]] = page.evaluate("window.seen")
    first_red = next(
        t for state, t in seen if state in ("stopped", "restarting", "restarted", "failed")
    )
    timeline = [(state, round(t - killed_at)) for state, t in seen]
    assert first_red - killed_at <= 2_000, f"states after the kill (state, ms): {timeline}"
    # A badge with its word, not a colour alone.
    assert red.inner_text().split()[-1] in ("stopped", "restarting", "restarted", "failed")
    # And back once the supervisor has replaced it.
    expect(row.locator("td.state .badge")).to_have_attribute(
        "data-state", "healthy", timeout=30_000
    )
    expect(row.locator("td").nth(6)).to_have_text("1")  # its restarts
    assert example.instances("time")[0]["pid"] != pid


def test_a_task_is_cancelled_from_its_page(example: Gateway, page: Page) -> None:
    target = {
        "server": "everything",
        "tool": "trigger-long-running-operation",
        "arguments": {"duration": 60, "steps": 60},
    }
    r = example.http.post(f"{API}/enqueue", json={"target": target, "max_attempts": 1})
    assert r.status_code == 202, r.text
    task = r.json()["task_id"]
    page.goto(f"{example.url}/ui/#/tasks")
    link = page.get_by_role("link", name=task)
    expect(link).to_be_visible()
    shot(page, "tasks")
    link.click()
    expect(page.locator("h1 .badge")).to_have_attribute("data-state", "running", timeout=15_000)
    cancel = page.get_by_role("button", name="Cancel task")
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(page.locator(".notice")).to_have_text("Task cancelled.")
    expect(page.locator("h1 .badge")).to_have_attribute("data-state", "cancelled")
    expect(cancel).to_be_disabled()
    shot(page, "task-cancelled")
    assert example.get(f"{API}/task/{task}").json()["status"] == "cancelled"


def test_a_trace_is_followed_into_its_waterfall(example: Gateway, page: Page) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"  # sampled: recorded
    r = example.call(
        "time", "get_current_time", {"timezone": "UTC"}, headers={"traceparent": traceparent}
    )
    assert r.status_code == 200, r.text
    page.goto(f"{example.url}/ui/#/traces")
    row = page.locator(f'tr[data-trace="{trace_id}"]')
    expect(row).to_be_visible()
    shot(page, "traces")
    row.get_by_role("link").click()
    expect(page).to_have_url(f"{example.url}/ui/#/traces/{trace_id}")
    spans = page.locator("button.span")
    expect(spans.first).to_be_visible()
    assert spans.count() >= 3  # the request, the routed call, its attempt
    names = " ".join(spans.all_inner_texts())
    assert "POST" in names and "time" in names, names
    # A span opens to its attributes, from the keyboard too.
    spans.nth(spans.count() - 1).focus()
    page.keyboard.press("Enter")
    expect(page.locator(".attrs")).to_be_visible()
    expect(page.locator(".attrs")).to_contain_text("time")
    shot(page, "trace-waterfall")


def test_the_topology_page_draws_the_map(example: Gateway, page: Page) -> None:
    page.goto(f"{example.url}/ui/#/topology")
    nodes = page.locator("svg g.node")
    expect(nodes).to_have_count(6)
    expect(page.locator('svg[role="img"]')).to_have_attribute(
        "aria-label", "Dependency map of 6 services and 0 edges"
    )
    shot(page, "topology")


def test_signing_in_with_an_api_key(tmp_path: Path, page: Page) -> None:
    with run_gateway(tmp_path, {"fault": fault_server()}, "[auth]\n") as gw:
        key = create_key(tmp_path / "data", "ops", "--role", "admin")
        page.goto(f"{gw.url}/ui/")
        dialog = page.get_by_role("dialog", name="Sign in to meshgate")
        expect(dialog).to_be_visible()
        shot(page, "sign-in")
        field = page.get_by_label("API key or bearer token")
        field.fill("mg_not_a_key")
        field.press("Enter")
        expect(dialog).to_be_visible()
        expect(page.locator("#signin-error")).to_contain_text("refused")
        page.get_by_label("API key or bearer token").fill(key)
        page.get_by_role("button", name="Sign in").click()
        expect(dialog).to_be_hidden()
        expect(page.locator('section.svc[data-service="fault"] .badge').first).to_be_visible()
        # The key stays with this tab only, and leaves it on signing out.
        stored = page.evaluate("sessionStorage.getItem('meshgate.token')")
        assert stored == key
        assert page.evaluate("localStorage.length") == 0
        page.get_by_role("button", name="Sign out").click()
        expect(dialog).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('meshgate.token')") is None
        assert gw.get(f"{API}/services").status_code == 401  # the page's data needs the key


def test_the_pages_work_from_the_keyboard_and_every_control_has_a_label(
    example: Gateway, page: Page
) -> None:
    page.goto(f"{example.url}/ui/")
    expect(page.locator("section.svc[data-service]")).to_have_count(6)
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    for name in ("Overview", "Topology"):
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text(name)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{example.url}/ui/#/topology")
    expect(page.locator("svg g.node")).to_have_count(6)
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Topology")
    for view in ("tasks", "traces"):
        page.goto(f"{example.url}/ui/#/{view}")
        expect(page.locator("form.toolbar")).to_be_visible()
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll("input, select, button")]
                 .filter((el) => el.offsetParent !== null)
                 .filter((el) => !(el.labels && el.labels.length) && !el.textContent.trim()
                                 && !el.getAttribute("aria-label"))
                 .map((el) => el.outerHTML)"""
        )
        assert not unlabelled, f"{view}: controls without a label: {unlabelled}"
    # The status filter is a labelled select a keyboard can change.
    target = {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}}
    task = example.http.post(f"{API}/enqueue", json={"target": target}).json()["task_id"]
    assert example.get(f"{API}/task/{task}?wait_s=30").json()["status"] == "succeeded"
    page.goto(f"{example.url}/ui/#/tasks")
    status = page.get_by_label("Status")
    status.focus()
    status.select_option("succeeded")
    expect(page.locator(f'tr[data-task="{task}"] .badge')).to_have_attribute(
        "data-state", "succeeded"
    )
    expect(page.locator("tbody .badge:not([data-state=succeeded])")).to_have_count(0)


def test_the_nodes_of_a_cluster_are_listed(
    tmp_path: Path, redis_server: RedisServer, page: Page
) -> None:
    url = redis_server.url
    with node(tmp_path, "gw-a", url, {"fault": fault_server()}) as a:
        with node(tmp_path, "gw-b", url, {"other": fault_server()}) as b:
            wait_until(
                "both nodes see each other", lambda: len(a.get(f"{API}/nodes").json()["items"]) == 2
            )
            page.goto(f"{a.url}/ui/")
            rows = page.locator("tr[data-node]")
            expect(rows).to_have_count(2)
            expect(page.locator('tr[data-node="gw-a"]')).to_contain_text("(this one)")
            expect(page.locator('tr[data-node="gw-b"]')).to_contain_text("reachable")
            expect(page.locator('tr[data-node="gw-b"]')).to_contain_text(
                "other 1/1", timeout=15_000
            )
            shot(page, "overview-cluster")
            # A node that stops leaves: one node is no mesh to list.
            b.process.stop()
            expect(rows).to_have_count(0, timeout=15_000)
            expect(page.locator(".card", has_text="node")).to_contain_text("1")


def test_a_failed_server_shows_why_and_a_role_without_cancel_is_refused(
    tmp_path: Path, page: Page
) -> None:
    policy = '[auth]\n\n[roles.viewer]\nallow = ["mesh:discover", "mesh:tasks.read"]\n'
    servers = {"fault": fault_server(), "broken": fault_server("--exit-immediately", "3")}
    with run_gateway(tmp_path, servers, policy) as gw:
        data = tmp_path / "data"
        admin = {"Authorization": f"Bearer {create_key(data, 'ops', '--role', 'admin')}"}
        viewer = create_key(data, "viewer", "--role", "viewer")
        target = {"server": "fault", "tool": "sleep", "arguments": {"seconds": 60}}
        r = gw.http.post(f"{API}/enqueue", json={"target": target}, headers=admin)
        assert r.status_code == 202, r.text
        task = r.json()["task_id"]
        page.goto(f"{gw.url}/ui/")
        page.get_by_label("API key or bearer token").fill(viewer)
        page.get_by_label("API key or bearer token").press("Enter")
        # The crash loop ends in `failed`, with the server's own last words.
        broken = page.locator('section.svc[data-service="broken"]')
        expect(broken.locator("td.state .badge")).to_have_attribute(
            "data-state", "failed", timeout=30_000
        )
        expect(broken.locator("pre.stderr")).to_contain_text("exiting at once with code 3")
        expect(broken.locator(".error")).to_contain_text("exited during startup")
        shot(page, "overview-server-failed")
        page.get_by_label("Only services with a problem").check()
        expect(page.locator("section.svc[data-service]")).to_have_count(1)
        expect(page.locator("section.svc[data-service]")).to_have_attribute(
            "data-service", "broken"
        )
        page.get_by_label("Only services with a problem").uncheck()
        expect(page.locator("section.svc[data-service]")).to_have_count(2)
        # The viewer may read the task but not cancel it: the page says so, the task runs on.
        page.goto(f"{gw.url}/ui/#/tasks/{task}")
        expect(page.locator("h1 .badge")).to_have_attribute("data-state", "running", timeout=15_000)
        page.get_by_role("button", name="Cancel task").click()
        expect(page.locator(".notice.error")).to_have_text(
            "Refused: your roles do not allow changing this task."
        )
        shot(page, "task-cancel-refused")
        assert gw.get(f"{API}/task/{task}", headers=admin).json()["status"] == "running"
        gw.http.delete(f"{API}/task/{task}", headers=admin)


def test_the_map_of_thirty_services_is_drawn_without_overlaps(tmp_path: Path, page: Page) -> None:
    """Five tiers of services, each calling two of the next; two of the bottom tier down, so
    the services that depend on them are degraded. Every box is drawn apart from every other
    and inside the map; callers sit left of what they call."""
    tiers = [[f"t{t}-s{i}" for i in range(n)] for t, n in enumerate((3, 6, 8, 10, 3))]
    down = {"t3-s0", "t3-s1"}
    with recording_service() as (url, _), run_gateway(tmp_path, {}) as gw:
        for t, tier in enumerate(tiers):
            nxt = tiers[t + 1] if t + 1 < len(tiers) else []
            for i, name in enumerate(tier):
                body = {
                    "name": name,
                    "url": "http://127.0.0.1:9" if name in down else url,
                    "check": {"type": "http", "path": "/", "interval_s": 1, "unhealthy_after": 1},
                    "depends_on": [nxt[i % len(nxt)], nxt[(i + 1) % len(nxt)]] if nxt else [],
                }
                r = gw.http.post(f"{API}/register", json=body)
                assert r.status_code in (200, 201), r.text
        page.goto(f"{gw.url}/ui/#/topology")
        nodes = page.locator("svg g.node")
        expect(nodes).to_have_count(30)
        expect(page.locator('svg g.node.bad[data-service="t3-s0"]')).to_be_visible(timeout=15_000)
        expect(page.locator('svg g.node.warn[data-service="t2-s0"]')).to_be_visible()
        boxes: dict[str, dict[str, float]] = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll("svg g.node")].map((g) =>
                 [g.dataset.service, g.querySelector("rect").getBoundingClientRect().toJSON()]))"""
        )
        svg = page.locator('svg[role="img"]').bounding_box()
        assert svg is not None
        names = sorted(boxes)
        for i, a in enumerate(names):
            ba = boxes[a]
            assert ba["left"] >= svg["x"] - 1 and ba["right"] <= svg["x"] + svg["width"] + 1, a
            for b in names[i + 1 :]:
                bb = boxes[b]
                apart = (
                    ba["right"] <= bb["left"]
                    or bb["right"] <= ba["left"]
                    or ba["bottom"] <= bb["top"]
                    or bb["bottom"] <= ba["top"]
                )
                assert apart, f"{a} and {b} overlap"
        # A tier is one column, left of the tier it calls.
        columns = [{boxes[n]["left"] for n in tier} for tier in tiers]
        assert all(len(c) == 1 for c in columns), columns
        lefts = [boxes[tier[0]]["left"] for tier in tiers]
        assert lefts == sorted(lefts) and len(set(lefts)) == len(tiers), lefts
        shot(page, "topology-30")


def test_markup_in_what_servers_say_is_shown_as_text(tmp_path: Path, page: Page) -> None:
    """A server's answer, a task's arguments and its error are data: markup in them is shown,
    never run or made into elements."""
    attack = '<img src=x id=pwned onerror="window.pwned=1"><script>window.pwned=2</script>'
    with run_gateway(tmp_path, {"fault": fault_server()}) as gw:
        target = {"server": "fault", "tool": "echo", "arguments": {"text": attack}}
        task = gw.http.post(f"{API}/enqueue", json={"target": target}).json()["task_id"]
        assert gw.get(f"{API}/task/{task}?wait_s=30").json()["status"] == "succeeded"
        page.goto(f"{gw.url}/ui/#/tasks/{task}")
        expect(page.locator("pre.json").first).to_contain_text("<img src=x id=pwned")
        assert page.locator("#pwned").count() == 0
        assert page.evaluate("window.pwned") is None
