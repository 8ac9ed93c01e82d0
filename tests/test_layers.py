"""Layering: torch is imported only by what runs a model.

Each module is imported in a fresh interpreter (this test process has torch loaded already), so a module that
pulls in torch, directly or through anything it imports, fails here by name.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every dashboard module but the Streamlit page itself (tests/test_dashboard.py runs the page without torch).
DASHBOARD = sorted(f"dashboard.{path.stem}" for path in (ROOT / "dashboard").glob("*.py")
                   if path.stem not in ("__init__", "app"))
LIGHT = [*DASHBOARD, "pilot.pruning", "pilot.pruning.strategies", "pilot.report", "pilot.plan", "pilot.summaries",
         "pilot.store", "pilot.metrics", "pilot.data.synthetic"]


def _imports_in_a_fresh_interpreter(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_dashboard_modules_are_all_checked():
    assert {"dashboard.data", "dashboard.store", "dashboard.verdicts", "dashboard.studies", "dashboard.charts",
            "dashboard.export"} <= set(DASHBOARD)


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_no_torch(module):
    done = _imports_in_a_fresh_interpreter(
        f"import sys, {module}\n"
        "heavy = [name for name in ('torch', 'transformers') if name in sys.modules]\n"
        "print(heavy)\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", f"importing {module} imported {done.stdout.strip()}"


def test_pruning_exports_load_on_first_use():
    """``from pilot.pruning import parse`` reads the strategies only; ``attach`` loads the engine (and torch)."""
    done = _imports_in_a_fresh_interpreter(
        "import sys\n"
        "from pilot.pruning import TokenPool, kept_count, parse\n"
        "assert parse('pool:factor=3') == TokenPool(3) and kept_count(10, 0.5) == 5\n"
        "assert 'torch' not in sys.modules and 'pilot.pruning.engine' not in sys.modules\n"
        "import pilot.pruning\n"
        "from pilot.pruning import attach\n"
        "from pilot.pruning.engine import attach as engine_attach\n"
        "assert attach is engine_attach and 'torch' in sys.modules\n"
        "for name in pilot.pruning.__all__:\n"
        "    assert name in dir(pilot.pruning), name\n"
        "    getattr(pilot.pruning, name)\n"
        "try:\n"
        "    pilot.pruning.no_such_name\n"
        "except AttributeError as error:\n"
        "    assert 'no_such_name' in str(error)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
        "from pilot.pruning import families\n"
        "assert families.__name__ == 'pilot.pruning.families'\n"
        "print('ok')\n")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_every_exported_pruning_name_is_the_submodules_own():
    import importlib

    import pilot.pruning

    assert sorted(pilot.pruning.__all__) == sorted(pilot.pruning._EXPORTS)
    for name, module in pilot.pruning._EXPORTS.items():
        value = getattr(pilot.pruning, name)
        assert value is getattr(importlib.import_module(module), name) and value.__module__ == module, name


def test_the_dashboard_reads_pool_factors_with_the_strategy_parser():
    """The kept-patch pictures window a pooling arm by its factor; every spelling the parser reads counts (the old
    regular expression missed the ``tokenpool`` alias), and other or unreadable strategies have none."""
    from dashboard.charts import pool_factor

    assert pool_factor("pool") == 2 and pool_factor("pool:factor=3") == 3
    assert pool_factor("tokenpool:factor=4") == 4 and pool_factor(" POOL:factor=2 ") == 2
    for other in ("baseline", "transprune", "transprune:prune_after=1/2,keep=0.5/0.25", "fastv:after=2,keep=0.5",
                  "pdrop", "divprune:keep=0.25", "random", "pool:factor=x", "pool:factor=1", "not a strategy"):
        assert pool_factor(other) is None, other


def test_generation_needs_no_store():
    """The server and the tuner generate through ``pilot.generation``, which reads no database: the runner and the
    store (SQLAlchemy) stay out until a run is stored."""
    done = _imports_in_a_fresh_interpreter(
        "import sys, pilot.generation\n"
        "print([name for name in ('pilot.runner', 'pilot.store', 'pilot.workers', 'sqlalchemy') "
        "if name in sys.modules])\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", f"importing pilot.generation imported {done.stdout.strip()}"
