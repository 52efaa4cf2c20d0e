"""Per-epoch values of TensorBoard scalars in a run folder, as JSON: {tag: [[step, seconds, value], ...]}.

    python scripts/tb_history.py RUN_FOLDER [--start UNIX_TIME] TAG [TAG ...]

Seconds count from --start (default: the run's config.yaml, written when training starts), so
"time to 97%" is read straight off the output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("tags", nargs="+")
    parser.add_argument("--start", type=float, help="time zero (default: mtime of RUN/config.yaml)")
    args = parser.parse_args(argv)
    start = args.start if args.start is not None else (args.run / "config.yaml").stat().st_mtime
    accumulator = EventAccumulator(str(args.run), size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    logged = set(accumulator.Tags()["scalars"])
    if missing := [tag for tag in args.tags if tag not in logged]:  # a typo, or not logged yet
        sys.exit(f"{args.run}: no scalar {', '.join(missing)} logged (yet); it has {', '.join(sorted(logged))}")
    history = {
        tag: [
            [event.step, round(event.wall_time - start, 1), round(event.value, 4)] for event in accumulator.Scalars(tag)
        ]
        for tag in args.tags
    }
    print(json.dumps(history))


if __name__ == "__main__":
    main()
