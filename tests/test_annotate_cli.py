"""`rlhfkit annotate` commands, criteria files, bad input files, and the simulated annotators
labelling through the same API as people."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rlhfkit.errors import ConfigError
from rlhfkit.feedback.annotation.app import create_app
from rlhfkit.feedback.annotation.cli import main
from rlhfkit.feedback.annotation.criteria import load_rubric
from rlhfkit.feedback.annotation.simulated import (
    judgement_to_label,
    label_with_simulated_annotators,
)

ROOT = Path(__file__).resolve().parents[1]


def _module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit.feedback.annotation.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _world_records(n: int, seed: int = 0) -> list[dict]:
    from rlhfkit.synthetic.corpus import sample_response
    from rlhfkit.synthetic.prompts import make_prompts

    rng = random.Random(seed)
    records = []
    for i, prompt in enumerate(make_prompts(n, seed=seed)):
        k = 3 if i % 5 == 0 else 2
        responses: list[str] = []
        while len(responses) < k:
            text = sample_response(prompt, rng)[1]
            if text not in responses:
                responses.append(text)
        records.append({"prompt": prompt.text, "responses": responses})
    return records


def test_help_explains_every_command(capsys):
    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    for command, option in [
        ("serve", "--overlap"),
        ("serve", "--reward-model"),
        ("add-user", "--role"),
        ("export", "--aggregate"),
        ("stats", "--json"),
    ]:
        assert main([command, "--help"]) == 0
        assert option in capsys.readouterr().out
    assert main(["frobnicate"]) == 2


def test_add_user_prints_the_token_once_alone_on_the_last_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    result = _module("add-user", "ada", "--role", "annotator", "--db", db)
    assert result.returncode == 0, result.stderr
    token = result.stdout.rstrip("\n").splitlines()[-1]
    assert len(token) >= 40 and " " not in token
    app = create_app(db, rate_limit=0)
    with TestClient(app) as client:
        me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    app.state.engine.dispose()
    assert me.status_code == 200 and me.json()["name"] == "ada"
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM users")).scalar()
    engine.dispose()
    assert token not in stored and len(stored) == 64
    again = _module("add-user", "ada", "--role", "admin", "--db", db)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    bad_role = _module("add-user", "bob", "--role", "boss", "--db", db)
    assert bad_role.returncode == 2


def test_bad_input_files_are_reported_by_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    cases = {
        '{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "p", "responses": "ab"}\n': (
            ":2: responses: expected a list of strings"
        ),
        '{"prompt": "p", "responses": ["a", "b"]}\n{oops\n': ":2: not valid JSON",
        '{"responses": ["a", "b"]}\n': ":1: prompt: missing",
        '{"prompt": "p", "responses": ["a"]}\n': ":1: responses: 1 responses",
        '{"prompt": "p", "responses": ["a", "b"], "gold": {"overall": 2}}\n': ":1: gold.overall",
        "[1, 2]\n": ":1: expected a JSON object",
    }
    for i, (content, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(content)
        assert main(["load", str(path), "--db", db]) == 2
        err = capsys.readouterr().err
        assert f"{path}{message}" in err, err
    assert main(["load", str(tmp_path / "missing.jsonl"), "--db", db]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["stats", "--db", "mysql://x/y"]) == 2
    assert "expected sqlite" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"prompt": "p", "responses": ["a", "b"]}\n\n{"prompt": "q", "responses": ["c", "c"]}\n'
    )
    assert main(["load", str(good), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "1 new items" in out and "1 skipped (identical responses)" in out
    assert main(["load", str(good), "--db", db]) == 0
    assert "1 already present" in capsys.readouterr().out


def test_criteria_file(tmp_path):
    path = tmp_path / "criteria.yaml"
    path.write_text(
        "criteria:\n"
        "  - name: honesty\n    description: No made-up facts.\n"
        "  - name: brevity\n    description: Short is good.\n"
        "guidelines: Be kind.\n"
    )
    rubric = load_rubric(path)
    assert rubric.names == ["honesty", "brevity"] and rubric.guidelines == "Be kind."
    (tmp_path / "map.yaml").write_text("criteria: {clarity: Easy to follow.}\n")
    assert load_rubric(tmp_path / "map.yaml").names == ["clarity"]
    for content, problem in [
        ("criteria: []\n", "non-empty"),
        ("criteria:\n  - name: Bad Name\n", "lower-case identifier"),
        ("criteria: [a, a]\n", "duplicate"),
        ("criteria: [a]\ncolour: red\n", "unknown keys"),
        ("criteria: [unclosed\n", "not valid YAML"),
    ]:
        (tmp_path / "bad.yaml").write_text(content)
        with pytest.raises(ConfigError, match=problem):
            load_rubric(tmp_path / "bad.yaml")
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    from rlhfkit.feedback.annotation.db import add_user, load_items, open_database

    engine, session_factory = open_database(db)
    load_items(session_factory, [{"prompt": "p", "responses": ["a", "b"]}])
    token = add_user(session_factory, "ada", "annotator")
    engine.dispose()
    app = create_app(db, criteria_file=path, rate_limit=0)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        item = client.get("/api/next", headers=headers).json()
        assert [c["name"] for c in item["criteria"]] == ["honesty", "brevity"]
        config = client.get("/api/config", headers=headers).json()
        assert config["guidelines"] == "Be kind." and len(config["strengths"]) == 4
        body = {
            "item_id": item["item_id"],
            "idempotency_key": "k",
            "overall": {"choice": "A", "strength": 2},
            "criteria": {"honesty": "A", "helpfulness": "B"},
        }
        assert client.post("/api/labels", json=body, headers=headers).status_code == 422
        body["criteria"] = {"honesty": "A", "brevity": "tie"}
        assert client.post("/api/labels", json=body, headers=headers).status_code == 201
    app.state.engine.dispose()


def test_simulated_annotators_label_through_the_api_and_export_is_trainable(tmp_path, capsys):
    """The simulated path stores real users' labels (sides shuffled) in the database, the
    CLI exports them, and the lead's data loader reads the export as training data."""
    from rlhfkit.data.formats import PreferenceExample, RankingExample, parse_comparisons
    from rlhfkit.data.io import read_records
    from rlhfkit.synthetic.annotators import default_annotators

    records = _world_records(15)
    annotators = default_annotators(3)
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    exported = label_with_simulated_annotators(records, annotators, overlap=2, seed=7, db_url=db)
    n_rankings = sum(len(r["responses"]) > 2 for r in records)
    assert len([r for r in exported if "ranking" in r]) == 2 * n_rankings
    pairs = [r for r in exported if "chosen" in r]
    assert len(pairs) == 2 * (len(records) - n_rankings)  # simulated people never tie
    assert {r["annotator"] for r in exported} <= {a.name for a in annotators}
    for r in pairs:
        assert r["margin"] in (0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0)
        assert set(r["criteria"].values()) <= {"chosen", "rejected", "tie"}
        assert r["side"] in ("A", "B")
    assert {r["side"] for r in pairs} == {"A", "B"}  # sides really were shuffled
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        per_user = dict(
            conn.execute(
                sa.text(
                    "SELECT u.name, COUNT(l.id) FROM users u LEFT JOIN labels l "
                    "ON l.user_id = u.id GROUP BY u.name"
                )
            ).all()
        )
    engine.dispose()
    assert sum(per_user.values()) == 2 * len(records)
    assert per_user["simulation-admin"] == 0

    again = label_with_simulated_annotators(records, annotators, overlap=2, seed=7)
    assert again == exported  # same seed, same labels (a fresh temporary database)

    out = tmp_path / "prefs.jsonl"
    assert main(["export", "--db", db, "--out", str(out)]) == 0
    assert f"{out}: {len(exported)} records" in capsys.readouterr().out
    examples = parse_comparisons(read_records(str(out)))
    assert len(examples) == len(exported)
    assert sum(isinstance(e, RankingExample) for e in examples) == 2 * n_rankings
    assert all(e.margin is not None for e in examples if isinstance(e, PreferenceExample))
    majority = tmp_path / "majority.jsonl"
    assert main(["export", "--db", db, "--out", str(majority), "--aggregate", "majority"]) == 0
    capsys.readouterr()
    aggregated = [json.loads(x) for x in majority.read_text().splitlines()]
    assert len(aggregated) <= len(records)
    parse_comparisons(read_records(str(majority)))

    assert main(["stats", "--db", db]) == 0
    table = capsys.readouterr().out
    assert "Fleiss κ" in table and "reward-model ceiling" in table and "balanced" in table
    assert main(["stats", "--db", db, "--json", "--overlap", "2"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["counts"]["items_complete"] == len(records)
    assert stats["counts"]["labels"] == 2 * len(records)
    assert stats["agreement"]["overall"]["items_with_2_or_more_labels"] == len(records)


def test_judgement_to_label_is_the_only_adapter():
    class Judgement:
        prefers_a = False
        strength = 4
        verdicts = {"helpfulness": "B", "accuracy": "tie", "safety": "A"}

    item = {
        "item_id": 5,
        "criteria": [{"name": "helpfulness"}, {"name": "safety"}, {"name": "honesty"}],
    }
    assert judgement_to_label(item, Judgement(), "key") == {
        "item_id": 5,
        "idempotency_key": "key",
        "overall": {"choice": "B", "strength": 4},
        "criteria": {"helpfulness": "B", "safety": "A", "honesty": "tie"},
    }


def test_read_only_commands_refuse_a_missing_database(tmp_path, capsys):
    db_file = tmp_path / "labels.db"
    assert main(["load", str(_pairs_file(tmp_path)), "--db", f"sqlite:///{db_file}"]) == 0
    capsys.readouterr()
    typo = tmp_path / "lables.db"
    for command in (["stats"], ["export", "--out", str(tmp_path / "out.jsonl")]):
        assert main([*command, "--db", f"sqlite:///{typo}"]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: --db sqlite:///{typo}: no such database file (did you mean {db_file}?)\n"
        )
    assert main(["stats", "--db", f"sqlite:///{tmp_path / 'nothing-like-it.sqlite'}"]) == 2
    assert capsys.readouterr().err.endswith(": no such database file\n")
    assert not typo.exists() and not (tmp_path / "nothing-like-it.sqlite").exists()
    assert not (tmp_path / "out.jsonl").exists()
    assert main(["stats", "--db", f"sqlite:///{db_file}"]) == 0  # the real one still works


def test_database_errors_do_not_print_the_password(capsys):
    for url in ("postgresql://ann:s3cr3t-pw@127.0.0.1:1/labels", "mysql://ann:s3cr3t-pw@h/db"):
        assert main(["stats", "--db", url]) == 2
        err = capsys.readouterr().err
        assert "s3cr3t-pw" not in err and "ann:***@" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["stats", "--db", "sqlite:/one-slash.db"]) == 2  # unparsable: no traceback
    assert "expected sqlite:///FILE.db" in capsys.readouterr().err


def test_a_missing_postgres_driver_is_one_line_naming_the_package(capsys, monkeypatch):
    """Without psycopg installed (it is an optional dependency), SQLAlchemy raises
    ModuleNotFoundError from create_engine: the user gets the pip command, not a traceback."""

    def no_driver(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")

    monkeypatch.setattr(sa, "create_engine", no_driver)
    assert main(["stats", "--db", "postgresql://ann:s3cr3t-pw@127.0.0.1:1/labels"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --db postgresql+psycopg://ann:***@127.0.0.1:1/labels: the PostgreSQL driver is "
        "not installed (psycopg); install it with: pip install 'psycopg[binary]'\n"
    )


def test_load_reports_a_file_that_is_not_utf8_by_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    for content, line in [
        (b'\xff\xfe{"prompt"\n', 1),
        (b'{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "caf\xe9"}\n', 2),
    ]:
        path = tmp_path / "latin1.jsonl"
        path.write_bytes(content)
        assert main(["load", str(path), "--db", db]) == 2
        assert capsys.readouterr().err == f"error: {path}:{line}: not valid UTF-8\n"
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b'{"prompt": "\xc3\xa9t\xc3\xa9", "responses": ["a", "b"]}\r\n\r\n')
    assert main(["load", str(crlf), "--db", db]) == 0
    assert "1 new items" in capsys.readouterr().out


def _pairs_file(folder: Path) -> Path:
    path = folder / "pairs.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b"]}\n')
    return path


