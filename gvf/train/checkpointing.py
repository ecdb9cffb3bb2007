"""Atomic, complete training checkpoints.

Layout of a run's checkpoint directory::

    checkpoints/
        step_00001000/
            state.pt              models, EMAs, optimizers, schedulers, grad scaler, step, data
                                  position, resolved config (written by rank 0)
            rng_rank00000.pt      python / numpy / torch CPU / torch CUDA generator states, one per rank
            ...
        step_00002000/
        latest                    text file: the name of the newest complete checkpoint

Atomicity: a checkpoint is written into ``.tmp-step_XXXXXXXX/``, every file flushed to disk, and
the directory renamed into place; `latest` is replaced (temp file + ``os.replace``) only after that.
A crash at any point therefore leaves the previous checkpoint and `latest` untouched; stale temp
directories are removed by the next save. The newest `keep_last` checkpoints are kept.

All files load with ``torch.load(weights_only=True)``: states hold only tensors and plain Python
values (numpy's RNG state is converted to tensors and back).
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointManager",
    "capture_rng_state",
    "restore_rng_state",
    "resolve_checkpoint",
    "load_checkpoint_state",
]

CHECKPOINT_FORMAT = "gvf-train-v1"
STATE_FILE = "state.pt"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def _step_name(step: int) -> str:
    return f"step_{int(step):08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform/filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_torch(obj: Any, path: Path) -> None:
    """torch.save into `path`, flushed to disk (the caller renames the enclosing directory)."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


# ------------------------------------------------------------------------------------------ RNG


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if initialised) every CUDA generator's state, weights_only-safe."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    nps = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": nps["bit_generator"],
            "state": {"key": nps["key"].numpy().astype(np.uint32), "pos": int(nps["pos"])},
            "has_gauss": int(nps["has_gauss"]),
            "gauss": float(nps["gauss"]),
        }
    )
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            logger.warning("checkpoint holds %d CUDA generator states, this machine has %d devices; restoring the common ones",
                           len(cuda_states), torch.cuda.device_count())
        for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


# ------------------------------------------------------------------------------------ manager


class CheckpointManager:
    """Writes, finds and prunes the checkpoints of one run.

    Args:
        directory: the run's checkpoint directory (created).
        keep_last: number of newest checkpoints kept (>= 1).
        process_index, is_main: this process's rank and whether it is rank 0.
        barrier: called between the phases of a save when several processes take part
            (e.g. ``accelerator.wait_for_everyone``); None for a single process.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        keep_last: int = 3,
        *,
        process_index: int = 0,
        is_main: bool = True,
        barrier: Callable[[], None] | None = None,
    ):
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = int(keep_last)
        self.process_index = int(process_index)
        self.is_main = bool(is_main)
        self._barrier = barrier or (lambda: None)
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------------------------- queries
    def checkpoints(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]

    def latest(self) -> Path | None:
        """The checkpoint `latest` names (falling back to the newest complete one), or None."""
        pointer = self.directory / LATEST_FILE
        if pointer.is_file():
            path = self.directory / pointer.read_text().strip()
            if (path / STATE_FILE).is_file():
                return path
            logger.warning("%s names %s, which is not a complete checkpoint; using the newest complete one", pointer, path.name)
        found = self.checkpoints()
        return found[-1] if found else None

    # ----------------------------------------------------------------------------------- saving
    def save(self, step: int, state: Mapping[str, Any], rng_state: Mapping[str, Any] | None = None) -> Path:
        """Write one checkpoint; every process calls this (rank 0 writes `state`, each rank its RNG).

        Args:
            step: the optimizer step the state belongs to (names the directory).
            state: rank 0's training state (tensors and plain values; only rank 0's is written).
            rng_state: this rank's generator states (default: `capture_rng_state()`).
        Returns:
            the final checkpoint directory.
        """
        name = _step_name(step)
        final = self.directory / name
        tmp = self.directory / f".tmp-{name}"
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(".tmp-step_*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        self._barrier()
        failed = None
        try:
            _write_torch(dict(rng_state or capture_rng_state()), tmp / f"rng_rank{self.process_index:05d}.pt")
            if self.is_main:
                _write_torch({"format": CHECKPOINT_FORMAT, "step": int(step), **state}, tmp / STATE_FILE)
        except BaseException as err:  # noqa: BLE001 - re-raised after the other ranks are released
            failed = err
        self._barrier()
        if failed is not None:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise failed
        if self.is_main:
            _fsync_dir(tmp)
            old = None
            if final.exists():  # re-saving a step: move the old one aside until the new one is in place
                old = self.directory / f".old-{name}-{os.getpid()}"
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
            _write_text_atomic(self.directory / LATEST_FILE, name + "\n")
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self._prune(keep=final)
            logger.info("saved checkpoint %s", final)
        self._barrier()
        return final

    def _prune(self, keep: Path) -> None:
        found = self.checkpoints()
        for path in found[: max(0, len(found) - self.keep_last)]:
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)

    # ---------------------------------------------------------------------------------- loading
    def load(self, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(state, this rank's RNG state or None) of a checkpoint directory."""
        return load_checkpoint_state(path, self.process_index)


def load_checkpoint_state(path: str | os.PathLike, process_index: int | None = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read a checkpoint directory (or its state.pt).

    Args:
        path: a ``step_XXXXXXXX`` directory or the ``state.pt`` inside it.
        process_index: rank whose RNG file to read; None skips the RNG.
    Returns:
        (state dict, RNG state of that rank or None if absent).
    """
    path = Path(path)
    directory = path.parent if path.name == STATE_FILE else path
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{directory} is not a training checkpoint (no {STATE_FILE})")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{state_path} is not a {CHECKPOINT_FORMAT} checkpoint")
    rng = None
    if process_index is not None:
        rng_path = directory / f"rng_rank{int(process_index):05d}.pt"
        if rng_path.is_file():
            rng = torch.load(rng_path, map_location="cpu", weights_only=True)
        else:
            logger.warning("%s has no RNG state for rank %d; that rank continues with a fresh seed", directory, process_index)
    return state, rng


def resolve_checkpoint(resume: str | os.PathLike | None, run_dir: str | os.PathLike | None = None) -> Path | None:
    """Turn a ``--resume`` value into a checkpoint directory.

    Args:
        resume: None / "" (no resume), "auto" (the run's latest checkpoint, None if it has none), a
            checkpoint directory, its state.pt, a run directory or a ``checkpoints`` directory
            (their latest checkpoint).
        run_dir: the run directory "auto" refers to.
    Raises:
        FileNotFoundError: an explicit path that holds no checkpoint.
    """
    if resume is None or str(resume) == "":
        return None
    if str(resume) == "auto":
        if run_dir is None:
            raise ValueError("--resume auto needs a run directory")
        return CheckpointManager(Path(run_dir) / "checkpoints").latest() if (Path(run_dir) / "checkpoints").is_dir() else None
    path = Path(resume)
    if path.name == STATE_FILE and path.is_file():
        return path.parent
    if (path / STATE_FILE).is_file():
        return path
    for candidate in (path / "checkpoints", path):
        if candidate.is_dir():
            found = CheckpointManager(candidate).latest() if _has_checkpoints(candidate) else None
            if found is not None:
                return found
    raise FileNotFoundError(f"no training checkpoint at {path} (expected a step_XXXXXXXX directory, a run directory or 'auto')")


def _has_checkpoints(directory: Path) -> bool:
    return any(_STEP_DIR.match(p.name) for p in directory.iterdir()) or (directory / LATEST_FILE).is_file()
