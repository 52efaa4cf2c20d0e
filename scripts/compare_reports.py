"""Is one run better than another on the same images? Every score both evaluate.py reports allow
(accuracy; IoU and Dice; tumour recall and precision), the difference second minus first, and a
95% paired bootstrap interval of that difference.

    python scripts/compare_reports.py RUN_A/report RUN_B/report [--names A B] [--output comparison.json]
    python scripts/compare_reports.py BUNDLED/report_lgg RUN/report_own_split --shared_images

--shared_images: score the images both reports hold (e.g. a model's own validation split against another
model's report of a whole source it never saw), instead of refusing reports of other images.

Each argument is a metrics.json written by evaluate.py, or its folder. An interval that excludes 0
means the difference is larger than what the choice of validation images alone would give.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluation.compare import compare_reports, format_comparison
from lightning_modules.cli import run_with_clean_errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="metrics.json of the baseline, or its folder")
    parser.add_argument("second", help="metrics.json of the run compared with it, or its folder")
    parser.add_argument("--names", nargs=2, default=("first", "second"), help="column titles")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the comparison as JSON here")
    parser.add_argument("--shared_images", action="store_true", help="compare on the images both reports hold")
    args = parser.parse_args(argv)
    comparison = compare_reports(args.first, args.second, args.bootstrap, args.seed, args.shared_images)
    print(format_comparison(comparison, *args.names))
    if args.output:
        Path(args.output).write_text(json.dumps(comparison, indent=2))


if __name__ == "__main__":
    run_with_clean_errors(main)
