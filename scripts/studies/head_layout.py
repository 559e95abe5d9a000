"""Milliseconds per learned-map training step (forward, focal loss, backward, Adam) on a ready random batch, for the
memory layouts and precisions PERFORMANCE.md compares: contiguous, channels-last, bf16 autocast, torch.compile.
Run alone on an idle machine:

    python scripts/studies/head_layout.py [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import compose
from pipeline.models.head import AnomalyHead, focal_loss


def ms_per_step(head: AnomalyHead, x: torch.Tensor, r: torch.Tensor, masks: torch.Tensor, autocast: bool = False,
                steps: int = 30, warmup: int = 5) -> float:
    optimizer = torch.optim.Adam(head.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = head(x, r)
        focal_loss(logits.float(), masks).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (about a minute to compile)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = compose([])
    widths, size, batch = tuple(cfg.head.widths), int(cfg.data.image_size), int(cfg.head.batch_size)
    x, r = torch.rand(batch, 1, size, size), torch.rand(batch, 1, size, size)
    masks = (torch.rand(batch, 1, size, size) > 0.97).float()
    rows = {"contiguous": ms_per_step(AnomalyHead(1, widths), x, r, masks),
            "channels-last": ms_per_step(AnomalyHead(1, widths, channels_last=True), x, r, masks),
            "bf16 autocast": ms_per_step(AnomalyHead(1, widths), x, r, masks, autocast=True)}
    if args.compile:
        rows["torch.compile"] = ms_per_step(torch.compile(AnomalyHead(1, widths)), x, r, masks)
    for name, ms in rows.items():
        print(f"{name:16s} {ms:7.1f} ms/step ({args.threads} threads)")


if __name__ == "__main__":
    main()
