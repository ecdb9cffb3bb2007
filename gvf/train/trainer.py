"""`Trainer`: the training loop, logging and checkpoint plumbing shared by the VAE and diffusion trainers.

The constructor checks the config (`check_config`, before anything is written), builds the
accelerator, seeds and saves the run config, lets the subclass `build` its models, EMAs, optimizer,
scheduler and data stream, then seeds per rank, creates the checkpoint manager, resumes and starts
the trackers. Besides `build`, a subclass fills in the hooks:

* `modules()` / `emas()`: the unwrapped models and their EMAs by checkpoint name;
* `prepared_modules()`: the accelerate-prepared models (accumulation context, ``train()`` mode);
* `compute_batch(batch)`: (loss, detached scalars) of one micro-batch;
* `step_targets()`: the (EMA, model) pairs to update and the parameters to clip this step;
* `periodic_interval` / `periodic()`: a rank-0 check every N steps (previews, sampling);
* `progress_postfix`, `log_extras`, `restore_schedule`: what the progress bar and the log show
  besides the loss, and how the lr schedule follows the current config after a resume.

The loop (`train`) runs optimizer steps until ``max_steps``; every ``train.log_interval`` steps it
logs the means since the last log (reduced over ranks) and checks the ``train.max_minutes`` budget;
it checkpoints every ``train.save_interval`` steps and once more at the end. Checkpoints hold
everything (`state_dict`); `load_checkpoint` restores it so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf
from torch import nn

from gvf.config import save_run_config, to_yaml_dict
from gvf.train.checkpointing import CheckpointManager, capture_rng_state, load_checkpoint_state, restore_rng_state
from gvf.train.ema import EMA
from gvf.train.loop import Averager, DataStream, ProgressBar, WallClock, build_accelerator, flat_config, optimizer_step, seed_everything

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "check_config_unchanged"]


class Trainer:
    """Base class of `VAETrainer` and `DiffusionTrainer` (see the module docstring for the hooks).

    Args:
        cfg: the experiment config (a dataclass with ``train`` and ``data`` sections).
        run_dir: outputs: config.yaml, command.txt, checkpoints/, tb/, and the subclass's previews.
        resume: checkpoint directory to continue from (see `gvf.train.checkpointing.resolve_checkpoint`).
        log_with: "tensorboard" or None.
        progress: show the tqdm bar (rank 0).
        argv: command line recorded in command.txt.
        cpu: run on the CPU even if a GPU is present.
    """

    kind: str = ""  # checkpoint "kind" and tracker project name
    label: str = ""  # name in messages ("VAE", "diffusion")
    resume_sections: tuple[str, ...] = ()  # config sections a resumed run must keep

    # ------------------------------------------------------------------------------- construction
    def __init__(
        self,
        cfg,
        run_dir: str | Path,
        *,
        resume: str | Path | None = None,
        log_with: str | None = "tensorboard",
        progress: bool = True,
        argv: Sequence[str] | None = None,
        cpu: bool = False,
    ):
        self.check_config(cfg)
        tc = cfg.train
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.accelerator = acc = build_accelerator(
            tc.mixed_precision, tc.gradient_accumulation_steps, self.run_dir, log_with, tc.find_unused_parameters, cpu=cpu
        )
        seed_everything(tc.seed)  # the same initial weights (and EMA copies) on every rank
        if acc.is_main_process:
            save_run_config(cfg, self.run_dir, argv)
        self.build()
        seed_everything(tc.seed, acc.process_index)  # per-rank training randomness
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints",
            tc.keep_last,
            process_index=acc.process_index,
            is_main=acc.is_main_process,
            barrier=acc.wait_for_everyone if acc.num_processes > 1 else None,
        )
        self.step = 0
        if resume is not None:
            self.load_checkpoint(resume)
        if log_with:
            acc.init_trackers(self.kind, config=flat_config(cfg))

    def check_config(self, cfg) -> None:
        """Raise ValueError for an inconsistent config (called before anything is built or written)."""

    def build(self) -> None:
        """Build models, EMAs, ``optimizer``, ``scheduler`` and ``data`` and ``accelerator.prepare`` them."""
        raise NotImplementedError

    def _data_stream(self, dataset, collate_fn) -> DataStream:
        """The endless, sharded, resumable batch stream of a training dataset."""
        acc, tc = self.accelerator, self.cfg.train
        return DataStream(
            dataset,
            tc.batch_size,
            collate_fn,
            num_workers=self.cfg.data.num_workers,
            seed=tc.seed,
            num_replicas=acc.num_processes,
            rank=acc.process_index,
            pin_memory=acc.device.type == "cuda",
        )

    # ------------------------------------------------------------------------------- hooks
    def modules(self) -> dict[str, nn.Module]:
        """Unwrapped models by checkpoint name."""
        raise NotImplementedError

    def emas(self) -> dict[str, EMA]:
        """EMAs by checkpoint name (the same names as `modules`)."""
        raise NotImplementedError

    def prepared_modules(self) -> list[nn.Module]:
        """The accelerate-prepared models that train."""
        raise NotImplementedError

    def compute_batch(self, batch: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        """(loss, detached scalars incl. "loss") of one micro-batch."""
        raise NotImplementedError

    def step_targets(self) -> tuple[list[tuple[EMA, nn.Module]], list[nn.Parameter]]:
        """((EMA, unwrapped model) pairs to update, parameters to clip) of the current step."""
        raise NotImplementedError

    @property
    def periodic_interval(self) -> int:
        """Steps between `periodic` calls (0: never)."""
        return 0

    def periodic(self) -> None:
        """Rank-0 work every `periodic_interval` steps (previews, sampling checks)."""

    def progress_postfix(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Progress-bar fields besides the loss."""
        return {}

    def log_extras(self, logs: dict[str, Any]) -> None:
        """Add learning rates etc. to a log record."""

    def restore_schedule(self) -> None:
        """After a resume: make the scheduler follow the current config (not the saved lambda fields)."""

    # ------------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One optimizer step (``gradient_accumulation_steps`` micro-batches). Returns mean scalars,
        ``grad_norm`` (before clipping, when clipped) and ``stepped`` (1.0 after a real update)."""
        acc, tc = self.accelerator, self.cfg.train
        models = self.prepared_modules()
        for m in models:
            m.train()
        avg = Averager()
        result = None
        for _ in range(tc.gradient_accumulation_steps):
            batch = next(self.data)
            with acc.accumulate(*models):
                loss, scalars = self.compute_batch(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite {self.label} loss at step {self.step}: {float(loss)}")
                acc.backward(loss)
                emas, params = self.step_targets()
                result = optimizer_step(acc, [self.optimizer], [self.scheduler], emas, params, tc.grad_clip)
            avg.add(scalars)
        metrics = avg.means()
        if result is not None and result.grad_norm is not None:
            metrics["grad_norm"] = result.grad_norm
        metrics["stepped"] = float(bool(result and result.stepped))
        return metrics

    # ------------------------------------------------------------------------------- the loop
    def train(self, max_steps: int | None = None) -> list[float]:
        """Train until `max_steps` optimizer steps (default ``train.max_steps``).

        Returns:
            the loss of every step run by this call (rank-local mean over micro-batches).
        """
        acc, tc = self.accelerator, self.cfg.train
        max_steps = int(tc.max_steps if max_steps is None else max_steps)
        bar = ProgressBar(max_steps, self.step, enabled=self.progress and acc.is_main_process, desc=self.kind)
        log_avg = Averager()
        history: list[float] = []
        saved_at = None
        t0 = time.perf_counter()
        clock = WallClock(tc.max_minutes)
        while self.step < max_steps:
            metrics = self.train_step()
            self.step += 1
            history.append(metrics["loss"])
            log_avg.add({k: v for k, v in metrics.items() if k != "stepped"})
            bar.update(1, loss=metrics["loss"], **self.progress_postfix(metrics))
            log_now = tc.log_interval > 0 and self.step % tc.log_interval == 0
            if log_now:
                self._log(log_avg, time.perf_counter() - t0)
                log_avg.reset()
                t0 = time.perf_counter()
            if self.periodic_interval > 0 and self.step % self.periodic_interval == 0 and acc.is_main_process:
                self.periodic()
            if tc.save_interval > 0 and self.step % tc.save_interval == 0:
                self.save_checkpoint()
                saved_at = self.step
            if log_now and clock.spent(acc):
                logger.info("train.max_minutes (%s) spent at step %d: stopping", tc.max_minutes, self.step)
                break
        if saved_at != self.step and history:
            self.save_checkpoint()
        bar.close()
        return history

    def _log(self, avg: Averager, seconds: float) -> None:
        """Log the means since the last log (averaged over ranks), lr, epoch and speed."""
        acc = self.accelerator
        means = avg.means()
        keys = sorted(means)
        values = torch.tensor([means[k] for k in keys], device=acc.device, dtype=torch.float64)
        if acc.num_processes > 1:
            values = acc.reduce(values, reduction="mean")
        logs = dict(zip(keys, values.tolist()))
        self.log_extras(logs)
        logs["epoch"] = self.data.epoch
        logs["steps_per_second"] = self.cfg.train.log_interval / max(seconds, 1e-9)
        acc.log(logs, step=self.step)
        if acc.is_main_process:
            logger.info("step %d: loss %.5f", self.step, logs.get("loss", math.nan))

    # ------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        acc = self.accelerator
        return {
            "kind": self.kind,
            "models": {name: m.state_dict() for name, m in self.modules().items()},
            "ema": {name: e.state_dict() for name, e in self.emas().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "data": self.data.state_dict(),
            "config_yaml": OmegaConf.to_yaml(OmegaConf.create(to_yaml_dict(self.cfg)), sort_keys=False),
            "world_size": acc.num_processes,
        }

    def save_checkpoint(self) -> Path:
        """Atomic checkpoint of everything at the current step (all ranks call this)."""
        return self.checkpoints.save(self.step, self.state_dict() if self.accelerator.is_main_process else {}, capture_rng_state())

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore models, EMAs, optimizer, scheduler, scaler, data position, step and RNG states."""
        acc = self.accelerator
        state, rng = load_checkpoint_state(path, acc.process_index)
        if state.get("kind") != self.kind:
            raise ValueError(f"{path} is a {state.get('kind')!r} checkpoint, not a {self.label} training checkpoint")
        check_config_unchanged(state.get("config_yaml"), self.cfg, self.resume_sections, path)
        for name, module in self.modules().items():
            module.load_state_dict(state["models"][name])
        for name, ema in self.emas().items():
            ema.load_state_dict(state["ema"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.restore_schedule()
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])
        self.data.load_state_dict(state["data"])
        self.step = int(state["step"])
        if rng is not None:
            restore_rng_state(rng)
        logger.info("resumed from %s at step %d", path, self.step)

    def close(self) -> None:
        self.accelerator.end_training()


def check_config_unchanged(saved_yaml: str | None, cfg, sections: Sequence[str], path) -> None:
    """Raise ValueError if a checkpoint's config differs from `cfg` in any of `sections`."""
    if not saved_yaml:
        return
    saved = OmegaConf.to_container(OmegaConf.create(saved_yaml))
    now = to_yaml_dict(cfg)
    changed = [s for s in sections if saved.get(s) != now.get(s)]
    if changed:
        raise ValueError(f"{path} was trained with different {', '.join(changed)} sections; resume with the run's own config")
