"""Atomic checkpoint writes, shared by every stage that trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name, fsync, rename: a kill never leaves a torn checkpoint at `path`."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
