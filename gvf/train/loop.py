"""Trainer utilities shared by the VAE and diffusion trainers (the loop itself: `gvf.train.trainer`).

* `build_accelerator`: an accelerate `Accelerator` (mixed precision no/fp16/bf16, gradient
  accumulation, DDP, TensorBoard tracker in ``<run_dir>/tb``).
* `seed_everything`: python / numpy / torch seeded with ``seed + rank``.
* `linear_warmup`: a `LambdaLR` that ramps one optimizer's lr linearly over its own steps. Each
  optimizer gets its own, stepped only when that optimizer steps (so no optimizer borrows another's
  warm-up, and the schedule does not advance once per process as a prepared scheduler would).
* `ShardedSampler` + `DataStream`: an endless, sharded, resumable stream of batches. The sampler is a
  `DistributedSampler` over the accelerate processes that can start an epoch part-way; the stream
  counts epochs and batches and its `state_dict` is the data position of a checkpoint. Items are
  pure functions of (seed, epoch, index) (the datasets seed per item), so a resumed run sees exactly
  the batches an uninterrupted one would.
* `optimizer_step`: clipping, optimizer and scheduler steps and EMA updates, done only when
  accelerate synchronises gradients (the last micro-batch of an accumulation) and the step was
  not skipped by the fp16 grad scaler.
* `ProgressBar` (tqdm on rank 0 with loss and it/s), `save_image_grid` (preview PNGs),
  `flat_config` (scalars for the tracker's hparams), `Averager` (scalar means between log steps).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gvf.utils.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "build_accelerator",
    "seed_everything",
    "LinearWarmup",
    "linear_warmup",
    "ShardedSampler",
    "DataStream",
    "StepResult",
    "optimizer_step",
    "ProgressBar",
    "Averager",
    "save_image_grid",
    "flat_config",
    "setup_logging",
]


# ------------------------------------------------------------------------------------- process


def setup_logging(is_main: bool, level: int = logging.INFO) -> None:
    """Log INFO on rank 0 and WARNING elsewhere (scripts call this once)."""
    logging.basicConfig(level=level if is_main else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def build_accelerator(
    mixed_precision: str = "no",
    gradient_accumulation_steps: int = 1,
    run_dir: str | os.PathLike | None = None,
    log_with: str | None = "tensorboard",
    find_unused_parameters: bool = False,
    cpu: bool = False,
):
    """An `Accelerator` for one run.

    Args:
        mixed_precision: "no", "fp16" (autocast + grad scaler) or "bf16" (autocast).
        gradient_accumulation_steps: micro-batches per optimizer step.
        run_dir: project directory; TensorBoard logs go to ``<run_dir>/tb``.
        log_with: "tensorboard" or None (no tracker).
        find_unused_parameters: DDP option (off: every parameter gets a gradient each step).
        cpu: force the CPU.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {mixed_precision!r}")
    if int(gradient_accumulation_steps) < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}")
    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one process-wide state; a single-process caller that builds a second
        # Accelerator (tests, a script running two stages) may change its settings.
        AcceleratorState._reset_state(reset_partial_state=True)
    project = None
    if run_dir is not None:
        project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / "tb"))
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=int(gradient_accumulation_steps),
        log_with=log_with if (log_with and run_dir is not None) else None,
        project_config=project,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        cpu=cpu,
    )


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (all devices) with ``seed + rank``; returns that seed.

    The trainers seed with ``seed`` while building models (identical initial weights and EMA copies
    on every rank), then with ``seed + rank`` for the per-rank training randomness."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


# ------------------------------------------------------------------------------------ schedules


