"""This study's runs.csv with item 93's FID under feature nets 1 and 2 as the table's fid_net1 and
fid_net2 columns (what evaluation writes since item 94), so the analysis tests the FID claims
under all three nets.

Usage: python with_nets.py OUT.csv, then python analysis/plot_scaling.py --runs OUT.csv --out DIR
"""
import sys
from pathlib import Path

import pandas as pd

here = Path(__file__).parent
runs = pd.read_csv(here / "runs.csv")
scored = pd.read_csv(here / "feature_seeds.csv")
for seed in (1, 2):
    runs[f"fid_net{seed}"] = runs["run_key"].map(scored[scored["feature_seed"] == seed].set_index("run")["fid"])
assert runs[["fid_net1", "fid_net2"]].notna().all().all(), "a run without its FID under another net"
runs.to_csv(sys.argv[1], index=False)
