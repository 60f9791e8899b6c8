"""Checkpoints: safetensors weights plus a JSON record, written atomically, loaded safely.

A run directory holds

- ``checkpoint.json``: the family, its options, the training options, the data source, the
  step, the RNG states (base64), the optimisers' non-tensor state, and the name and SHA-256
  of the weights file;
- ``weights-<step>.safetensors``: the model's parameters and buffers and the optimisers'
  tensor state.

Writing is atomic: the weights go to a new file (written to a temporary name, flushed and
renamed), then ``checkpoint.json`` is replaced by rename, and only then is the previous
weights file removed. A crash at any point leaves a complete, consistent checkpoint.
Loading reads JSON and safetensors only: nothing in a checkpoint is ever executed
(no pickle), and every problem is reported as a :class:`CheckpointError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT = 1
RECORD = "checkpoint.json"


class CheckpointError(RuntimeError):
    """An unreadable, incomplete or inconsistent checkpoint."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def optimizer_to_tensors(
    name: str, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON values."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    name: str,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    record: dict[str, Any],
) -> None:
    """Inverse of :func:`optimizer_to_tensors`: load the state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[field] = value
    for index, entries in record.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})


def save(directory: Path, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a checkpoint atomically (see the module docstring); returns the record's path."""
    directory.mkdir(parents=True, exist_ok=True)
    weights_name = f"weights-{int(record['step']):08d}.safetensors"
    weights_path = directory / weights_name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{weights_name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        with open(tmp, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        os.replace(tmp, weights_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    previous = _previous_weights(directory)
    record = {**record, "format": FORMAT, "weights": weights_name, "sha256": digest}
    atomic_write_bytes(directory / RECORD, json.dumps(record, indent=2).encode())
    if previous is not None and previous != weights_name:
        (directory / previous).unlink(missing_ok=True)
    return directory / RECORD


def _previous_weights(directory: Path) -> str | None:
    try:
        return json.loads((directory / RECORD).read_text()).get("weights")
    except (OSError, ValueError, AttributeError):
        return None


def load(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint's record and tensors, checking that they belong together."""
    directory = Path(directory)
    record_path = directory / RECORD
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such run directory")
    if not record_path.exists():
        raise CheckpointError(f"{directory}: no {RECORD} here; is this a genmodels run directory?")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{record_path}: unreadable checkpoint record ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{record_path}: not a genmodels checkpoint (format {FORMAT} expected)")
    for key in ("family", "step", "weights", "sha256", "model_config"):
        if key not in record:
            raise CheckpointError(f"{record_path}: checkpoint record lacks {key!r}")
    weights_path = directory / str(record["weights"])
    if Path(record["weights"]).name != record["weights"]:
        raise CheckpointError(f"{record_path}: weights must be a file in the run directory")
    try:
        blob = weights_path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{weights_path}: unreadable weights ({err.strerror})") from None
    if hashlib.sha256(blob).hexdigest() != record["sha256"]:
        raise CheckpointError(f"{weights_path}: weights do not match the checkpoint record (corrupted?)")
    try:
        tensors = load_file(weights_path)
    except Exception as err:  # safetensors raises its own SafetensorError; all mean unreadable
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({err})") from None
    return record, tensors
