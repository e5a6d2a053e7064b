"""`rlhfkit report runs=DIR [output=FILE]`: a self-contained report.html of the runs in DIR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import option
from rlhfkit.errors import ConfigError


@dataclass
class ReportConfig:
    runs: str = option("runs/demo", "directory holding the runs (and eval.json, summary.json)")
    output: str = option("", "HTML file to write; empty = RUNS/report.html")
    title: str = option("rlhfkit report", "title of the page")


def output_path(config: ReportConfig) -> Path:
    """Where the report goes: ``output``, else RUNS/report.html."""
    return Path(config.output) if config.output else Path(config.runs) / "report.html"


def written_files(config: ReportConfig) -> list[Path]:
    """The file this config writes (see `Stage.writes`)."""
    return [output_path(config)]


def run(config: ReportConfig) -> int:
    from rlhfkit.eval.report import write_report

    root = Path(config.runs)
    if not root.is_dir():
        raise ConfigError(f"runs: {config.runs!r} is not a directory")
    path = write_report(root, output_path(config), config.title)
    print(f"wrote {path}")
    return 0
