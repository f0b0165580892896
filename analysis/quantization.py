"""The quantization check: is the measured loss exponent the one the world's long tail predicts?

In the quantization model of neural scaling (Michaud et al. 2023) a model knows the n most
frequent of many discrete pieces of knowledge whose use follows a Zipf law, P(k) ∝ k^-z, and the
loss it has left is carried by the ones it does not know: their probability mass,
M(n) = Σ_{k>n} P(k). With infinitely many kinds M(n) ∝ n^-(z-1), so if a model of N parameters
knows n ∝ N^β of them its loss falls as N^-α with α = (z − 1)·β; over a finite set of K kinds the
mass falls faster as n approaches K, and the prediction is the exponent of M(n(N)) itself.

The shapes world's named scenes (``data.named_scenes``) are such a set, with known K and z (the
runs table's ``named_scenes`` and ``named_scene_zipf``); evaluation counts the kinds each run has
learned (``tail_kinds_learned``) and their frequency-weighted loss (``tail_loss``,
``harness.evaluate.tail``). Per variant, against ``params`` over the run sizes, this fits pure
power laws to

    kinds learned n(N)                        → β                 (reported)
    unlearned mass M(n(N)) of the world's P   → predicted α
    tail loss                                 → measured α

each with its 95% bootstrap interval, and calls the exponents ``consistent`` when the two
intervals overlap. The model assumes a learned kind costs nothing and an unlearned one a fixed
amount; a kind's loss that falls gradually with size, or a floor the learned kinds keep, moves
the measured α away from the prediction. ``quantization.csv`` holds the numbers, report.md a table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.fitting import power_exponent
from harness.data.shapes import named_scene_probabilities

NEEDED = ("tail_kinds_learned", "tail_loss", "named_scenes", "named_scene_zipf")
COLUMNS = ["token", "order", "kinds", "zipf", "n_sizes", "kinds_learned", "beta", "beta_ci_low",
           "beta_ci_high", "beta_r2", "alpha_predicted", "alpha_predicted_ci_low",
           "alpha_predicted_ci_high", "alpha_predicted_r2", "alpha", "alpha_ci_low",
           "alpha_ci_high", "alpha_r2", "verdict"]


def unlearned_mass(kinds_learned: float, kinds: int, zipf: float) -> float:
    """M(n): the probability of the kinds past the n most frequent (n rounded)."""
    return float(named_scene_probabilities(kinds, zipf)[int(round(kinds_learned)):].sum())


def check(runs: pd.DataFrame, n_boot: int = 500, seed: int = 0, method: str = "residual"
          ) -> tuple[pd.DataFrame, list[str]]:
    """One row per variant whose runs carry the tail columns (see the module docstring), and
    notes on what could not be checked."""
    missing = [c for c in NEEDED if c not in runs.columns]
    if missing:
        return pd.DataFrame(columns=COLUMNS), []
    frame = runs.drop_duplicates("run_key") if "run_key" in runs.columns else runs
    frame = frame.assign(**{c: pd.to_numeric(frame[c], errors="coerce") for c in (*NEEDED, "params")})
    frame = frame[frame["named_scenes"].notna() & frame["named_scene_zipf"].notna()]
    rows, notes = [], []
    for (token, order), part in frame.groupby(["token", "order"], sort=True):
        worlds = part[["named_scenes", "named_scene_zipf"]].drop_duplicates()
        name = f"{token}/{order}"
        if len(worlds) > 1:
            notes.append(f"quantization: {name} mixes worlds (named_scenes, named_scene_zipf: "
                         f"{sorted(map(tuple, worlds.to_numpy().tolist()))}); not checked")
            continue
        kinds, z = int(worlds["named_scenes"].iloc[0]), float(worlds["named_scene_zipf"].iloc[0])
        part = part[np.isfinite(part["params"]) & (part["tail_kinds_learned"] > 0)
                    & (part["tail_kinds_learned"] < kinds) & (part["tail_loss"] > 0)]
        sizes = part.groupby("size")["params"].median().sort_values()
        if len(sizes) < 3:
            notes.append(f"quantization: {name} has {len(sizes)} sizes with some but not all kinds "
                         "learned (needs 3); not checked")
            continue
        x, groups = part["params"].to_numpy(float), part["size"].to_numpy(object)
        mass = [unlearned_mass(n, kinds, z) for n in part["tail_kinds_learned"]]
        key = ("quantization", token, order)

        def fit(y, what: str):
            return power_exponent(x, y, groups, n_boot, seed, method, (*key, what))

        neg_beta, (b_lo, b_hi), beta_r2 = fit(part["tail_kinds_learned"], "kinds")
        predicted, (p_lo, p_hi), predicted_r2 = fit(mass, "mass")
        alpha, (a_lo, a_hi), alpha_r2 = fit(part["tail_loss"], "tail_loss")
        known = np.isfinite([p_lo, p_hi, a_lo, a_hi]).all()
        verdict = ("untestable" if not known
                   else "consistent" if p_lo <= a_hi and a_lo <= p_hi else "inconsistent")
        learned = part.groupby("size")["tail_kinds_learned"].mean().reindex(sizes.index)
        rows.append({"token": token, "order": order, "kinds": kinds, "zipf": z, "n_sizes": len(sizes),
                     "kinds_learned": " → ".join(f"{v:g}" for v in learned),
                     "beta": -neg_beta, "beta_ci_low": -b_hi, "beta_ci_high": -b_lo, "beta_r2": beta_r2,
                     "alpha_predicted": predicted, "alpha_predicted_ci_low": p_lo,
                     "alpha_predicted_ci_high": p_hi, "alpha_predicted_r2": predicted_r2,
                     "alpha": alpha, "alpha_ci_low": a_lo, "alpha_ci_high": a_hi, "alpha_r2": alpha_r2,
                     "verdict": verdict})
    return pd.DataFrame(rows, columns=COLUMNS), notes
