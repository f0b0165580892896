"""Training: ``run.train`` (one run: stage 0, Lightning fit, atomic checkpoints, resume) and
``module`` (the LightningModule: generator, text path, EMA, optimizer).

Importing the package imports neither, so that the sweep driver and the results table can look at
runs without loading the training stack (Lightning, ~5 s).
"""