class LinearWarmup:
    """lr factor (s + 1) / warmup_steps for the first steps, then 1 (a picklable LambdaLR lambda).

    Step s is the number of optimizer steps already taken, so the first update uses lr/warmup
    rather than 0 (upstream's s / warmup wastes the first step).
    """

    def __init__(self, warmup_steps: int):
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / self.warmup_steps)


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` with `LinearWarmup` for `optimizer`; step it after each of its optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LinearWarmup(warmup_steps))


# ------------------------------------------------------------------------------------------ data


class ShardedSampler(DistributedSampler):
    """`DistributedSampler` (shuffled per epoch with ``seed + epoch``, padded to equal shards) that can
    skip the first `start` indices of this rank's shard for one epoch (resumption)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip this many of the epoch's indices (reset to 0 by `set_epoch`)."""
        if not 0 <= int(start) <= self.num_samples:
            raise ValueError(f"start must lie in [0, {self.num_samples}], got {start}")
        self.start = int(start)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class DataStream:
    """Endless batches of a dataset, sharded over processes, with a resumable position.

    The dataset may define ``set_epoch(epoch)`` (per-item randomness depends on it). The position is
    (epoch, batches of this rank consumed in the epoch); `state_dict` / `load_state_dict` carry it.

    Args:
        dataset: map-style dataset.
        batch_size: per process.
        collate_fn: batch builder.
        num_workers: DataLoader workers (0 = in this process).
        seed: shuffling seed (the same on every rank).
        num_replicas, rank: data-parallel world size and this rank.
        shuffle: shuffle per epoch.
        pin_memory: pin host memory (CUDA runs).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate_fn: Callable | None = None,
        *,
        num_workers: int = 0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        pin_memory: bool = False,
    ):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.sampler = ShardedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        if self.sampler.num_samples < self.batch_size:
            raise ValueError(
                f"{len(dataset)} items over {num_replicas} process(es) give {self.sampler.num_samples} per process, "
                f"fewer than the batch size {self.batch_size}"
            )
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=int(num_workers),
            drop_last=True,
            pin_memory=pin_memory,
            # a private generator: creating an iterator must not consume the global torch RNG
            generator=torch.Generator().manual_seed(int(seed)),
            persistent_workers=False,
        )
        self.num_replicas = int(num_replicas)
        self.epoch = 0
        self.batches_in_epoch = 0
        self._iter = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.num_samples // self.batch_size

    def _start_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batches_in_epoch * self.batch_size)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        self._iter = iter(self.loader)

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self):
        while True:
            if self._iter is None:
                self._start_epoch()
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.batches_in_epoch = 0
                continue
            self.batches_in_epoch += 1
            return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "batch_size": self.batch_size,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state.get("batch_size", self.batch_size)) != self.batch_size or int(state.get("num_replicas", self.num_replicas)) != self.num_replicas:
            logger.warning(
                "data position saved with batch size %s on %s process(es), resumed with %d on %d: the epoch restarts",
                state.get("batch_size"), state.get("num_replicas"), self.batch_size, self.num_replicas,
            )
            self.epoch, self.batches_in_epoch = int(state["epoch"]) + 1, 0
        else:
            self.epoch, self.batches_in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
            if self.batches_in_epoch >= self.batches_per_epoch:
                self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        self._iter = None


# --------------------------------------------------------------------------------- optimisation


@dataclasses.dataclass
class StepResult:
    """What `optimizer_step` did: stepped (an optimizer update happened), grad_norm (before clipping)."""

    stepped: bool
    grad_norm: float | None = None


def optimizer_step(
    accelerator,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
    emas: Sequence[tuple[Any, nn.Module]] = (),
    clip_parameters: Sequence[torch.nn.Parameter] | None = None,
    grad_clip: float | None = 1.0,
) -> StepResult:
    """After ``accelerator.backward``: on the synchronising micro-batch, clip, step, update EMAs.

    Args:
        accelerator: the run's Accelerator (inside ``accelerator.accumulate(...)``).
        optimizers, schedulers: stepped together; schedulers only if the update was not skipped.
        emas: (EMA, unwrapped model) pairs updated after a real update only.
        clip_parameters: parameters whose joint gradient norm is clipped to `grad_clip`.
    Returns:
        StepResult(stepped=False) on accumulation micro-steps (nothing is touched).
    """
    if not accelerator.sync_gradients:
        return StepResult(False)
    grad_norm = None
    if clip_parameters is not None and grad_clip is not None and grad_clip > 0:
        grad_norm = accelerator.clip_grad_norm_(list(clip_parameters), grad_clip)
        grad_norm = float(grad_norm) if grad_norm is not None else None
    for opt in optimizers:
        opt.step()
    skipped = bool(accelerator.optimizer_step_was_skipped)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if skipped:
        logger.info("optimizer step skipped (non-finite fp16 gradients); EMA and schedules not advanced")
        return StepResult(False, grad_norm)
    for sched in schedulers:
        sched.step()
    for ema, model in emas:
        ema.update(model)
    return StepResult(True, grad_norm)


# ------------------------------------------------------------------------------------- reporting


class WallClock:
    """A wall-clock budget shared by all ranks: `spent(accelerator)` is True on every rank once any rank's
    budget is over (checked collectively, so that all ranks stop after the same step)."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * float(minutes)

    def spent(self, accelerator) -> bool:
        if self.deadline is None:
            return False
        flag = torch.tensor(float(time.monotonic() >= self.deadline), device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="max")
        return bool(flag.item())


class Averager:
    """Running means of named scalars between log steps."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, float | torch.Tensor]) -> None:
        for k, v in values.items():
            v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


class ProgressBar:
    """tqdm bar on rank 0 (steps, it/s, the latest loss); silent elsewhere or when disabled."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def save_image_grid(path: str | os.PathLike, rows: Sequence[Sequence[torch.Tensor]]) -> Path:
    """Save images (each (3, H, W) or (H, W, 3) in [0, 1], equal sizes) as one PNG, row by row."""
    from PIL import Image

    def to_hwc(img: torch.Tensor) -> np.ndarray:
        img = img.detach().float().cpu()
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
            img = img.permute(1, 2, 0)
        return (img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)

    grid = np.concatenate([np.concatenate([to_hwc(im) for im in row], axis=1) for row in rows], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp), suffix=".tmp.png")


def flat_config(cfg: Any, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A config dataclass flattened to dotted scalar entries (lists/None as strings) for trackers."""
    tree = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out
