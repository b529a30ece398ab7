"""What the numbers were measured on: CPU, accelerator, library versions, date and load."""

import datetime
import importlib.metadata
import os
import platform
import re
from pathlib import Path

import jax


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    """Machine and software record written beside every result."""
    device = jax.devices()[0]
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "load_average_1_5_15": os.getloadavg(),
        "platform": device.platform,
        "device": device.device_kind,
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("jax", "jaxlib", "optax", "numpy", "torch", "matplotlib")},
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }


def slug(machine: dict) -> str:
    """Short device name for a results folder, e.g. 'cpu-amd-epyc' or 'gpu-nvidia-h100-80gb-hbm3'."""
    name = machine["cpu"] if machine["platform"] == "cpu" else machine["device"]
    words = re.sub(r"\(.*?\)|\b(processor|cpu|\d+-core)\b", " ", name.lower())
    kind = "cpu" if machine["platform"] == "cpu" else "gpu"
    return "-".join([kind, *re.findall(r"[a-z0-9]+", words)])[:48]
