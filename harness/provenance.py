"""Where a result came from: the code commit, whether tracked code differed from it, the versions of
the packages that decide the numbers, the CPU and the GPU. Recorded in every run's status and every sweep
manifest, so that a result can be traced to the code and environment that produced it."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMERIC_PACKAGES = ("torch", "transformers", "trl", "numpy")  # their versions change the numbers


def git(*args, repo: Path = REPO) -> str | None:
    """git's stdout for ``args`` in ``repo``, stripped; None when git fails or is missing."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_state(repo: Path = REPO) -> dict:
    """``commit`` (None outside a git checkout) and ``dirty``: whether tracked files outside
    ``results/`` differ from it — new or changed results never make the code dirty; None where git
    could not say (a damaged index, a timeout)."""
    commit = git("rev-parse", "HEAD", repo=repo)
    if commit is None:
        return {"commit": None, "dirty": None}
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", repo=repo)
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}  # None: git could not tell


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def gpu() -> str | None:
    """The first CUDA device's name, or None where there is none."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def environment() -> dict:
    return {"python": platform.python_version(), **{p: _version(p) for p in NUMERIC_PACKAGES},
            "cpu": cpu(), "gpu": gpu(), "platform": sys.platform}


def provenance() -> dict:
    return {**code_state(), **environment()}
