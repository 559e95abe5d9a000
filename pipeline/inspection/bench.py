"""Inspection benchmark: `python -m pipeline.inspection.bench [--n 200] [--out docs/inspection-benchmark.md]`.

In one run it measures (1) the raw model forward throughput (detector.score_batch on in-memory
tensors, images/s), (2) the inspection CLI's end-to-end throughput on an inbox of N and of 10N PNG
images, and (3) the CLI process's peak RSS for both (os.wait4 on the child), with the default model
architecture and image size. The model is untrained: its weights do not change the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import compose, project_root
from pipeline.models.factory import build_network
from pipeline.scoring.scores import SCORE_NAMES
from pipeline.scoring.detector import AnomalyDetector, DetectorSpec


def make_detector(cfg, folder: Path) -> AnomalyDetector:
    torch.manual_seed(0)
    spec = DetectorSpec(model_kind=cfg.model.kind, in_channels=cfg.data.channels, image_size=cfg.data.image_size,
                        latent_dim=cfg.model.latent_dim, hidden_channels=list(cfg.model.hidden_channels),
                        latent_layout=cfg.model.latent_layout, recon_loss=cfg.model.recon_loss, score=cfg.score.score,
                        map_kind=cfg.score.map, mc_samples=cfg.score.mc_samples, alpha=0.01)
    detector = AnomalyDetector(build_network(cfg.model.kind, cfg.data.channels, cfg.data.image_size, cfg.model.latent_dim,
                                             cfg.model.hidden_channels, cfg.model.latent_layout), spec)
    detector.fit_map_statistics(torch.rand(64, cfg.data.channels, cfg.data.image_size, cfg.data.image_size), 32)
    rng = np.random.default_rng(0)
    detector.calibrate({name: rng.uniform(0.0, 0.01, 200) for name in SCORE_NAMES})
    detector.save(folder)
    return detector


def forward_throughput(detector: AnomalyDetector, image_size: int, channels: int, batch_size: int,
                       n_batches: int = 20) -> float:
    x = torch.rand(batch_size, channels, image_size, image_size)  # (B, C, S, S)
    detector.score_batch(x)  # warm-up
    started = time.perf_counter()
    for _ in range(n_batches):
        detector.score_batch(x)
    return batch_size * n_batches / (time.perf_counter() - started)


def fill_inbox(inbox: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = inbox / f"cam{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def run_inspection(inbox: Path, out: Path, detector_dir: Path) -> dict:
    command = [sys.executable, "-m", "pipeline", "inspect", f"inspect.inbox={inbox}", f"inspect.output_dir={out}",
               f"inspect.model={detector_dir}", "tracking.enabled=false", "inspect.min_age_seconds=0"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=project_root(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    summary = json.loads(stdout)
    return {"n": summary["n_scored"], "wall_seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
            "exit_code": os.waitstatus_to_exitcode(status), "batch_images_per_second":
            float(np.mean([b["images_per_second"] for b in summary["batches"]])),
            "end_to_end_images_per_second": summary["n_scored"] / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="N: the small inbox; the large one holds 10N")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as markdown here")
    args = parser.parse_args(argv)
    cfg = compose([])
    with tempfile.TemporaryDirectory(prefix="inspect-bench-") as tmp:
        tmp = Path(tmp)
        detector = make_detector(cfg, tmp / "detector")
        forward = forward_throughput(detector, cfg.data.image_size, cfg.data.channels, cfg.data.batch_size)
        rows = []
        for n in (args.n, 10 * args.n):
            fill_inbox(tmp / f"inbox{n}", n, cfg.data.generate.image_size)
            rows.append(run_inspection(tmp / f"inbox{n}", tmp / f"out{n}", tmp / "detector"))
    result = {"forward_images_per_second": forward, "image_size": cfg.data.image_size,
              "source_image_size": cfg.data.generate.image_size, "batch_size": cfg.data.batch_size,
              "max_batch_images": cfg.inspect.max_batch_images, "torch_threads": torch.get_num_threads(),
              "inspections": rows}
    print(json.dumps(result, indent=1))
    if args.out:
        lines = [f"| inbox | images/s in batches | images/s end to end (incl. start-up) | peak RSS (MB) |",
                 "|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['batch_images_per_second']:.1f} | {r['end_to_end_images_per_second']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} |" for r in rows]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join([f"raw forward (score_batch, batch {cfg.data.batch_size}, "
                                       f"{cfg.data.image_size}px): {forward:.1f} images/s", "", *lines, ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
