"""Tests exercise this checkout as the package `bnncost`, whether or not (and whatever) is installed."""

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the tests read the CLI's tables as a pipe gets them (room for side-by-side tables), whatever width the shell
# that runs pytest exported
os.environ.pop("COLUMNS", None)

# the project's own dependencies (pyproject.toml) and the test extra's hypothesis: without them every test module
# fails to import, so say once what to install instead of a collection error per file
_MISSING = [m for m in ("numpy", "pydantic", "typer", "rich", "yaml", "hypothesis")
            if importlib.util.find_spec(m) is None]


def pytest_configure(config):
    if _MISSING:
        import pytest  # here, not at the top: benchmarks run this file without pytest to load the checkout

        pytest.exit(f"bnncost's tests need {', '.join(_MISSING)} (not installed for {sys.executable}): "
                    f"run `pip install '.[test]'` first, as the README says", returncode=2)


if "bnncost" not in sys.modules and not _MISSING:
    spec = importlib.util.spec_from_file_location(
        "bnncost", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["bnncost"] = package
    spec.loader.exec_module(package)
