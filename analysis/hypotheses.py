"""The Fluid paper's findings as testable hypotheses, checked on a sweep's measurements.

1. Validation loss falls with size in every variant: a power-law fit against parameters (with
   offset or pure) has R² >= 0.95 and an exponent whose 95% interval excludes 0.
2. Continuous tokens give lower FID than discrete at the largest size, for both orders, by more
   than the seed-to-seed spread (the larger max-min range of FID over sampling seeds of the two).
3. With continuous tokens, random order gives higher GenEval than raster at the largest size by
   more than 2 standard errors (SE of the difference of seed means, from the seeds' spread).
4. Fluid (continuous + random): FID falls and GenEval rises with size (the fits' slopes have the
   right sign with 95% intervals excluding 0).
5. The largest Fluid model scores >= 0.6 overall on shapes GenEval (seed mean).

Each row of :func:`check` names the hypothesis, the variant(s), the numbers and a verdict
(``holds`` / ``fails`` / ``untestable`` with the reason), so an honest negative result is reported
the same way as a positive one.

FID is read in the space of a trained feature net, whose own seed moves FID as much as a model
does (calibration item 93). Where the runs table carries FID under other nets (``fid_net1``, ...,
:func:`other_nets`), H2 and H4's FID claim are tested under each net too, and hold only where they
hold under every one; the evidence quotes each net's numbers.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.fitting import FitRecord, fit_table, observations, preferred
from harness.registry import FID_NETS

GENEVAL_TARGET = 0.6
R2_TARGET = 0.95
COLUMNS = ["hypothesis", "claim", "variant", "evidence", "verdict"]


def _largest(obs: pd.DataFrame, metric: str, variants: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Per-seed values of ``metric`` at the largest size every one of ``variants`` reached."""
    sub = obs[(obs["metric"] == metric)
              & obs[["token", "order"]].apply(tuple, axis=1).isin(list(variants))]
    if sub.empty:
        return sub
    sizes = sub.groupby("size").apply(lambda g: len(set(zip(g["token"], g["order"]))),
                                      include_groups=False)
    shared = [s for s in sub.groupby("size")["params"].median().sort_values(ascending=False).index
              if sizes[s] == len(variants)]
    return sub[sub["size"] == shared[0]] if shared else sub.iloc[:0]


def _stats(values: pd.Series) -> tuple[float, float, float, int]:
    """mean, standard deviation, max-min range, n."""
    v = values.to_numpy(float)
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return float(v.mean()), sd, float(v.max() - v.min()), len(v)


def _row(h: int, claim: str, variant: str, evidence: str, ok: bool | None, why: str = "") -> dict:
    verdict = "holds" if ok else ("fails" if ok is not None else f"untestable: {why}")
    return {"hypothesis": h, "claim": claim, "variant": variant, "evidence": evidence,
            "verdict": verdict}


def _loss_fits(records: Sequence[FitRecord], variants) -> list[dict]:
    """H1 per variant: holds when either power law, with offset or pure, has R² >= R2_TARGET and
    an exponent > 0 whose interval excludes 0 (the issue's "pure or with offset"); the evidence
    quotes both, the one that holds first."""
    rows = []
    claim = f"val loss power law (offset or pure) R² >= {R2_TARGET}, α's 95% CI excludes 0"
    for token, order in variants:
        name = f"{token}/{order}"
        found = sorted((r for r in records if (r.metric, r.token, r.order, r.x)
                        == ("val_loss", token, order, "params")), key=lambda r: r.form != "offset")
        if not found:
            rows.append(_row(1, claim, name, "", None, "no val_loss fit (fewer than 3 sizes?)"))
            continue
        parts, ok = [], []
        for rec in found:
            alpha = rec.fit.params["alpha"]
            lo, hi = rec.boot.interval("alpha")
            ok.append(rec.fit.r2 >= R2_TARGET and (lo > 0 or hi < 0) and alpha > 0)
            parts.append(f"{rec.form}: α = {alpha:.3g} [{lo:.3g}, {hi:.3g}], R² = {rec.fit.r2:.3f}")
        holding_first = sorted(range(len(found)), key=lambda i: not ok[i])
        evidence = "; ".join(parts[i] for i in holding_first) + f"; {found[0].fit.n_sizes} sizes"
        rows.append(_row(1, claim, name, evidence, any(ok)))
    return rows


