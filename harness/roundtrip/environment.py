"""The environment block of every record, read from the running process (never from a file)."""
from __future__ import annotations

import os
import platform

from harness.roundtrip.compat import TRACKED_PACKAGES, installed_version


def device_name(device: str) -> str:
    if device in ("cuda", "cuda_to_cpu"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        return "cuda (not available)"
    return platform.processor() or platform.machine() or "cpu"


def environment(device: str = "cpu") -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform()}
    env.update({package: installed_version(package) for package in TRACKED_PACKAGES})
    env["device_name"] = device_name(device)
    env["tox_env"] = os.environ.get("TOX_ENV_NAME")
    return env


def versions_line(env: dict) -> str:
    return ", ".join(f"{p} {env.get(p)}" for p in ("peft", "transformers", "torch", "safetensors"))