def test_serve_checks_every_input_before_touching_the_database(tmp_path, capsys):
    pairs = _pairs_file(tmp_path)
    db_file = tmp_path / "labels.db"
    base = ["serve", str(pairs), "--db", f"sqlite:///{db_file}"]
    for option, value, message in [
        ("--lease-minutes", "-1", "--lease-minutes: must be a positive number of minutes"),
        ("--lease-minutes", "0", "--lease-minutes: must be a positive number of minutes"),
        ("--lease-minutes", "nan", "--lease-minutes: must be a positive number of minutes"),
        ("--gold-every", "-3", "--gold-every: must be 0 (no gold items) or more"),
        ("--rate-limit", "-1", "--rate-limit: must be 0 (no limit) or a positive number"),
        ("--rate-limit", "inf", "--rate-limit: must be 0 (no limit) or a positive number"),
        ("--flag-limit", "0", "--flag-limit: must be at least 1"),
        ("--overlap", "0", "--overlap: must be at least 1"),
        ("--port", "70000", "--port: must be between 0 and 65535"),
        ("--criteria", str(tmp_path / "missing.yaml"), "missing.yaml: no such file"),
    ]:
        assert main([*base, option, value]) == 2, option
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not db_file.exists(), option  # nothing was loaded or created


def test_rate_limit_help_matches_the_burst_the_server_uses(capsys):
    from rlhfkit.feedback.annotation.app import default_burst

    assert main(["serve", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "in bursts of up to 3x that (at least 10)" in help_text
    assert default_burst(20) == 3 * 20 and default_burst(1) == 10
    docs = " ".join((ROOT / "docs" / "annotation.md").read_text().split())
    assert "in bursts of up to three times that and at least 10 requests" in docs
