"""A run lists every distinct environment it trained in, once each, in order."""
from __future__ import annotations

import json

import numpy
import torch

from harness import environment


def test_environment_names_the_installed_versions():
    env = environment.environment()
    assert env["numpy"] == numpy.__version__
    assert torch.__version__.startswith(env["torch"])
    assert env["python"].count(".") == 2
    assert env["cpu"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_resume_in_another_install_adds_it_and_the_same_install_does_not(tmp_path, monkeypatch):
    path = tmp_path / "environment.json"
    first = environment.record_environment(path)
    assert environment.record_environment(path) == first and len(first) == 1  # a resume, same install
    newer = {**first[0], "numpy": "99.0"}
    monkeypatch.setattr(environment, "environment", lambda: newer)
    assert environment.record_environment(path) == [first[0], newer]
    assert json.loads(path.read_text()) == [first[0], newer]
    assert environment.record_environment(path) == [first[0], newer]
