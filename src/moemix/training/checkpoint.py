"""Sharded, reshardable training checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under a run's checkpoint directory::

    step-00000100/      .metadata + one __<rank>_*.distcp file per rank (model + optimizer), and
                        trainer.pt (step, stream position, RNG, resume key; rank 0 writes it)
    latest              the name of the newest complete step directory (written last, atomically)

Every rank writes its own shard; DCP records each tensor's global shape and offsets, so a checkpoint
written by N ranks loads on M ranks, sharded or not (``get_state_dict``/``set_state_dict`` translate
between FSDP2's DTensors and plain tensors). A step directory is written under a ``.tmp`` name and renamed
once every rank has finished, then ``latest`` moves to it: a crash mid-save leaves the previous
checkpoint in force. The newest ``keep`` complete checkpoints are kept.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from moemix._io import write_text_atomic
from moemix.errors import MoemixError

log = logging.getLogger(__name__)

LATEST = "latest"
TRAINER_STATE = "trainer.pt"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``ckpt_dir``, or None."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if not pointer.exists():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    if not (path / ".metadata").exists() or not (path / TRAINER_STATE).exists():
        raise MoemixError(
            f"checkpoint {path} named by {pointer} is incomplete; delete {pointer} to start over"
        )
    return path


class Checkpointer:
    """Writes a run's checkpoints; every rank makes the same calls (they are collective).

    ``async_save``: the shards are copied to CPU at the step and written by a background thread while
    training goes on (DCP ``async_save``); the step directory is completed (renamed, ``latest`` moved) at
    the next checkpoint or at ``close``, once every rank's write is done.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        keep: int = 2,
        async_save: bool = False,
        on_complete: Callable[[Path, int], None] | None = None,
    ):
        self.dir = Path(ckpt_dir)
        self.keep = keep
        self.async_save = async_save
        self.on_complete = on_complete  # (directory, step) once a checkpoint is complete, on every rank
        self._pending: tuple[Any, Path, Path, int] | None = None  # (future, tmp dir, final dir, step)

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict[str, Any],
    ) -> None:
        """Checkpoint ``step`` (complete on return unless ``async_save``)."""
        self.wait()
        final = self.dir / step_dir_name(step)
        tmp = self.dir / (final.name + ".tmp")
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # what a crash mid-save left behind
            tmp.mkdir(parents=True, exist_ok=True)
            torch.save({"step": step, **trainer_state}, tmp / TRAINER_STATE)
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        if self.async_save:
            future = dcp.async_save(state, checkpoint_id=str(tmp), no_dist=not _distributed())
            self._pending = (future, tmp, final, step)
            return
        dcp.save(state, checkpoint_id=str(tmp), no_dist=not _distributed())
        self._complete(tmp, final, step)

    def wait(self) -> None:
        """Finish an async write still in flight."""
        if self._pending is None:
            return
        future, tmp, final, step = self._pending
        self._pending = None
        future.result()
        self._complete(tmp, final, step)

    close = wait

    def _complete(self, tmp: Path, final: Path, step: int) -> None:
        _barrier()  # every rank's shard is on disk
        if _rank() == 0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            write_text_atomic(self.dir / LATEST, final.name + "\n")
            _prune(self.dir, self.keep)
        _barrier()
        if self.on_complete is not None:
            self.on_complete(final, step)


def _prune(ckpt_dir: Path, keep: int) -> None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The step, stream position, RNG and resume key saved with checkpoint ``path`` (cheap: no tensors)."""
    return torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=False)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: loads ``path`` into ``model``/``optimizer`` as they are laid out now (any world size)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path), no_dist=not _distributed())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective for a sharded model: the whole state dict as plain CPU tensors (rank 0 gets it all)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)
