"""Scaling-study harness for autoregressive text-to-image models."""
