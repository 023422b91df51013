"""Where a result was made: what stage reports and MLflow runs record, so a cross-machine difference can be traced."""

from __future__ import annotations

import os
import re

import torch

from slic.machine import cpu_model, machine_info, onednn_version


def test_machine_info_names_this_cpu_and_the_kernels_torch_uses() -> None:
    info = machine_info(torch.device("cpu"))
    assert info["cpu_model"] == cpu_model() and info["cpu_model"] not in ("", "unknown")
    assert (info["cpu_count"], info["torch_threads"], info["torch"]) == (os.cpu_count(), torch.get_num_threads(),
                                                                         torch.__version__)
    assert "gpu" not in info and machine_info("cpu") == info  # a device given by name reads the same
    if torch.backends.mkldnn.is_available():
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", onednn_version())
