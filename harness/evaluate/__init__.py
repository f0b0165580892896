"""Evaluation of trained runs: ``run.evaluate`` (val loss, FID, shapes GenEval, sample grids),
``fid`` (reference sets, both FID libraries), ``features`` (the shapes feature network).

Importing the package imports none of them, so that the sweep driver can look up stage-0 paths
in ``features`` without loading the training stack (Lightning, ~5 s).
"""
