"""Command-line helpers of the training scripts (train_vae.py, train_diffusion.py, scripts/*.py).

* `script_parser`: an `argparse` parser whose help is the script's docstring, kept as written.
* `train_main`: the whole CLI of a trainer (flags below); exit codes 0 (done) and 2 (bad config,
  missing checkpoint, or a ValueError / FileNotFoundError while building or training), with the
  reason on stderr.

    --config PATH        experiment YAML (required)
    --run-dir DIR        output directory (default runs/<config name>)
    --resume auto|PATH   'auto' = latest checkpoint of --run-dir, if any
    --max-steps N        override train.max_steps
    --no-tensorboard, --no-progress, --cpu
    dotted.key=value ... config overrides
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["script_parser", "train_main"]


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is `doc` (a script's ``__doc__``), line breaks kept."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def _train_parser(doc: str | None, schema: type) -> argparse.ArgumentParser:
    p = script_parser(doc)
    p.add_argument("--config", required=True, help=f"experiment YAML ({schema.__name__})")
    p.add_argument("--run-dir", default=None, help="output directory (default runs/<config name>)")
    p.add_argument("--resume", default=None, help="'auto' (latest checkpoint of --run-dir, if any) or a checkpoint path")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logging")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=1e-4")
    return p


def train_main(schema: type, trainer: str, script: str, doc: str | None, argv: Sequence[str] | None = None) -> int:
    """Parse the command line, load the config, build the trainer and train; returns the exit code.

    Args:
        schema: the experiment config dataclass (e.g. `VAEExperimentConfig`).
        trainer: "module:Class" of the trainer (imported only once the config is valid).
        script: the script's file name, recorded in command.txt when `argv` is given.
        doc: the script's docstring (--help).
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    from gvf.config import ConfigError, load_config
    from gvf.train.checkpointing import resolve_checkpoint
    from gvf.train.loop import setup_logging

    args = _train_parser(doc, schema).parse_args(argv)
    overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps is not None else [])
    try:
        cfg = load_config(args.config, schema, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    try:
        resume = resolve_checkpoint(args.resume, run_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    module, name = trainer.split(":")
    trainer_cls = getattr(importlib.import_module(module), name)

    setup_logging(os.environ.get("RANK", "0") == "0")
    run = None
    try:
        run = trainer_cls(cfg, run_dir, resume=resume, log_with=None if args.no_tensorboard else "tensorboard",
                          progress=not args.no_progress, cpu=args.cpu,
                          argv=[sys.executable, *(sys.argv if argv is None else [script, *argv])])
        run.train()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if run is not None:
            run.close()
    return 0
