"""The dashboard: input validation, the simulation-run view, and a real browser on a real cluster.

What this proves: the dashboard refuses bad input with a reason before touching the cluster; it
serves a simulation run's timeline; and, in Debian's headless Chromium driven by Selenium through
chromium-driver, against a real ``LocalCluster`` (ZooKeeper, Overlord and node processes on
loopback): the page lists the shards, a ``set`` typed into the test client followed by a ``get``
shows the value, a drain asks for confirmation before it acts, and a master killed with SIGKILL
appears as a failover in the event log. Nothing is mocked; waits poll the page, never sleep blind.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dimint.real.web.app import BadInput, Dashboard, create_app, parse_command

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ([], "JSON object"),
        ({"command": "flushall", "args": []}, "unknown command"),
        ({"command": "get", "args": "k"}, "list"),
        ({"command": "get", "args": [1]}, "must be a string"),
        ({"command": "get", "args": ["a", "b"]}, "argument"),
        ({"command": "incr", "args": ["k", "one"]}, "integer"),
        ({"command": "set", "args": ["k", "v"], "consistency": "weak"}, "reads only"),
        ({"command": "get", "args": ["k"], "consistency": "eventual"}, "strong"),
        ({"command": "get", "args": ["k"], "extra": 1}, "unknown field"),
        ({"command": "get", "args": ["x" * (2 << 20)]}, "larger than"),
        ({"command": "set", "args": ["k", "v", "", "maybe"]}, "argument 3"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(payload: Any, fragment: str) -> None:
    with pytest.raises(BadInput, match=fragment):
        parse_command(payload)


def test_form_arguments_are_parsed_by_kind() -> None:
    assert parse_command({"command": "incr", "args": ["k", " 5 "]}) == ("incr", ("k", 5), "strong")
    assert parse_command({"command": "set", "args": ["k", "v", "", "nx"]}) == (
        "set",
        ("k", "v", None, "nx"),
        "strong",
    )
    assert parse_command({"command": "set", "args": ["k", "v", "1500"]})[1] == ("k", "v", 1500)
    assert parse_command({"command": "get", "args": ["k"], "consistency": "weak"})[2] == "weak"


def test_http_layer_answers_bad_input_with_400_and_json() -> None:
    app = create_app()
    client = app.test_client()
    reply = client.post("/api/command", data="not json", content_type="text/plain")
    assert reply.status_code == 400 and "JSON body" in reply.get_json()["reason"]
    reply = client.post("/api/command", json={"command": "nope"})
    assert reply.status_code == 400 and reply.get_json()["error"] == "BAD_INPUT"
    assert client.get("/api/status").status_code == 400  # no cluster configured: said, not crashed
    assert client.get("/run").status_code == 400
    assert reply.headers["X-Frame-Options"] == "DENY"


def test_admin_actions_need_a_valid_single_use_confirmation() -> None:
    dashboard = Dashboard(client=object())
    for payload, fragment in [
        ({"action": "reboot"}, "unknown admin action"),
        ({"action": "remove_shard"}, "shard_id"),
        ({"action": "remove_shard", "shard_id": -1}, "shard_id"),
        ({"action": "add_shard", "shard_id": 1}, "no shard_id"),
        ({"confirm": "forged"}, "unknown or expired"),
        ({"action": "add_shard", "sneaky": True}, "admin requests"),
    ]:
        with pytest.raises(BadInput, match=fragment):
            dashboard.admin(payload)
    ask = dashboard.admin({"action": "remove_shard", "shard_id": "2"})
    assert ask["params"] == {"shard_id": 2} and "drain shard 2" in ask["message"] and ask["confirm"]


def test_confirmations_expire() -> None:
    now = [0.0]
    dashboard = Dashboard(client=object(), clock=lambda: now[0])
    token = dashboard.admin({"action": "add_shard"})["confirm"]
    now[0] = 61.0
    with pytest.raises(BadInput, match="expired"):
        dashboard.admin({"confirm": token})


# --------------------------------------------------------------------------- simulation runs


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dimint.sim.runner import run_scenario
    from dimint.sim.scenario import Scenario

    out = tmp_path_factory.mktemp("run")
    scenario = Scenario.load(ROOT / "scenarios" / "rebalance.toml").with_changes(
        faults={"mix": "schedule", "schedule": ()}
    )
    from dimint.sim.scenario import FaultEvent

    scenario = scenario.with_changes(
        faults={"mix": "schedule", "schedule": (FaultEvent(3000, "crash", "master:1", 800),)}
    )
    result = run_scenario(scenario, 1, out)
    assert result.ok, result.failures
    return out


def test_run_view_shows_faults_failovers_and_migrations(sim_run: Path) -> None:
    app = create_app(run_dir=sim_run)
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert "Faults" in page and "Failovers" in page and "Migrations" in page and "passed" in page
    assert "add shard 3" in page and "crash" in page
    png = client.get("/run/timeline.png")
    assert png.status_code == 200 and png.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/run/summary.json").get_json()["seed"] == 1


# ------------------------------------------------------------------------ browser + real cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(app: Any) -> tuple[str, Callable[[], None]]:
    from waitress.server import create_server

    port = _free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}", server.close


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the DOM is re-rendered every poll; a stale element is normal
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.mark.real
def test_run_timeline_renders_in_a_real_browser(browser: Any, sim_run: Path) -> None:
    from selenium.webdriver.common.by import By

    url, stop = _serve(create_app(run_dir=sim_run))
    try:
        browser.get(url + "/")
        assert "passed" in browser.find_element(By.ID, "verdict").text
        width = _wait(
            lambda: browser.execute_script("return document.getElementById('timeline').naturalWidth"),
            20,
            "image",
        )
        assert width > 500
        rows = browser.find_elements(By.CSS_SELECTOR, "#migrations tbody tr")
        assert len(rows) >= 2
    finally:
        stop()


@pytest.fixture(scope="module")
def live(zookeeper: Any) -> Iterator[tuple[Any, str]]:
    from dimint.real.local import LocalCluster

    cluster = LocalCluster(
        shards=2, replicas=1, overlords=3, zookeeper=zookeeper.hosts, session_timeout_ms=1500
    )
    cluster.up()
    url, stop = _serve(create_app(cluster.overlord_addresses))
    try:
        yield cluster, url
    finally:
        stop()
        cluster.down()


def _shard_rows(browser: Any) -> list[str]:
    # Read in one script: the table is re-rendered every poll, so element handles go stale.
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#shards tbody tr')).map(r => r.dataset.shard)"
    )


def _failover_rows(browser: Any) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#event-log tbody tr.failover')).map(r => r.textContent)"
    )


@pytest.mark.real
def test_live_dashboard_shards_client_drain_and_failover(browser: Any, live: tuple[Any, str]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    cluster, url = live
    browser.get(url + "/")
    _wait(lambda: sorted(_shard_rows(browser)) == ["0", "1"], 30, "both shards in the table")
    assert "leader" in browser.find_element(By.ID, "overlords").text

    # The test client: a set, then a get of the same key, shown in the result box.
    def run(command: str, args: str) -> str:
        Select(browser.find_element(By.ID, "command")).select_by_value(command)
        field = browser.find_element(By.ID, "args")
        field.clear()
        field.send_keys(args)
        browser.execute_script("document.getElementById('result').textContent = ''")
        browser.find_element(By.ID, "run").click()
        return _wait(
            lambda: (text := browser.find_element(By.ID, "result").text) not in ("", "\u2026") and text,
            20,
            f"the reply to {command}",
        )

    assert run("set", 'greeting "hello dashboard"') == "true"
    assert run("get", "greeting") == '"hello dashboard"'
    assert run("incr", "greeting 1").startswith("error NOT_INTEGER")
    assert run("lpush", "greeting x").startswith("error WRONG_TYPE")

    # Draining a shard asks for confirmation first; confirmed, the shard leaves the table.
    browser.find_element(By.ID, "drain-id").send_keys("1")
    browser.find_element(By.ID, "drain-shard").click()
    text = _wait(lambda: browser.find_element(By.ID, "confirm-text").text, 10, "a confirmation")
    assert "drain shard 1" in text
    assert sorted(_shard_rows(browser)) == ["0", "1"]  # nothing happened yet
    browser.find_element(By.ID, "confirm-yes").click()
    _wait(lambda: _shard_rows(browser) == ["0"], 90, "shard 1 to be drained and removed")
    assert run("get", "greeting") == '"hello dashboard"'

    # A killed master shows up as a failover in the event log; a spare takes the empty slave slot.
    cluster.start_node()
    status = cluster.status()
    master = next(s["master"] for s in status["shards"] if s["shard_id"] == 0)
    cluster.kill(master)
    _wait(
        lambda: any("failover" in row and "shard=0" in row for row in _failover_rows(browser)),
        60,
        "a failover of shard 0 in the event log",
    )
    _wait(
        lambda: run("get", "greeting") == '"hello dashboard"', 60, "the acknowledged value after the failover"
    )
