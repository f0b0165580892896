"""How ``make test`` spreads the suite over xdist workers: ``xdist_group`` fixed for pytest 9, and
the slow tests handed out first (a plugin: tests/conftest.py imports its hook; no torch, so a
subprocess can load it cheaply)."""
from __future__ import annotations

import pytest
from _pytest.nodeid import NodeId


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Make ``xdist_group`` marks group again under ``--dist loadgroup`` (``make test``).

    pytest-xdist 3.8 groups tests by suffixing each marked item's id with ``@<group>``, which it
    does by setting ``item._nodeid``; pytest 9.2 reads ids from ``item._id`` instead, so the
    suffix never appeared and grouped tests (the SLURM tests, the tests sharing an expensive
    module fixture) were spread over both workers, each building the fixture. Found from the
    suite's durations: the interrupt tests' reference run was set up twice.

    Then the ``slow`` tests (minutes each under load) move to the front, in their order: the
    workers take tests in collection order, and a slow test taken last (the sweep tests sort
    late by name) keeps one worker busy alone while the others have finished."""
    argv = getattr(config, "workerinput", {}).get("mainargv", [])
    if not ("loadgroup" in argv or "--dist=loadgroup" in argv):
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and item.nodeid.rfind("@") <= item.nodeid.rfind("]"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")
