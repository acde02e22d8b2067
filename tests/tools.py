"""External programs some tests need (Debian packages CI installs): the test skips where the program is
missing, or fails when CI's environment variable says it must be there."""

import os
import shutil

import pytest


def required_tool(*names: str, env: str, install: str) -> str:
    """The path of the first of ``names`` on PATH; else skip, or fail when ``env`` is set."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get(env):
        pytest.fail(f"{env} is set but {names[0]} is not installed")
    pytest.skip(f"{names[0]} not installed ({install})")
