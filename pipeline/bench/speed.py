"""Throughput of the pipeline against the raw model, measured in the same process and run.

Training: the real `run_train` (Lightning, checkpoints, MLflow to a throw-away store) vs a minimal PyTorch loop
over the same in-memory images, same network, loss, optimizer and batch size, doing the same per-epoch work (one
pass over the training images, one validation pass); the first epoch of each is warm-up. The learned map's
training is reported as its own steps per second.

Scoring: `score_files` end to end (read and decode files, the detector's batch computation, maps at the
original resolution, write .npy) vs the same batch computation on in-memory tensors, and vs the bare forward of
its networks (encoder, posterior-mean decoder, learned map); plus the network calls each image costs and the
time of each stage, so the bottleneck is visible.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from pipeline.commands.train import run_train
from pipeline.data.conditional import build_datamodule
from pipeline.data.datasets import ImageDataset
from pipeline.data.layout import Sample
from pipeline.detector import AnomalyDetector
from pipeline.detector.files import map_file, save_map, score_files
from pipeline.models.factory import build_network
from pipeline.models.head import AnomalyHead, focal_loss
from pipeline.models.loss import kl_divergence, kl_weight, reconstruction_nll
from pipeline.models.two_level import restore
from pipeline.scoring.maps import defect_regions, resize_map
from pipeline.training.fit import head_synthesizers
from pipeline.training.head_module import reconstruct
from pipeline.training.optimizers import adam


def _now() -> tuple[float, float]:
    """(wall, CPU) clocks. CPU time of this process (all its threads) is far less disturbed than wall time
    when other jobs share the cores, so every figure is reported in both."""
    return time.perf_counter(), time.process_time()


def _since(started: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since `started` (a _now())."""
    return tuple(now - then for now, then in zip(_now(), started))


def _rate_of(n: int, wall: float, cpu: float) -> dict:
    return {"seconds": wall, "cpu_seconds": cpu, "images_per_second": n / max(wall, 1e-9),
            "images_per_cpu_second": n / max(cpu, 1e-9)}


