"""Scaling-study harness for autoregressive text-to-image models."""
from harness.bootstrap import for_module_command as _for_module_command

_for_module_command()  # `python -m harness.X` with a python lacking the project's packages: use .venv
