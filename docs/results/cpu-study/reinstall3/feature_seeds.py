"""FID of each study run's own generated samples under feature nets trained with other seeds.

Usage: python feature_seeds.py STUDY_RESULTS OUT_DIR SEED [SEED ...]
The run's samples (fid/generated) and its config are read from STUDY_RESULTS/runs; the feature
nets, reference statistics and tokenizer floors are built in OUT_DIR (not in the study's folder).
"""
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from harness import config as C
from harness.evaluate import features, fid
from harness.evaluate.floor import ensure_fid_floor
from harness.io import read_json
from harness.sampling import Sampler

study, out, seeds = Path(sys.argv[1]), Path(sys.argv[2]), [int(s) for s in sys.argv[3:]]
runs = sorted(p for p in (study / "runs").iterdir() if (p / "metrics.json").is_file())
rows, tokenizers = [], {}
for seed in seeds:
    spec = dataclasses.replace(features.DEFAULT_SPEC, seed=seed)
    for run in runs:
        cfg = C.load_saved(run / "config.yaml")
        cfg.results_dir = str(out)
        space = fid.feature_space(cfg, spec)
        reference = fid.ensure_reference(cfg, space)
        m = fid.fid_metrics(run / "fid" / "generated", reference, space, cfg.eval.batch_size, 0)
        token = cfg.model.token
        if (seed, token) not in tokenizers:
            tok_dir = Path(read_json(run / "stage0.json")["tokenizer"])
            floor = ensure_fid_floor(out / "stage0" / tok_dir.name, Sampler.from_run(run).tokenizer, cfg,
                                     reference, space)
            tokenizers[seed, token] = floor["fid_floor"]
        rows.append({"feature_seed": seed, "run": run.name, "token": token, "order": cfg.model.order,
                     "size": cfg.model.size, "fid": m["fid"], "fid_floor": tokenizers[seed, token],
                     "study_fid": read_json(run / "metrics.json")["fid"]})
        print(rows[-1], flush=True)
pd.DataFrame(rows).to_csv(out / "feature_seeds.csv", index=False)