class EpochTimer(pl.Callback):
    """Wall-clock and CPU time of each epoch, validation and checkpointing included."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(_now())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(_now())

    @property
    def epochs(self) -> list[tuple[float, float]]:
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:])]


def _counted(epochs: list[tuple[float, float]], n_images: int) -> dict:
    """Throughput over the epochs after the first (warm-up); epochs = [(wall, cpu) seconds]."""
    timed = epochs[1:] or epochs
    wall, cpu = sum(e[0] for e in timed), sum(e[1] for e in timed)
    return {"epoch_seconds": [round(e[0], 3) for e in epochs],
            "images_per_second": n_images * len(timed) / max(wall, 1e-9),
            "images_per_cpu_second": n_images * len(timed) / max(cpu, 1e-9)}


def raw_training(cfg: DictConfig, train_images: torch.Tensor, val_images: torch.Tensor, epochs: int) -> dict:
    """The minimal loop: the same network, loss, Adam and batch size over in-memory tensors."""
    torch.manual_seed(cfg.seed)
    m = cfg.model
    net = build_network(m.kind, cfg.data.channels, cfg.data.image_size, m.latent_dim, m.hidden_channels, m.latent_layout)
    optimizer = adam(net.parameters(), m.lr, m.weight_decay)
    batch, n = cfg.data.batch_size, len(train_images)
    steps = n // batch if n > batch else 1  # drop_last, as the datamodule does

    def losses(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = net.encode(x)
        if log_var is None:
            return reconstruction_nll(net.decode(mu), x, m.recon_loss).mean(), x.new_zeros(())
        z = net.reparameterize(mu, log_var)
        return reconstruction_nll(net.decode(z), x, m.recon_loss).mean(), kl_divergence(mu, log_var).mean()

    seconds = []
    for epoch in range(epochs):
        started = _now()
        net.train()
        order = torch.randperm(n)
        for step in range(steps):
            recon, kl = losses(train_images[order[step * batch:(step + 1) * batch]])  # (B, C, S, S)
            loss = recon + kl_weight(epoch, m.beta, m.kl_warmup_epochs) * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            for start in range(0, len(val_images), batch):
                losses(val_images[start:start + batch])
        seconds.append(_since(started))
    return _counted(seconds, n)


def training_throughput(cfg: DictConfig) -> dict:
    """Pipeline vs raw loop on the same data; efficiency = pipeline / raw images per second (the VAE's fit), and
    the learned map's steps per second."""
    timer = EpochTimer()
    summary = run_train(cfg, extra_callbacks=[timer])
    piped = _counted(timer.epochs, summary["sizes"]["n_train"])
    datamodule = build_datamodule(cfg, Path(cfg.data.root))
    datamodule.setup("fit")
    raw = raw_training(cfg, datamodule.train_images, datamodule.selection_images, cfg.trainer.max_epochs)
    head = {}
    if cfg.head.enabled:
        head = head_ready_batch(cfg, AnomalyDetector.load(summary["detector_dir"]), datamodule.train_images)
        head["step_seconds"] = summary["head_seconds"] / summary["head_steps"]
        head["ratio"] = head["ready_step_seconds"] / head["step_seconds"]
    return {"pipeline": piped, "raw": raw, "n_train": summary["sizes"]["n_train"], "batch_size": cfg.data.batch_size,
            "epochs": cfg.trainer.max_epochs, "efficiency": piped["images_per_second"] / raw["images_per_second"],
            "efficiency_cpu": piped["images_per_cpu_second"] / raw["images_per_cpu_second"],
            "head_steps": summary["head_steps"], "head_seconds": summary["head_seconds"],
            "head_step": head,
            "detector_dir": summary["detector_dir"]}


def head_ready_batch(cfg: DictConfig, detector: AnomalyDetector, train_images: torch.Tensor, steps: int = 20) -> dict:
    """Seconds per learned-map step on a ready batch (anomalies drawn and reconstructed beforehand): the same head,
    focal loss and Adam as the product's step, nothing else; and what drawing and reconstructing one batch costs."""
    h = cfg.head
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = train_images[torch.randint(len(train_images), (int(h.batch_size),), generator=generator)]
    synthesizer, _ = head_synthesizers(h.synthesis)
    started = _now()
    drawn = [synthesizer(batch, train_images, generator) for _ in range(steps)]
    synthesis = _now()
    ready = [(altered, masks, reconstruct(detector.vae, altered)) for altered, masks, _ in drawn]
    reconstruction = _now()
    head = AnomalyHead(train_images.shape[1], h.widths, bool(h.get("channels_last", False)))
    optimizer = adam(head.parameters(), float(h.lr))

    def step(altered: torch.Tensor, masks: torch.Tensor, x_hat: torch.Tensor) -> None:
        loss = focal_loss(head(altered, x_hat), masks, float(h.focal_gamma))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator, thread pools, the layout's kernels
        step(*ready[0])
    started_steps = _now()
    for batch_ready in ready:
        step(*batch_ready)
    return {"ready_step_seconds": _since(started_steps)[0] / steps,
            "synthesis_seconds": (synthesis[0] - started[0]) / steps,
            "reconstruction_seconds": (reconstruction[0] - synthesis[0]) / steps}


def _rate(n: int, started: tuple[float, float]) -> dict:
    return _rate_of(n, *_since(started))


def network_calls(detector: AnomalyDetector, images: torch.Tensor, batch: int) -> dict[str, float]:
    """Images passed through each network per scored image, counted with forward hooks during one `score`."""
    counts, hooks = Counter(), []
    modules = {"encoder": detector.vae.encoder, "decoder": detector.vae.decoder}
    if getattr(detector.vae, "local", None) is not None:  # the two-level VAE's restoring level
        modules["local level"] = detector.vae.local.encoder
    if detector.head is not None:
        modules["learned map"] = detector.head
    if detector.linear is not None:
        modules["linear level"] = detector.linear
    for name, module in modules.items():
        hooks.append(module.register_forward_hook(
            lambda mod, args, out, name=name: counts.update({name: int(args[0].shape[0])})))
    try:
        detector.score(images, batch_size=batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: counts[name] / len(images) for name in modules}


def bare_forward(detector: AnomalyDetector, images: torch.Tensor, batch: int) -> None:
    """The detector's networks only, once each per image: the least any scorer of this model must compute."""
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = images[start:start + batch]
            mu, _ = detector.vae.encode(x)
            x_hat = restore(detector.vae, x, mu, detector.vae.decode(mu))  # the local level's, where there is one
            if detector.head is not None:
                detector.head(x, x_hat)
            if detector.linear is not None:
                detector.linear(x)


def _median_rate(n: int, runs: list[tuple[float, float]]) -> dict:
    """The run of median wall time among `runs` [(wall, cpu) seconds], as _rate reports it, with every run's wall time."""
    return {**_rate_of(n, *sorted(runs)[len(runs) // 2]), "runs_seconds": [round(r[0], 3) for r in runs]}


def scoring_throughput(detector: AnomalyDetector, samples: list[Sample], work: Path, batch: int,
                       num_workers: int, warmup_batches: int, repeats: int = 3,
                       references: dict[str, AnomalyDetector] | None = None) -> dict:
    """End-to-end scoring vs the same batch computation in memory vs the bare networks, and each stage's cost.
    The three paths run `repeats` times, interleaved, and each reports its median run: one run of each is as
    likely to catch a disturbance (a cache filled, another process) as the thing measured. `references`: other
    detectors timed end to end in the same loop (e.g. an earlier default), each with the detector's rate over theirs."""
    references = references or {}
    for name, other in {"": detector, **references}.items():
        score_files(other, samples[:max(1, warmup_batches) * batch], work / f"warmup{name}", batch, num_workers)

    started = _now()  # stage 1, decode: read every file through the same Dataset and DataLoader, no model
    decoded, sizes = [], []
    for item in DataLoader(ImageDataset(samples, detector.spec.image_size, detector.spec.read_options),
                           batch_size=batch, shuffle=False, num_workers=num_workers):
        decoded.append(item["image"])
        sizes += [tuple(hw) for hw in item["orig_hw"].tolist()]
    decode = _rate(len(samples), started)
    images = torch.cat(decoded)  # (N, C, S, S)

    runs: dict[str, list[tuple[float, float]]] = {"end_to_end": [], "same_work": [], "bare": []}
    reference_runs: dict[str, list[tuple[float, float]]] = {name: [] for name in references}
    for repeat in range(max(1, repeats)):
        started = _now()
        score_files(detector, samples, work / f"end_to_end-{repeat}", batch, num_workers)
        runs["end_to_end"].append(_since(started))
        for name, other in references.items():
            started = _now()
            score_files(other, samples, work / f"{name}-{repeat}", batch, num_workers)
            reference_runs[name].append(_since(started))
        started = _now()  # stage 2, forward: the detector's batch computation on in-memory tensors
        maps = detector.score(images, batch_size=batch)["map"]
        runs["same_work"].append(_since(started))
        started = _now()
        bare_forward(detector, images, batch)
        runs["bare"].append(_since(started))
    end_to_end, forward, bare = (_median_rate(len(samples), runs[k]) for k in ("end_to_end", "same_work", "bare"))
    reference_rates = {name: _median_rate(len(samples), r) for name, r in reference_runs.items()}
    maps = torch.from_numpy(maps)

    started = _now()  # stage 3, maps: resize to the original resolution and find defect regions, per image
    full = [resize_map(m, hw).numpy() for m, hw in zip(maps, sizes)]
    for f in full:
        defect_regions(f, detector.spec.pixel_threshold)
    map_stage = _rate(len(samples), started)
    started = _now()  # stage 4, writing: one float16 .npy per image
    for sample, f in zip(samples, full):
        save_map(map_file(work / "stage_write", sample.rel_path), f)
    write = _rate(len(samples), started)

    return {"n_images": len(samples), "batch_size": batch, "num_workers": num_workers, "repeats": max(1, repeats),
            "network_calls_per_image": network_calls(detector, images[:4 * batch], batch),
            "end_to_end": end_to_end, "raw_same_work": forward, "raw_bare_forward": bare,
            **{f"ratio_{name}{suffix}": end_to_end[key] / raw[key]
               for name, raw in (("same_work", forward), ("bare_forward", bare))
               for suffix, key in (("", "images_per_second"), ("_cpu", "images_per_cpu_second"))},
            "references": {name: {**rate, "ratio": end_to_end["images_per_second"] / rate["images_per_second"]}
                           for name, rate in reference_rates.items()},
            "stages": {"decode": decode, "forward": forward, "maps": map_stage, "write": write}}
