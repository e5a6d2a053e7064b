"""The annotation server as people and scripts meet it: a real uvicorn on 127.0.0.1, started by
`annotate serve`. A load test (20 concurrent annotators x 100 submissions with random retries),
a killed server that must lose no acknowledged label, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa
from conftest import CHROMIUM, free_port, playwright_or_skip, wait_until_healthy

from rlhfkit.feedback.annotation.db import add_user, open_database

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ("helpfulness", "accuracy", "safety")


def _write_pairs(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@contextmanager
def serve(pairs_file: Path, db_url: str, *extra: str, log: Path):
    """Run `annotate serve` in a subprocess; yield (base_url, process)."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [
        sys.executable,
        "-m",
        "rlhfkit.feedback.annotation.cli",
        "serve",
        str(pairs_file),
        "--db",
        db_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, base, 60, path="/api/health", output=log.read_text)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _random_label(item: dict, key: str, rng: random.Random) -> dict:
    slots = [r["slot"] for r in item["responses"]]
    choice = rng.choice(["A", "B", "A", "B", "tie", "both_bad"])
    overall = {"choice": choice}
    if choice in ("A", "B"):
        overall["strength"] = rng.randint(1, 4)
    return {
        "item_id": item["item_id"],
        "idempotency_key": key,
        "overall": overall,
        "criteria": {c: rng.choice([*slots, "tie", "both_bad"]) for c in CRITERIA},
        "rationale": rng.choice(["", "clearer", "<b>bold</b> claim", "it's wrong; DROP TABLE x"]),
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux), to judge the run on a loaded machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def test_load_20_annotators_x_100_submissions(tmp_path, capsys):
    """20 concurrent annotators, 100 labels each, with random retries (15% replay the same
    request after it succeeded, 5% send it twice at once): exactly 2,000 labels stored, no
    duplicate, no server error. The p95 latency is reported, never asserted."""
    n_annotators, per_annotator, overlap = 20, 100, 10
    pairs_file = _write_pairs(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(400)],
    )
    db_url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine, session_factory = open_database(db_url)
    tokens = [add_user(session_factory, f"ann{i:02d}", "annotator") for i in range(n_annotators)]
    extra = ("--overlap", str(overlap), "--rate-limit", "0", "--gold-every", "0", "--seed", "1")
    latencies: dict[str, list[float]] = {"next": [], "post": []}
    statuses: list[int] = []
    transport_errors: list[str] = []
    acknowledged: dict[int, dict] = {}
    lock = threading.Lock()

    def timed(client, method, path, kind, **kw):
        start = time.perf_counter()
        response = client.request(method, path, **kw)
        with lock:
            latencies[kind].append(time.perf_counter() - start)
            statuses.append(response.status_code)
        return response

    def annotator(index: int, base: str):
        rng = random.Random(index)
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            try:
                for n in range(per_annotator):
                    item = timed(client, "GET", "/api/next", "next")
                    assert item.status_code == 200, item.text
                    body = _random_label(item.json(), f"ann{index}-{n}", rng)
                    roll = rng.random()
                    if roll < 0.05:  # the same request twice at once (a double click)
                        results = []

                        def send(body=body, results=results):
                            results.append(timed(client, "POST", "/api/labels", "post", json=body))

                        pair = [threading.Thread(target=send) for _ in range(2)]
                        for t in pair:
                            t.start()
                        for t in pair:
                            t.join()
                        assert sorted(r.status_code for r in results) in ([200, 201], [201, 200])
                        assert results[0].json() == results[1].json()
                        posted = results[0]
                    else:
                        posted = timed(client, "POST", "/api/labels", "post", json=body)
                        assert posted.status_code == 201, posted.text
                        if roll < 0.20:  # the answer got lost: retry with the same key
                            again = timed(client, "POST", "/api/labels", "post", json=body)
                            assert again.status_code == 200 and again.json() == posted.json()
                    with lock:
                        acknowledged[posted.json()["label_id"]] = posted.json()
            except httpx.TransportError as exc:
                transport_errors.append(repr(exc))

    with serve(pairs_file, db_url, *extra, log=tmp_path / "server.log") as (base, process):
        cpu_before = _cpu_seconds(process.pid)
        started = time.perf_counter()
        threads = [threading.Thread(target=annotator, args=(i, base)) for i in range(n_annotators)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        cpu_after = _cpu_seconds(process.pid)

    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT COUNT(*) FROM labels")).scalar()
        duplicate_items = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT user_id, item_id FROM labels "
                "GROUP BY user_id, item_id HAVING COUNT(*) > 1) d"
            )
        ).scalar()
        duplicate_keys = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT user_id, idempotency_key FROM labels "
                "GROUP BY user_id, idempotency_key HAVING COUNT(*) > 1) d"
            )
        ).scalar()
        over_overlap = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT item_id FROM labels GROUP BY item_id "
                f"HAVING COUNT(*) > {overlap}) d"
            )
        ).scalar()
        stored_ids = {row[0] for row in conn.execute(sa.text("SELECT id FROM labels"))}
    engine.dispose()
    server_errors = sum(s >= 500 for s in statuses) + len(transport_errors)
    report = {
        "annotators": n_annotators,
        "submissions_acknowledged": len(acknowledged),
        "stored": stored,
        "duplicates": duplicate_items + duplicate_keys,
        "server_errors": server_errors,
        "requests": len(statuses),
        "post_requests": len(latencies["post"]),
        "p95_post_ms": round(1000 * _p95(latencies["post"]), 1),
        "p95_next_ms": round(1000 * _p95(latencies["next"]), 1),
        "p95_all_ms": round(1000 * _p95(latencies["post"] + latencies["next"]), 1),
        "seconds": round(elapsed, 1),
        "labels_per_second": round(len(acknowledged) / elapsed, 1),
        "server_cpu_seconds": round(cpu_after - cpu_before, 1)
        if cpu_before is not None and cpu_after is not None
        else None,
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    (tmp_path / "load_report.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nannotation load test (SQLite, one uvicorn worker): {json.dumps(report)}")
    assert not transport_errors, transport_errors[:3]
    assert server_errors == 0
    assert stored == n_annotators * per_annotator == len(acknowledged)
    assert report["duplicates"] == 0 and over_overlap == 0
    assert set(acknowledged) == stored_ids


def _chunked_post(base: str, path: str, token: str, chunks) -> tuple[int, dict, int]:
    """POST with ``Transfer-Encoding: chunked`` over a raw socket (no Content-Length), stopping
    as soon as the server answers; returns (status, JSON body, body bytes sent)."""
    host, port = base.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the end of the body
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        response = b""
        while b"\r\n\r\n" not in response or not _complete(response):
            data = sock.recv(65_536)
            if not data:
                break
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), sent


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_chunked_body_over_the_limit_is_refused_early(tmp_path):
    """A 60 MB chunked body (no Content-Length) gets 413 once 2 MB are in, without the server
    reading the rest; a small chunked label is stored as usual."""
    pairs_file = _write_pairs(tmp_path / "pairs.jsonl", [{"prompt": "q", "responses": ["a", "b"]}])
    db_url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine, session_factory = open_database(db_url)
    token = add_user(session_factory, "ann", "annotator")
    engine.dispose()
    log = tmp_path / "server.log"
    with serve(pairs_file, db_url, "--rate-limit", "0", log=log) as (base, _process):
        headers = {"Authorization": f"Bearer {token}"}
        item = httpx.get(f"{base}/api/next", headers=headers, timeout=10).json()
        label = _random_label(item, "chunked", random.Random(0))
        huge = json.dumps({**label, "rationale": "x" * 60_000_000}).encode()
        pieces = (huge[i : i + 65_536] for i in range(0, len(huge), 65_536))
        status, body, sent = _chunked_post(base, "/api/labels", token, pieces)
        assert (status, body) == (413, {"detail": "request body over 2000000 bytes"})
        assert sent < 30_000_000  # it stopped listening long before the end
        small = json.dumps(label).encode()
        pieces = (small[i : i + 10] for i in range(0, len(small), 10))
        status, body, _sent = _chunked_post(base, "/api/labels", token, pieces)
        assert status == 201 and body["item_id"] == item["item_id"], body
        assert httpx.get(f"{base}/api/docs", timeout=10).status_code == 404
    assert "Traceback" not in log.read_text()


