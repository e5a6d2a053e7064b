"""``rlhfkit annotate ...``: serve a labelling campaign, add users, export, statistics.

Called as ``main(argv)`` with everything after ``annotate``; also runnable as
``python -m rlhfkit.feedback.annotation.cli``. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rlhfkit.errors import RlhfkitError

DEFAULT_DB = "sqlite:///labels.db"

DESCRIPTION = """\
Human feedback: people rank model responses on helpfulness, accuracy and safety in a web
page served by rlhfkit; the labels export straight into reward-model / DPO training data.

  rlhfkit annotate add-user alice --role annotator --db sqlite:///labels.db
  rlhfkit annotate serve pairs.jsonl --db sqlite:///labels.db --overlap 3
  rlhfkit annotate stats  --db sqlite:///labels.db
  rlhfkit annotate export --db sqlite:///labels.db --out prefs.jsonl

See docs/annotation.md for a whole campaign.
"""


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="URL",
        help=f"database URL: sqlite:///FILE.db (WAL mode) or postgresql://USER:PASS@HOST/DB "
        f"(default {DEFAULT_DB})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit annotate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="load pairs and serve the labelling page and JSON API",
        description="Load PAIRS into the database (items already there are kept, not "
        "duplicated) and serve the labelling page at http://HOST:PORT/ and the JSON API "
        "under /api.",
    )
    serve.add_argument(
        "pairs",
        metavar="PAIRS.jsonl",
        help='`rlhfkit generate` output: {"prompt": str, "responses": [str, ...]} per line '
        '(2 responses: a pair; 3 to 8: a ranking); optional "gold" for attention checks',
    )
    _add_db(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    serve.add_argument(
        "--criteria",
        metavar="FILE.yaml",
        help="criteria with descriptions and guidelines text (default: helpfulness, accuracy, "
        "safety); format in docs/annotation.md",
    )
    serve.add_argument(
        "--overlap",
        type=int,
        default=1,
        metavar="N",
        help="labels per item, each from a different annotator (default %(default)s)",
    )
    serve.add_argument(
        "--lease-minutes",
        type=float,
        default=30.0,
        help="an item given out and not answered within this time returns to the queue "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--gold-every",
        type=int,
        default=10,
        metavar="N",
        help="serve one gold (attention-check) item after every N labels of an annotator; "
        "0 never (default %(default)s)",
    )
    serve.add_argument(
        "--flag-limit",
        type=int,
        default=2,
        metavar="N",
        help="an item flagged by N annotators leaves the queue (default %(default)s)",
    )
    serve.add_argument(
        "--reward-model",
        metavar="SPEC",
        help="reward model in the loop: a reward-model directory, an http scorer URL or "
        "python:pkg.module:function; items it is least sure about are served first and "
        "stats report its accuracy against the labels",
    )
    serve.add_argument(
        "--rate-limit",
        type=float,
        default=20.0,
        metavar="PER_SECOND",
        help="requests per second per token, on average, in bursts of up to 3x that (at least "
        "10); 0 disables (default %(default)s)",
    )
    serve.add_argument("--seed", type=int, default=None, help="seed of the side shuffling")

    add_user = sub.add_parser(
        "add-user",
        help="create a user and print their token (once)",
        description="Create a user. The token is printed once, alone on the last line; only "
        "its hash is stored, so a lost token means a new user.",
    )
    add_user.add_argument("name", metavar="NAME", help="user name (shown in exports and stats)")
    add_user.add_argument(
        "--role",
        required=True,
        choices=["annotator", "reviewer", "admin"],
        help="annotator: labels, sees own labels; reviewer: also reads all labels and flags; "
        "admin: also export and stats",
    )
    _add_db(add_user)

    load = sub.add_parser("load", help="load pairs into the database without serving")
    load.add_argument("pairs", metavar="PAIRS.jsonl", help="as for serve")
    _add_db(load)

    export = sub.add_parser(
        "export",
        help="write the labels as preference / ranking training data",
        description="Write the live labels as JSONL for `rlhfkit rm` and `rlhfkit dpo`: "
        '{"prompt", "chosen", "rejected", "margin", "criteria", "annotator", "side"} per '
        'pair label, {"prompt", "responses", "ranking"} per ranking label. Ties and both-bad '
        "verdicts make no pair and are counted.",
    )
    _add_db(export)
    export.add_argument("--out", required=True, metavar="FILE.jsonl", help="output file")
    export.add_argument(
        "--aggregate",
        choices=["none", "majority", "soft"],
        default="none",
        help="none: one record per label; majority: one per item, majority vote (ties half a "
        "vote each side); soft: one per item with soft_label = share of votes (default "
        "%(default)s)",
    )
    export.add_argument(
        "--include-gold", action="store_true", help="also export labels of gold items"
    )
    export.add_argument(
        "--min-gold-accuracy",
        type=float,
        metavar="P",
        help="leave out every label of annotators whose gold accuracy is below P (0-1)",
    )

    stats = sub.add_parser(
        "stats",
        help="counts, agreement (Cohen/Fleiss κ, Krippendorff α), bias, reward-model ceiling",
    )
    _add_db(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument(
        "--overlap",
        type=int,
        metavar="N",
        help="the campaign's overlap, for the count of complete items (default: the largest "
        "number of labels on one item)",
    )
    return parser


def _check_serve_args(args: argparse.Namespace) -> None:
    """One-line errors for option values the campaign cannot run with."""
    if args.overlap < 1:
        raise RlhfkitError("--overlap: must be at least 1")
    if not (math.isfinite(args.lease_minutes) and args.lease_minutes > 0):
        raise RlhfkitError("--lease-minutes: must be a positive number of minutes")
    if args.gold_every < 0:
        raise RlhfkitError("--gold-every: must be 0 (no gold items) or more")
    if args.flag_limit < 1:
        raise RlhfkitError("--flag-limit: must be at least 1")
    if not (math.isfinite(args.rate_limit) and args.rate_limit >= 0):
        raise RlhfkitError("--rate-limit: must be 0 (no limit) or a positive number")
    if not 0 <= args.port <= 65535:
        raise RlhfkitError("--port: must be between 0 and 65535")


def _reward_function(spec: str | None):
    """The ``--reward-model`` scorer, or None."""
    if not spec:
        return None
    try:
        from rlhfkit.models.reward_fn import load_reward_function
    except ImportError as exc:
        raise RlhfkitError(f"--reward-model: cannot load the scorer ({exc})") from exc
    return load_reward_function(spec)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .criteria import load_rubric
    from .db import load_items, open_database, parse_pairs_file

    # Every input is checked before the database is touched: a bad option or file leaves it
    # as it was.
    _check_serve_args(args)
    rubric = load_rubric(args.criteria)
    records, skipped = parse_pairs_file(args.pairs)
    reward_fn = _reward_function(args.reward_model)
    _engine, session_factory = open_database(args.db)
    loaded = load_items(session_factory, records)
    print(
        f"{args.pairs}: {len(records)} items ({loaded['added']} new, "
        f"{loaded['already_present']} already in the database); skipped "
        f"{skipped['identical_responses']} with identical responses",
        flush=True,
    )
    app = create_app(
        args.db,
        rubric=rubric,
        overlap=args.overlap,
        lease_seconds=args.lease_minutes * 60.0,
        gold_every=args.gold_every,
        flag_limit=args.flag_limit,
        reward_fn=reward_fn,
        rate_limit=args.rate_limit,  # bursts of app.default_burst(rate_limit)
        seed=args.seed,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            "note: tokens travel in clear text over plain HTTP; put the server behind TLS "
            "(a reverse proxy) when annotators connect from other machines",
            file=sys.stderr,
        )
    print(f"labelling page: http://{args.host}:{args.port}/  (API under /api)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _add_user(args: argparse.Namespace) -> int:
    from .db import add_user, open_database

    _engine, session_factory = open_database(args.db)
    token = add_user(session_factory, args.name, args.role)
    print(f"created {args.role} {args.name!r}. Their token (shown only this once):")
    print(token)
    return 0


def _load(args: argparse.Namespace) -> int:
    from .db import load_items, open_database, parse_pairs_file

    records, skipped = parse_pairs_file(args.pairs)
    _engine, session_factory = open_database(args.db)
    loaded = load_items(session_factory, records)
    print(
        f"{args.pairs}: {loaded['added']} new items, {loaded['already_present']} already "
        f"present, {skipped['identical_responses']} skipped (identical responses)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from .db import open_database
    from .export import export_records, write_jsonl

    if args.min_gold_accuracy is not None and not 0.0 <= args.min_gold_accuracy <= 1.0:
        raise RlhfkitError("--min-gold-accuracy: expected a number between 0 and 1")
    out = Path(args.out)
    if not out.parent.exists():
        raise RlhfkitError(f"--out {out}: folder {out.parent} does not exist")
    _engine, session_factory = open_database(args.db, create=False)
    records, summary = export_records(
        session_factory, args.aggregate, args.include_gold, args.min_gold_accuracy
    )
    write_jsonl(records, out)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.items()))
    print(f"{out}: {len(records)} records ({counts})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .db import open_database
    from .stats import compute_stats, format_stats

    _engine, session_factory = open_database(args.db, create=False)
    stats = compute_stats(session_factory, overlap=args.overlap)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


COMMANDS = {
    "serve": _serve,
    "add-user": _add_user,
    "load": _load,
    "export": _export,
    "stats": _stats,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``rlhfkit annotate``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except RlhfkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
