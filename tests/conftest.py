"""Tests exercise this checkout as the package `bnncost`, whether or not (and whatever) is installed."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if "bnncost" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "bnncost", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["bnncost"] = package
    spec.loader.exec_module(package)