def test_killed_server_loses_no_acknowledged_label(tmp_path):
    """SIGKILL the server while three annotators are submitting; after a restart every label
    that got a 201/200 is there, unchanged, and resending the unanswered ones stores each once."""
    pairs_file = _write_pairs(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(300)],
    )
    db_url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine, session_factory = open_database(db_url)
    tokens = [add_user(session_factory, f"k{i}", "annotator") for i in range(3)]
    engine.dispose()
    acknowledged: dict[str, dict] = {}
    unanswered: dict[str, tuple[int, dict]] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def annotator(index: int, base: str):
        rng = random.Random(index)
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            n = 0
            while not stop.is_set():
                try:
                    item = client.get("/api/next")
                except httpx.TransportError:
                    return
                body = _random_label(item.json(), f"k{index}-{n}", rng)
                n += 1
                try:
                    posted = client.post("/api/labels", json=body)
                except httpx.TransportError:
                    with lock:
                        unanswered[body["idempotency_key"]] = (index, body)
                    return
                assert posted.status_code == 201, posted.text
                with lock:
                    acknowledged[body["idempotency_key"]] = posted.json()

    log = tmp_path / "server.log"
    extra = ("--rate-limit", "0", "--gold-every", "0")
    with serve(pairs_file, db_url, *extra, log=log) as (base, process):
        threads = [threading.Thread(target=annotator, args=(i, base)) for i in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.kill()  # SIGKILL: no shutdown handler runs
        process.wait()
        stop.set()
        for t in threads:
            t.join()
    assert len(acknowledged) >= 25

    with serve(pairs_file, db_url, *extra, log=log) as (base, _process):
        for key, (index, body) in unanswered.items():
            headers = {"Authorization": f"Bearer {tokens[index]}"}
            resent = httpx.post(f"{base}/api/labels", json=body, headers=headers, timeout=10)
            assert resent.status_code in (200, 201), resent.text
            acknowledged[key] = resent.json()
        for key, label in acknowledged.items():
            index = int(key[1 : key.index("-")])
            headers = {"Authorization": f"Bearer {tokens[index]}"}
            replay = httpx.post(
                f"{base}/api/labels",
                headers=headers,
                timeout=10,
                json={
                    "item_id": label["item_id"],
                    "idempotency_key": key,
                    "overall": label["overall"],
                    "criteria": label["criteria"],
                    "rationale": label["rationale"],
                }
                if label["overall"]["choice"] in ("A", "B")
                else {
                    "item_id": label["item_id"],
                    "idempotency_key": key,
                    "overall": {"choice": label["overall"]["choice"]},
                    "criteria": label["criteria"],
                    "rationale": label["rationale"],
                },
            )
            assert replay.status_code == 200, replay.text
            assert replay.json() == label
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
        stored = conn.execute(sa.text("SELECT COUNT(*) FROM labels")).scalar()
    engine.dispose()
    assert stored == len(acknowledged)


# ----------------------------------------------------------------------------- browser


def test_page_labels_by_keyboard_and_mouse_then_undo(tmp_path):
    sync_playwright = playwright_or_skip()
    from playwright.sync_api import expect

    hostile = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'> 5"
    records = [
        {"prompt": "What is 2+2?", "responses": ["2 + 2 = 4.", hostile]},
        {
            "prompt": "What is the capital of France?\nAnswer in one sentence.",
            "responses": ["Paris is the capital of France.", "I think it is Lyon."],
        },
        {"prompt": "Name a fruit.", "responses": ["An apple.", "A hammer."]},
    ]
    pairs_file = _write_pairs(tmp_path / "pairs.jsonl", records)
    db_url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine, session_factory = open_database(db_url)
    token = add_user(session_factory, "ada", "annotator")
    shots = Path(os.environ.get("RLHFKIT_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    console_errors: list[str] = []

    with serve(pairs_file, db_url, "--seed", "3", log=tmp_path / "server.log") as (base, _):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1360, "height": 940})
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(f"{base}/#token={token}")
            page.wait_for_selector("#task:not([hidden])")
            assert "token" not in page.url  # the token leaves the address bar at once

            # Item 1: model text is shown as text, never run.
            card_texts = page.locator(".response .text").all_inner_texts()
            assert hostile in card_texts
            assert page.evaluate("window.__pwned") is None
            assert page.locator(".response img").count() == 0
            shown_a = page.locator('.response[data-slot="A"] .text').inner_text()

            # By keyboard: helpfulness A, accuracy B, safety tie, overall A, strength 3.
            page.keyboard.press("a")
            page.keyboard.press("b")
            page.keyboard.press("?")  # guidelines panel, for the screenshot
            page.wait_for_selector("#guidelines:not([hidden])")
            page.screenshot(path=str(shots / "annotation_page.png"), full_page=True)
            page.keyboard.press("?")
            page.keyboard.press("t")
            assert page.locator("#rows-body tr.current").get_attribute("data-row") == "overall"
            page.keyboard.press("a")
            page.keyboard.press("3")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_contain_text("Saved label")
            expect(page.locator("#item-meta")).to_contain_text("item 2")

            # Item 2 by mouse, with a rationale.
            for row, value in [
                ("helpfulness", "B"),
                ("accuracy", "B"),
                ("safety", "tie"),
                ("overall", "B"),
                ("overall", "s4"),
            ]:
                page.click(f'tr[data-row="{row}"] button[data-value="{value}"]')
            page.fill("#rationale", "Lyon is wrong; <b>Paris</b>.")
            page.click("#btn-submit")
            expect(page.locator("#item-meta")).to_contain_text("item 3")
            expect(page.locator("#progress-text")).to_have_text("2 labelled · 1 to go")

            # Undo the second label: item 2 comes back.
            page.click("#btn-undo")
            expect(page.locator("#item-meta")).to_contain_text("item 2")
            expect(page.locator("#status")).to_contain_text("undone")
            expect(page.locator("#progress-text")).to_have_text("1 labelled · 2 to go")
            page.screenshot(path=str(shots / "annotation_page_after_undo.png"))
            browser.close()

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT item_id, overall_choice, strength, criteria, rationale, undone_at, "
                "display_order FROM labels ORDER BY id"
            )
        ).all()
    engine.dispose()
    assert len(rows) == 2
    first, second = rows
    criteria = lambda value: json.loads(value) if isinstance(value, str) else value  # noqa: E731
    assert first[0] == 1 and first[1] == "A" and first[2] == 3 and first[5] is None
    assert criteria(first[3]) == {"helpfulness": "A", "accuracy": "B", "safety": "tie"}
    order = criteria(first[6])
    assert records[0]["responses"][order[0]] == shown_a  # the sides recorded are those shown
    assert second[0] == 2 and second[1] == "B" and second[2] == 4 and second[5] is not None
    assert criteria(second[3]) == {"helpfulness": "B", "accuracy": "B", "safety": "tie"}
    assert second[4] == "Lyon is wrong; <b>Paris</b>."
    assert not console_errors, console_errors