def fid_floors(runs: pd.DataFrame, column: str = "fid_floor") -> dict[str, float]:
    """Mean ``fid_floor`` (a perfect generator's FID through the tokenizer,
    ``harness/evaluate/floor.py``; ``fid_floor_matched``: drawn for the reference's own captions)
    per token type of a runs table; empty without that column."""
    if column not in runs.columns or "token" not in runs.columns:
        return {}
    values = pd.to_numeric(runs[column], errors="coerce")
    return {str(t): float(v.mean()) for t, v in values.groupby(runs["token"]) if v.notna().any()}


def _floor_note(floors: dict[str, float], matched: dict[str, float], tokens: Sequence[str]) -> str:
    if not all(t in floors for t in tokens):
        return ""
    note = "; FID floor " + " vs ".join(f"{floors[t]:.2f}" for t in tokens)
    if all(t in matched for t in tokens):
        note += " (caption-matched " + " vs ".join(f"{matched[t]:.2f}" for t in tokens) + ")"
    return note


Nets = dict[str, tuple[pd.DataFrame, list[FitRecord]]]


def other_nets(runs: pd.DataFrame, n_boot: int, seed: int, method: str) -> tuple[Nets, list[str]]:
    """For each column of ``FID_NETS`` the runs table fills: the observations with that column as
    ``fid`` (H2's) and Fluid's FID fits against ``params`` (H4's), by the column's name."""
    nets: Nets = {}
    for column in FID_NETS:
        if column not in runs.columns or pd.to_numeric(runs[column], errors="coerce").isna().all():
            continue
        names = [c for c in ("run_key", "token", "order", "size", "params", "seed") if c in runs.columns]
        obs, _ = observations(runs[names].assign(fid=runs[column]))
        fluid = obs[(obs["token"] == "continuous") & (obs["order"] == "random")]
        records, _ = fit_table(fluid, ("params",), n_boot, seed, method)
        nets[column] = (obs, records)
    if not nets:
        return nets, ["FID under one feature net only (no fid_net* values): the FID verdicts do not count "
                      "the feature net's own seed"]
    return nets, []


def _holds_everywhere(ok: bool | None, others: list[bool | None]) -> bool | None:
    """A verdict over the default net and the others: untestable if the default's is."""
    return None if ok is None else ok and all(bool(o) for o in others)


def _gap(obs: pd.DataFrame, order: str) -> tuple[pd.DataFrame, tuple, tuple, float, float, bool | None]:
    at = _largest(obs, "fid", [("continuous", order), ("discrete", order)])
    if at.empty:
        return at, (), (), math.nan, math.nan, None
    c = _stats(at[at["token"] == "continuous"]["value"])
    d = _stats(at[at["token"] == "discrete"]["value"])
    spread, gap = max(c[2], d[2]), d[0] - c[0]
    return at, c, d, gap, spread, (gap > spread if min(c[3], d[3]) > 1 else None)


def _fid_gap(obs: pd.DataFrame, floors: dict[str, float], matched: dict[str, float],
             nets: Nets) -> list[dict]:
    rows = []
    for order in ("random", "raster"):
        at, c, d, gap, spread, ok = _gap(obs, order)
        claim = "continuous FID < discrete at the largest size by more than the seed spread"
        if at.empty:
            rows.append(_row(2, claim, order, "", None, "no size with both tokens' FID"))
            continue
        evidence = (f"FID continuous {c[0]:.2f} (sd {c[1]:.2f}, n={c[3]}) vs discrete "
                    f"{d[0]:.2f} (sd {d[1]:.2f}, n={d[3]}); gap {gap:.2f}, "
                    f"seed spread {spread:.2f}" + _floor_note(floors, matched, ("continuous", "discrete")))
        others = []
        for name, (net_obs, _) in nets.items():
            _, nc, nd, ngap, nspread, nok = _gap(net_obs, order)
            others.append(nok)
            evidence += (f"; {name}: {nc[0]:.2f} vs {nd[0]:.2f}, gap {ngap:.2f}, spread {nspread:.2f}"
                         if nc else f"; {name}: no values")
        rows.append(_row(2, claim, f"{order} order, size {at['size'].iloc[0]}", evidence,
                         _holds_everywhere(ok, others), "one seed: no spread"))
    return rows


