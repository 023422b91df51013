"""Where a result was computed: CPU model, thread count, torch and oneDNN versions, GPU.

A rerun on the same machine reproduces slic's numbers bit for bit; on another CPU type the kernels (oneDNN's
choice of instructions, thread count) differ and training drifts to other digits. Stage reports and MLflow runs
record these fields so that a difference between two runs can be traced to the machine or ruled out.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else 'unknown'."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def onednn_version() -> str:
    """The oneDNN (MKL-DNN) version torch was built with, from torch's build configuration; '' when absent."""
    import torch

    found = re.search(r"(?:oneDNN|MKL-DNN) v([0-9.]+)", torch.__config__.show())
    return found.group(1) if found else ""


def machine_info(device: Any = None) -> dict[str, Any]:
    """CPU model and count, torch's threads, torch / oneDNN / Python versions, and the GPU's name on CUDA."""
    import torch

    info = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "onednn": onednn_version(), "python": platform.python_version()}
    kind = getattr(device, "type", str(device).split(":")[0]) if device is not None else "cpu"
    if kind == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(str(device)))
    return info
