"""Tests that read ../shared/data (research datasets not shipped with lmx): skipped with a
visible reason on a machine without them, failed under CI=true (CI always has ../shared), so
CI's suite can never shrink silently."""
import os

import pytest

from lmx.data import catalog

ROOT = catalog.LOCAL_ROOT  # ../shared/data beside the checkout, or $LMX_SHARED_DATA


def require(*paths: str) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return
    message = f"needs ../shared/data; not on this machine: {missing}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: CI always has ../shared, so this is a lost test)")
    pytest.skip(message)