def _geneval_order(obs: pd.DataFrame) -> dict:
    at = _largest(obs, "geneval_overall", [("continuous", "random"), ("continuous", "raster")])
    claim = "continuous: random GenEval > raster at the largest size by > 2 SE"
    if at.empty:
        return _row(3, claim, "continuous", "", None, "no size with both orders' GenEval")
    r = _stats(at[at["order"] == "random"]["value"])
    s = _stats(at[at["order"] == "raster"]["value"])
    if min(r[3], s[3]) < 2:
        return _row(3, claim, "continuous", "", None, "needs >= 2 seeds per variant")
    se = math.sqrt(r[1] ** 2 / r[3] + s[1] ** 2 / s[3])
    gap = r[0] - s[0]
    ok = gap > 2 * se
    return _row(3, claim, f"continuous, size {at['size'].iloc[0]}",
                f"GenEval random {r[0]:.3f} (sd {r[1]:.3f}, n={r[3]}) vs raster {s[0]:.3f} "
                f"(sd {s[1]:.3f}, n={s[3]}); gap {gap:.3f} = {gap / se if se > 0 else math.inf:.1f} SE "
                f"(SE {se:.3f})", ok)


def _fluid_trends(obs: pd.DataFrame, records: Sequence[FitRecord], floors: dict[str, float],
                  matched: dict[str, float], nets: Nets) -> list[dict]:
    rows = []
    for metric, sign, param, word in (("fid", 1, "alpha", "falls"),
                                      ("geneval_overall", 1, "slope", "rises")):
        rec = preferred(records, metric, "continuous", "random", "params")
        claim = f"Fluid: {metric} {word} with size (fit's 95% CI excludes 0)"
        means = (obs[(obs["metric"] == metric) & (obs["token"] == "continuous")
                     & (obs["order"] == "random")]
                 .groupby("size").agg(params=("params", "mean"), value=("value", "mean"))
                 .sort_values("params"))
        trail = " → ".join(f"{v:.3g}" for v in means["value"])
        if metric == "fid":
            trail += _floor_note(floors, matched, ("continuous",))
        if rec is None:
            rows.append(_row(4, claim, "continuous/random", f"means by size: {trail}", None,
                             "no fit"))
            continue
        value = rec.fit.params[param]
        lo, hi = rec.boot.interval(param)
        ok = sign * value > 0 and sign * lo > 0
        evidence = f"means by size: {trail}; {rec.form} {param} = {value:.3g} [{lo:.3g}, {hi:.3g}]"
        others = []
        for name, (_, net_records) in (nets.items() if metric == "fid" else ()):
            net_rec = preferred(net_records, metric, "continuous", "random", "params")
            if net_rec is None:
                others.append(False)
                evidence += f"; {name}: no fit"
                continue
            v, (nlo, nhi) = net_rec.fit.params[param], net_rec.boot.interval(param)
            others.append(sign * v > 0 and sign * nlo > 0)
            evidence += f"; {name}: {net_rec.form} {param} = {v:.3g} [{nlo:.3g}, {nhi:.3g}]"
        rows.append(_row(4, claim, "continuous/random", evidence, _holds_everywhere(ok, others)))
    return rows


def _fluid_geneval(obs: pd.DataFrame) -> dict:
    at = _largest(obs, "geneval_overall", [("continuous", "random")])
    claim = f"largest Fluid model: shapes GenEval >= {GENEVAL_TARGET}"
    if at.empty:
        return _row(5, claim, "continuous/random", "", None, "no GenEval")
    mean, sd, _, n = _stats(at["value"])
    return _row(5, claim, f"continuous/random, size {at['size'].iloc[0]}",
                f"GenEval overall {mean:.3f} (sd {sd:.3f}, n={n}); samples: samples.png", mean >= GENEVAL_TARGET)


def check(obs: pd.DataFrame, records: Sequence[FitRecord], floors: dict[str, float] | None = None,
          matched: dict[str, float] | None = None, nets: Nets | None = None) -> pd.DataFrame:
    """One row per tested claim (see the module docstring). ``floors`` and the caption-matched
    ``matched`` (:func:`fid_floors`), when given, are quoted beside the FID evidence: a model's
    FID reads against them, not 0. ``nets`` (:func:`other_nets`): FID under other feature nets,
    under each of which an FID claim must hold too."""
    floors, matched, nets = floors or {}, matched or {}, nets or {}
    variants = sorted(set(zip(obs["token"], obs["order"]))) if len(obs) else []
    rows = _loss_fits(records, variants) + _fid_gap(obs, floors, matched, nets) + [_geneval_order(obs)]
    rows += _fluid_trends(obs, records, floors, matched, nets) + [_fluid_geneval(obs)]
    return pd.DataFrame(rows, columns=COLUMNS)
