"""Leave-one-source-out: train with one source left out, then evaluate on that source alone.

    python scripts/leave_one_source_out.py --config configs/cls_sources.yaml \
        --source sartaj=DATA/brain-tumor-classification-mri --source masoud=DATA/brain-tumor-mri-dataset \
        --source figshare=DATA/brain-tumor-figshare --source lgg=DATA/lgg-mri-segmentation/kaggle_3m \
        --source br35h=DATA/br35h/Br35H-Mask-RCNN --hold_out lgg --hold_out br35h \
        [--evaluate_also brats=DATA/brats-slices] [--root_dir benchmarks/loso] [-- EXTRA TRAIN.PY ARGS]

For each --hold_out NAME it trains `train.py --config CONFIG --data.root [every other source]` into
ROOT_DIR/<run name>_without_NAME/version_N, then runs `evaluate.py` on NAME's root (and on each
--evaluate_also root, which no run trains on) into that run's evaluation_<source>/. Held-out patients of
a trained source are not enough to know a model generalises: this is how the project measures it.
A segmentation config's healthy slices are sources too (`--negatives NAME=ROOT`, passed as
--data.negatives). Prints each command before it runs it; `--evaluate_only` re-scores the newest runs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def named_root(text: str) -> tuple[str, str]:
    name, sep, root = text.partition("=")
    if not sep or not name or not root:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=ROOT")
    return name, root


def run(command: list[str]) -> None:
    print("+", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def newest_run(folder: Path) -> Path | None:
    versions = sorted(folder.glob("version_*"), key=lambda path: int(path.name.split("_")[1]))
    return versions[-1] if versions else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--source", type=named_root, action="append", required=True, help="NAME=ROOT, trained on")
    parser.add_argument("--negatives", type=named_root, action="append", default=[],
                        help="NAME=ROOT of healthy slices (segmentation configs)")  # fmt: skip
    parser.add_argument("--hold_out", action="append", required=True, help="a NAME to leave out (repeatable)")
    parser.add_argument("--evaluate_also", type=named_root, action="append", default=[],
                        help="NAME=ROOT that no run trains on, evaluated with every run")  # fmt: skip
    parser.add_argument("--root_dir", default="runs/loso", help="where the runs go (default: %(default)s)")
    parser.add_argument("--evaluate_only", action="store_true", help="re-score the newest run of each hold-out")
    args, extra = parser.parse_known_args(argv)
    extra = [arg for arg in extra if arg != "--"]
    sources, negatives = dict(args.source), dict(args.negatives)
    everything = {**sources, **negatives}
    unknown = [name for name in args.hold_out if name not in everything]
    if unknown:
        parser.error(f"--hold_out {unknown[0]}: not a --source or --negatives name ({', '.join(everything)})")
    task = Path(args.config).stem
    for held_out in args.hold_out:
        name = f"{task}_without_{held_out}"
        if not args.evaluate_only:
            roots = [root for source, root in sources.items() if source != held_out]
            healthy = [root for source, root in negatives.items() if source != held_out]
            command = [sys.executable, "train.py", "--config", args.config, "--data.root", f"[{', '.join(roots)}]",
                       "--trainer.default_root_dir", args.root_dir, "--trainer.logger.init_args.name", name,
                       "--trainer.enable_progress_bar", "false"]  # fmt: skip
            if healthy:
                command += ["--data.negatives", f"[{', '.join(healthy)}]"]
            run(command + extra)
        trained = newest_run(Path(args.root_dir) / name)
        if trained is None:
            raise SystemExit(f"error: {Path(args.root_dir) / name}: no run to evaluate")
        for source, root in [(held_out, everything[held_out]), *args.evaluate_also]:
            output = trained / f"evaluation_{source}"
            run([sys.executable, "evaluate.py", "--ckpt_path", str(trained), "--data_root", root,
                 "--output_dir", str(output)])  # fmt: skip


if __name__ == "__main__":
    main()
