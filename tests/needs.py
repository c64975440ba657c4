"""What a test needs from the machine: an optional extra, a dataset beside the repository.

Missing, a test skips with a message, except under CI (the `CI` variable set), where the
README's set-up installs every extra and the data is in place, so a missing one is a broken
set-up and fails instead of turning a whole folder of tests into silent skips.
"""

import importlib
import os

import pytest


def satisfied(condition, message):
    """Skip with `message`, or fail under CI, unless `condition` holds."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: a missing requirement fails instead of skipping)",
                    pytrace=False)
    pytest.skip(message, allow_module_level=True)


def module(name, extra="export"):
    """Imports `name`, or skips (fails under CI) naming the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        satisfied(False, f"{name} is not installed (pip install -e '.[{extra}]')")
