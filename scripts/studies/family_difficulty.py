"""How hard a built-in family is for the product's plain autoencoder: generate the family into a temporary
folder (the defaults of conf/data/builtin.yaml `generate:`, seed 0), train the plain AE exactly as the bench
defines its `plain_ae` row (conf/bench/default.yaml `methods`), score the test split, print the metrics.

    OMP_NUM_THREADS=1 python scripts/studies/family_difficulty.py mesh [--keep DIR] [--quick]
        [--train-override trainer.max_epochs=5 ...]

The two commands run are the product's own (printed before they run):

    python -m pipeline train data.root=<tmp>/<family> <plain_ae overrides> tracking.enabled=false
        report.enabled=false output_root=<tmp>/out
    python -m pipeline score data.root=<tmp>/<family> tracking.enabled=false detector=<run>/detector
        score.allow_unable_to_flag=true output_root=<tmp>/out

`--quick` shrinks the data (300 train, 100 test good, 15 per defect) and training (8 epochs) for a fast,
rough signal while iterating; final numbers must come from a run without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's `pipeline`, not an installed one

from pipeline.data.generators import generate_category  # noqa: E402
QUICK_DATA = {"n_train": 300, "n_test_good": 100, "n_test_defect_per_type": 15}
QUICK_TRAIN = ["trainer.max_epochs=8", "trainer.min_epochs=8"]
VERBOSE = False  # --verbose: show the commands' own output


def plain_ae_overrides() -> list[str]:
    """The bench's plain-AE row, as written in conf/bench/default.yaml."""
    methods = OmegaConf.load(ROOT / "conf" / "bench" / "default.yaml").methods
    return [str(o) for o in methods.plain_ae]


def generate_defaults() -> dict:
    gen = OmegaConf.load(ROOT / "conf" / "data" / "builtin.yaml").generate
    return {k: int(gen[k]) for k in ("image_size", "n_train", "n_test_good", "n_test_defect_per_type")}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL if not VERBOSE else None)



def measure(family: str, work: Path, quick: bool, train_extra: list[str]) -> dict:
    sizes = generate_defaults()
    if quick:
        sizes.update(QUICK_DATA)
    data = work / "data"
    root = data / family if (data / family).exists() else generate_category(data, family, seed=0, **sizes)
    out = work / "out"
    py = [sys.executable, "-m", "pipeline"]
    common = [f"data.root={root}", "tracking.enabled=false", f"output_root={out}", "seed=0"]
    run(py + ["train", *common, *plain_ae_overrides(), "report.enabled=false", "trainer.enable_progress_bar=false",
              *(QUICK_TRAIN if quick else []), *train_extra])
    runs = sorted((out / "train" / family).iterdir(), key=lambda p: p.stat().st_mtime)
    run(py + ["score", *common, f"detector={runs[-1] / 'detector'}", "score.allow_unable_to_flag=true"])
    return json.loads((out / "score" / family / "metrics.json").read_text())


def main(argv: list[str]) -> int:
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--train-override", nargs="*", default=[])
    args = parser.parse_args(argv)
    VERBOSE = args.verbose
    if args.keep is not None:
        metrics = measure(args.family, args.keep, args.quick, args.train_override)
    else:
        with tempfile.TemporaryDirectory(prefix=f"difficulty-{args.family}-") as tmp:
            metrics = measure(args.family, Path(tmp), args.quick, args.train_override)
    print(json.dumps(metrics, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
