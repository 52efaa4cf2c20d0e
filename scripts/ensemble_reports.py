"""What an ensemble of classifiers would score: their evaluate.py reports on the same images,
each image's probabilities averaged, the accuracy of the average and of each member with 95%
bootstrap intervals.

    python scripts/ensemble_reports.py RUN_A/report RUN_B/report [...] [--output ensemble/metrics.json]

The written report has per-image rows like evaluate.py's, so scripts/compare_reports.py pairs it
with any member's report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluation.bootstrap import interval_text
from evaluation.ensemble import ensemble_reports
from lightning_modules.cli import run_with_clean_errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="metrics.json files of classifiers, or their folders")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the ensemble's report (metrics.json) here")
    args = parser.parse_args(argv)
    report = ensemble_reports(args.reports, args.bootstrap, args.seed)
    for name, entry in report["accuracy"].items():
        print(f"{name}: accuracy {interval_text(entry)}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    run_with_clean_errors(main)
