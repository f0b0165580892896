"""Scaling-law fits with bootstrap confidence intervals, and the summary statistics of a sweep.

Curve forms (x is model size N or training FLOPs; residuals live in the space z):

==========  =================================  ==============
form        curve                              z (residuals)
==========  =================================  ==============
offset      y = E + A·x^(−α)                   log y
power       y = A·x^(−α)                       log y
loglinear   y = clip(b0 + b1·log10 x, 0, 1)    y
logit       y = sigmoid(b0 + b1·log10 x)       logit y
==========  =================================  ==============

Fitting follows Hoffmann et al. (2022, "Chinchilla"): a Huber loss (δ = 1e-3) on the residuals
in z, minimised with L-BFGS from a grid of starting points, the best kept and its convergence
reported.
Seeds of one configuration are pseudo-replicates of one trained model, so the fit sees one point
per size: the mean of z over that size's seeds.

Uncertainty is a seeded, deterministic bootstrap (see ``bootstrap_fit``). The default resamples
residuals around the fit (x is a fixed design: sizes are chosen, not sampled) and widens the
percentile interval by t(n−p)/z, because with 4–6 sizes a plain percentile bootstrap undercovers.
``method="cases"`` is the literal alternative: resample sizes with replacement and seeds within
each drawn size, plain percentile interval. The measured coverage of both: docs/fitting.md.
"""
from __future__ import annotations

import functools
import math
import re
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

from harness.registry import LOWER_IS_BETTER, METRICS, PAPER_PARAMS, VARIANT_PAIRS

DELTA = 1e-3
"""Huber threshold on residuals in z (Hoffmann et al. use 1e-3 on log residuals)."""


_EPS_LOGIT = 1e-3


# ---------------------------------------------------------------------------------------------
# Curve forms


@dataclass(frozen=True)
class Form:
    """A curve family in the centred coordinate u = ln x − ln x0 and the residual space z."""

    name: str
    param_names: tuple[str, ...]
    to_z: Callable[[np.ndarray], np.ndarray]
    from_z: Callable[[np.ndarray], np.ndarray]
    predict_z: Callable[[np.ndarray, np.ndarray], np.ndarray]
    """(θ of shape (..., p), u of shape (m,)) -> z of shape (..., m)."""
    jacobian: Callable[[np.ndarray, np.ndarray], np.ndarray]
    """(θ of shape (p,), u of shape (m,)) -> dz/dθ of shape (m, p)."""
    starts: Callable[[np.ndarray, np.ndarray], list[np.ndarray]]
    bounds: Callable[[np.ndarray], list[tuple[float | None, float | None]]]
    public: Callable[[np.ndarray, float], dict[str, np.ndarray]]
    """(θ of shape (..., p), x0) -> the reported parameters (E, A, alpha or slope, intercept)."""

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def valid(self, y: np.ndarray) -> np.ndarray:
        """Which metric values this form can take (log needs y > 0, logit needs 0 ≤ y ≤ 1)."""
        if self.name in ("power", "offset"):
            return np.isfinite(y) & (y > 0)
        if self.name == "logit":
            return np.isfinite(y) & (y >= 0) & (y <= 1)
        return np.isfinite(y)


def _power_predict(theta, u):
    theta = np.asarray(theta)
    return theta[..., :1] - theta[..., 1:2] * u


def _power_jac(theta, u):
    return np.stack([np.ones_like(u), -u], axis=1)


def _power_starts(u, z):
    slope = np.polyfit(u, z, 1)[0] if np.ptp(u) > 0 else 0.0
    starts = [np.array([z.mean(), -slope])]
    starts += [np.array([z.mean(), a]) for a in (-0.5, 0.0, 0.1, 0.3, 1.0)]
    return starts


def _power_public(theta, x0):
    theta = np.asarray(theta)
    a, alpha = theta[..., 0], theta[..., 1]
    with np.errstate(over="ignore"):
        return {"E": np.zeros_like(a), "A": np.exp(a + alpha * math.log(x0)), "alpha": alpha}


def _offset_predict(theta, u):
    theta = np.asarray(theta)
    return np.logaddexp(theta[..., :1], theta[..., 1:2] - theta[..., 2:3] * u)


def _offset_jac(theta, u):
    e, a, alpha = theta
    t = a - alpha * u
    w = 1.0 / (1.0 + np.exp(np.clip(e - t, -700, 700)))  # share of the power term in the sum
    return np.stack([1.0 - w, w, -u * w], axis=1)


def _offset_starts(u, z):
    """For E on a grid below min y, the least-squares line through log(y − E) gives (a, α)."""
    y = np.exp(z)
    starts = []
    for frac in (0.0, 0.25, 0.5, 0.7, 0.85, 0.95, 0.99):
        E = frac * float(y.min())
        slope, intercept = np.polyfit(u, np.log(y - E), 1)
        e = math.log(E) if E > 0 else float(z.min()) - 10.0
        starts.append(np.array([e, intercept, -slope]))
    return starts


def _offset_bounds(z):
    return [(float(z.min()) - 30.0, float(z.max()) + 5.0), (None, None), (-10.0, 10.0)]


def _offset_public(theta, x0):
    theta = np.asarray(theta)
    e, a, alpha = theta[..., 0], theta[..., 1], theta[..., 2]
    with np.errstate(over="ignore"):
        return {"E": np.exp(e), "A": np.exp(a + alpha * math.log(x0)), "alpha": alpha}


def _linear_predict(theta, u):
    theta = np.asarray(theta)
    return theta[..., :1] + theta[..., 1:2] * u


def _linear_jac(theta, u):
    return np.stack([np.ones_like(u), u], axis=1)


def _linear_starts(u, z):
    slope = np.polyfit(u, z, 1)[0] if np.ptp(u) > 0 else 0.0
    return [np.array([z.mean() - slope * u.mean(), slope]), np.array([z.mean(), 0.0])]


def _linear_public(theta, x0):
    theta = np.asarray(theta)
    c, beta = theta[..., 0], theta[..., 1]
    # slope per decade of x; intercept = the line's value (in z) at x = 1
    return {"slope": beta * math.log(10.0), "intercept": c - beta * math.log(x0)}


def _logit(y):
    y = np.clip(y, _EPS_LOGIT, 1 - _EPS_LOGIT)
    return np.log(y) - np.log1p(-y)


FORMS: dict[str, Form] = {
    "power": Form("power", ("a", "alpha"), np.log, np.exp, _power_predict, _power_jac,
                  _power_starts, lambda z: [(None, None), (-10.0, 10.0)], _power_public),
    "offset": Form("offset", ("e", "a", "alpha"), np.log, np.exp, _offset_predict, _offset_jac,
                   _offset_starts, _offset_bounds, _offset_public),
    "loglinear": Form("loglinear", ("c", "beta"), lambda y: np.asarray(y, float),
                      lambda z: np.clip(z, 0.0, 1.0), _linear_predict, _linear_jac,
                      _linear_starts, lambda z: [(None, None), (None, None)], _linear_public),
    "logit": Form("logit", ("c", "beta"), _logit, lambda z: 1.0 / (1.0 + np.exp(-z)),
                  _linear_predict, _linear_jac, _linear_starts,
                  lambda z: [(None, None), (None, None)], _linear_public),
}


# ---------------------------------------------------------------------------------------------
# Fitting


def _one_blas_thread(fn):
    """Run ``fn`` with BLAS on one thread: L-BFGS-B's tiny BLAS calls on a busy machine are
    10–20× slower with OpenBLAS's thread pool (measured: 53 ms vs 3 ms per power-law refit)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def _huber_objective(theta, form: Form, u, z, delta):
    """Mean Huber loss divided by δ (same minimiser, gradients of order one) and its gradient."""
    r = form.predict_z(theta, u) - z
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r / delta, np.abs(r) - 0.5 * delta)
    psi = np.clip(r / delta, -1.0, 1.0)
    grad = psi @ form.jacobian(theta, u)
    return loss.mean(), grad / len(z)


def _minimise(form: Form, u, z, starts, delta):
    """Run L-BFGS-B from every start; return the best result and how many starts reached it."""
    bounds = form.bounds(z)
    results = []
    for start in starts:
        res = optimize.minimize(_huber_objective, start, args=(form, u, z, delta), jac=True,
                                method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})
        if np.isfinite(res.fun):
            results.append(res)
    if not results:
        return None, 0
    best = min(results, key=lambda r: r.fun)
    agree = sum(abs(r.fun - best.fun) <= 1e-7 * max(1.0, abs(best.fun)) for r in results)
    return best, agree


def _converged(res) -> bool:
    """scipy's success flag, or a stop in the line search at a point whose gradient is ~0.

    With δ = 1e-3 the Huber loss is nearly piecewise linear; L-BFGS often ends in its line search
    right at the kink of the optimum, which is a converged fit though scipy does not flag it.
    """
    if res.success:
        return True
    return "ABNORMAL" in str(res.message) and float(np.max(np.abs(res.jac))) < 1e-3


@dataclass
class Fit:
    """One fitted curve. ``params`` holds the reported, unrounded parameters."""

    form: str
    theta: np.ndarray
    x0: float
    params: dict[str, float]
    objective: float
    converged: bool
    starts_agreeing: int
    n_starts: int
    message: str
    r2: float
    n_points: int
    n_sizes: int
    sizes_x: np.ndarray
    sizes_z: np.ndarray
    clusters: list[np.ndarray] = field(repr=False, default_factory=list)
    """The z values of each size's seeds, in the order of ``sizes_x`` (for the cases bootstrap)."""

    def predict(self, x: Sequence[float] | np.ndarray) -> np.ndarray:
        form = FORMS[self.form]
        u = np.log(np.asarray(x, float)) - math.log(self.x0)
        return form.from_z(form.predict_z(self.theta, u))


def _clusters(x: np.ndarray, z: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, list]:
    keys = groups if groups is not None else x
    order = pd.unique(pd.Series(keys))
    xs, clusters = [], []
    for k in order:
        mask = keys == k
        xs.append(float(np.exp(np.mean(np.log(x[mask])))))
        clusters.append(z[mask])
    idx = np.argsort(xs)
    return np.asarray(xs)[idx], [clusters[i] for i in idx]


@_one_blas_thread
def fit_curve(x: Iterable[float], y: Iterable[float], form: str = "power",
              groups: Iterable[object] | None = None, delta: float = DELTA) -> Fit:
    """Fit ``form`` to points (x, y); several points per size (``groups``, default x) are seeds.

    The caller filters invalid values (``FORMS[form].valid``) and checks there are more sizes
    than parameters; ``fit_table`` does both and explains what it skipped.
    """
    f = FORMS[form]
    x = np.asarray(list(x), float)
    y = np.asarray(list(y), float)
    g = None if groups is None else np.asarray(list(groups), object)
    z = f.to_z(y)
    sizes_x, clusters = _clusters(x, z, g)
    sizes_z = np.array([c.mean() for c in clusters])
    x0 = float(np.exp(np.mean(np.log(sizes_x))))
    u = np.log(sizes_x) - math.log(x0)
    starts = f.starts(u, sizes_z)
    res, agree = _minimise(f, u, sizes_z, starts, delta)
    if res is None:
        raise FloatingPointError(f"{form}: every start gave a non-finite objective")
    pred = f.predict_z(res.x, u)
    ss_tot = float(np.sum((sizes_z - sizes_z.mean()) ** 2))
    r2 = 1.0 - float(np.sum((sizes_z - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    public = {k: float(v) for k, v in f.public(res.x, x0).items()}
    return Fit(form=form, theta=np.asarray(res.x, float), x0=x0, params=public,
               objective=float(res.fun), converged=_converged(res), starts_agreeing=agree,
               n_starts=len(starts), message=str(res.message), r2=r2, n_points=len(y),
               n_sizes=len(sizes_x), sizes_x=sizes_x, sizes_z=sizes_z, clusters=clusters)


# ---------------------------------------------------------------------------------------------
# Bootstrap


@dataclass
class Bootstrap:
    """Bootstrap replicates of a fit and the intervals they give."""

    fit: Fit
    thetas: np.ndarray
    """Shape (n_boot, p); rows of NaN where a replicate failed to fit."""
    method: str
    widen: float
    """Factor applied to the percentile interval's half-widths around the estimate."""

    @property
    def n_ok(self) -> int:
        return int(np.isfinite(self.thetas).all(axis=1).sum())

    def _interval(self, estimate, replicates, level):
        replicates = replicates[np.isfinite(replicates)]
        if len(replicates) < 10 or not np.isfinite(self.widen):
            return float("nan"), float("nan")
        a = (1.0 - level) / 2.0
        lo, hi = np.quantile(replicates, [a, 1.0 - a])
        return (estimate - self.widen * max(estimate - lo, 0.0),
                estimate + self.widen * max(hi - estimate, 0.0))

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Interval of a reported parameter (E, A, alpha, slope, intercept)."""
        form = FORMS[self.fit.form]
        reps = form.public(self.thetas, self.fit.x0)[name]
        if name in ("E", "A"):  # positive scale parameters: widen in log space
            with np.errstate(divide="ignore", invalid="ignore"):
                lo, hi = self._interval(math.log(max(self.fit.params[name], 1e-300)),
                                        np.log(reps), level)
            return float(np.exp(lo)), float(np.exp(hi))
        lo, hi = self._interval(self.fit.params[name], reps, level)
        return float(lo), float(hi)

    def predict_interval(self, x: Sequence[float] | np.ndarray,
                         level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise interval of the fitted curve at ``x`` (computed in z, mapped back to y)."""
        form = FORMS[self.fit.form]
        u = np.log(np.asarray(x, float)) - math.log(self.fit.x0)
        est = form.predict_z(self.fit.theta, u)
        reps = form.predict_z(self.thetas, u)  # (n_boot, m)
        lo, hi = np.empty_like(est), np.empty_like(est)
        for j in range(len(est)):
            lo[j], hi[j] = self._interval(est[j], reps[:, j], level)
        return form.from_z(lo), form.from_z(hi)


@_one_blas_thread
def bootstrap_fit(fit: Fit, n_boot: int = 1000, seed: int = 0, method: str = "residual",
                  delta: float = DELTA) -> Bootstrap:
    """Refit ``n_boot`` resampled datasets by L-BFGS started at the full-data optimum.

    ``residual``: z*_s = ẑ_s + r*_s with r* drawn from the size-level residuals, inflated by
    sqrt(n/(n−p)) for the degrees of freedom the fit used; interval = percentile interval with its
    half-widths scaled by t_{n−p}(0.975)/z(0.975) — for a straight line with Gaussian noise this is
    the exact t interval. Needs more sizes than parameters.
    ``cases``: draw n sizes with replacement and, within each, its seeds with replacement; draws
    with fewer distinct sizes than parameters+1 are redrawn; plain percentile interval. With
    n = p+1 sizes every accepted draw is the full set, so only seed noise is left: too narrow.
    """
    form = FORMS[fit.form]
    rng = np.random.default_rng(seed)
    n, p = fit.n_sizes, form.n_params
    u_full = np.log(fit.sizes_x) - math.log(fit.x0)
    thetas = np.full((n_boot, p), np.nan)
    if n <= p:
        return Bootstrap(fit, thetas, method, float("nan"))
    starts = [fit.theta]
    if method == "residual":
        fitted = form.predict_z(fit.theta, u_full)
        resid = (fit.sizes_z - fitted) * math.sqrt(n / (n - p))
        resid = resid - resid.mean()
        widen = float(stats.t.ppf(0.975, n - p) / stats.norm.ppf(0.975))
        for b in range(n_boot):
            z_b = fitted + rng.choice(resid, size=n, replace=True)
            res, _ = _minimise(form, u_full, z_b, starts, delta)
            if res is not None:
                thetas[b] = res.x
    elif method == "cases":
        widen = 1.0
        for b in range(n_boot):
            while True:
                pick = rng.integers(0, n, size=n)
                if len(set(pick.tolist())) > p:
                    break
            u_b = u_full[pick]
            z_b = np.array([rng.choice(fit.clusters[i], size=len(fit.clusters[i])).mean()
                            for i in pick])
            res, _ = _minimise(form, u_b, z_b, starts, delta)
            if res is not None:
                thetas[b] = res.x
    else:
        raise ValueError(f"unknown bootstrap method {method!r} (valid: residual, cases)")
    return Bootstrap(fit, thetas, method, widen)


def stable_seed(seed: int, *key: object) -> int:
    """A per-fit seed: the same fit gets the same resamples whatever else is fitted beside it."""
    return seed * 1_000_003 + zlib.crc32("|".join(map(str, key)).encode())


def power_exponent(x, y, groups, n_boot: int, seed: int, method: str, key: Sequence[object]
                   ) -> tuple[float, tuple[float, float], float]:
    """(exponent, its 95% bootstrap interval, R²) of a pure power law y = A·x^-exponent, with
    resamples seeded by ``key`` (:func:`stable_seed`)."""
    fit = fit_curve(x, y, "power", groups=groups)
    boot = bootstrap_fit(fit, n_boot, stable_seed(seed, *key), method)
    return fit.params["alpha"], boot.interval("alpha"), fit.r2


# ---------------------------------------------------------------------------------------------
# From the runs table to fits


# The x axes a runs table can carry (harness/sweep/table.py): the paper's conventions, params
# (generator + aligner) and train_flops (3 x forward x images), and what runs, trainable_params and
# executed_flops (diffusion batch multiplier counted, a frozen text path forward only).
X_AXES = ("params", "trainable_params", "train_flops", "executed_flops")

_SEED_COLUMN = r"^(?P<metric>{metrics})[_/.\-](?:seed|s)[_=\-]?(?P<seed>\d+)$"


def observations(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The runs table in long form: one row per (run, seed, metric) with a finite value.

    Seeds come either as repeated rows of one (token, order, size) or as columns such as
    ``fid_seed1`` / ``fid/seed=1``; both give rows here. Columns of the result:
    ``run_key, token, order, size``, the x axes ``X_AXES``, ``seed, metric, value``.
    """
    messages = []
    pattern = _SEED_COLUMN.format(metrics="|".join(METRICS))
    per_seed = {c: m.groupdict() for c in runs.columns if (m := re.match(pattern, str(c)))}
    base = [m for m in METRICS if m in runs.columns]
    absent = [m for m in METRICS if m not in runs.columns
              and not any(v["metric"] == m for v in per_seed.values())]
    if absent:
        messages.append(f"metric columns absent from the runs table: {', '.join(absent)}")
    keep = ["run_key", "token", "order", "size", *X_AXES, "seed"]
    frame = runs.reindex(columns=keep).copy()
    if "run_key" not in runs.columns:
        frame["run_key"] = [f"row{i}" for i in range(len(runs))]
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce")
    parts = []
    for metric in base:
        part = frame.assign(metric=metric, value=pd.to_numeric(runs[metric], errors="coerce"))
        parts.append(part)
    for column, info in per_seed.items():
        part = frame.assign(metric=info["metric"], seed=float(info["seed"]),
                            value=pd.to_numeric(runs[column], errors="coerce"))
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=keep + ["metric", "value"]), messages
    obs = pd.concat(parts, ignore_index=True)
    for x in X_AXES:
        obs[x] = pd.to_numeric(obs[x], errors="coerce")
    for metric, group in obs.groupby("metric", sort=False):
        bad = int((~np.isfinite(group["value"])).sum())
        if 0 < bad < len(group):
            messages.append(f"{metric}: {bad} of {len(group)} values missing or not numeric; "
                            "those rows are left out")
        elif bad == len(group):
            messages.append(f"{metric}: no values in any completed run; its fits are skipped")
    obs = obs[np.isfinite(obs["value"])].reset_index(drop=True)
    return obs, messages


def split_by_status(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(completed runs, the others). Without a ``status`` column every run counts as completed."""
    if "status" not in runs.columns:
        return runs, runs.iloc[0:0]
    done = runs["status"].astype(str).str.strip().str.lower() == "completed"
    return runs[done].reset_index(drop=True), runs[~done].reset_index(drop=True)


FIT_COLUMNS = (["metric", "token", "order", "x", "form"]
               + [f"{p}{s}" for p in ("E", "A", "alpha", "slope", "intercept")
                  for s in ("", "_ci_low", "_ci_high")]
               + ["r2", "n_points", "n_sizes", "converged", "starts_agreeing", "n_starts",
                  "objective", "n_boot", "n_boot_ok", "ci_method", "ci_widen", "x0", "x_min",
                  "x_max"])
"""Columns of fits.csv, in order (described in analysis/report.py FITS_COLUMNS)."""


@dataclass
class FitRecord:
    """A fit of one metric of one variant against one x, with its bootstrap."""

    metric: str
    token: str
    order: str
    x: str
    fit: Fit
    boot: Bootstrap

    @property
    def form(self) -> str:
        return self.fit.form

    def row(self) -> dict[str, object]:
        """The fits.csv row (documented in analysis/report.py FITS_COLUMNS)."""
        row: dict[str, object] = {"metric": self.metric, "token": self.token,
                                  "order": self.order, "x": self.x, "form": self.form}
        for name in ("E", "A", "alpha", "slope", "intercept"):
            value = self.fit.params.get(name, float("nan"))
            lo, hi = (self.boot.interval(name) if name in self.fit.params
                      else (float("nan"), float("nan")))
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = value, lo, hi
        row.update(r2=self.fit.r2, n_points=self.fit.n_points, n_sizes=self.fit.n_sizes,
                   converged=self.fit.converged, starts_agreeing=self.fit.starts_agreeing,
                   n_starts=self.fit.n_starts, objective=self.fit.objective,
                   n_boot=len(self.boot.thetas), n_boot_ok=self.boot.n_ok,
                   ci_method=self.boot.method, ci_widen=self.boot.widen, x0=self.fit.x0,
                   x_min=float(self.fit.sizes_x.min()), x_max=float(self.fit.sizes_x.max()))
        return row


def forms_for(metric: str, geneval_form: str = "loglinear") -> list[str]:
    """The forms fitted to a metric, the preferred one (drawn in figures) first."""
    if metric == "val_loss":
        return ["offset", "power"]
    if metric == "fid":
        return ["offset", "power"]  # offset only kept where the data support it (fit_table)
    return [geneval_form]


@_one_blas_thread
def fit_table(obs: pd.DataFrame, xs: Sequence[str] = ("params", "train_flops"),
              n_boot: int = 500, seed: int = 0, method: str = "residual",
              geneval_form: str = "loglinear", fid_offset_gain: float = 0.1,
              delta: float = DELTA) -> tuple[list[FitRecord], list[str]]:
    """Fit every metric of every variant against each x in ``xs`` (of ``X_AXES``).

    Whatever cannot be fitted (fewer than 3 sizes, values a form cannot take, a constant metric,
    x missing) is skipped with a message. FID's offset form is fitted with ≥ 4 sizes and kept
    only when it lowers the Huber objective by ``fid_offset_gain`` (relative) over the power law.
    Where a variant's FLOPs are a constant multiple of its params (same steps at every size),
    the FLOPs fit is the params fit with x rescaled — exactly, as the fit works in centred
    log x — and is reused rather than recomputed.
    """
    records: list[FitRecord] = []
    messages: list[str] = []
    if obs.empty:
        return records, ["no completed runs with metric values: nothing to fit"]
    present = set(zip(obs["token"], obs["order"]))
    for token, order in sorted(present - set(VARIANT_PAIRS)):
        messages.append(f"variant {token}/{order} is not one of the study's four "
                        "(discrete|continuous × raster|random); its runs are not fitted")
    first: dict[tuple, tuple[pd.Index, FitRecord]] = {}  # fits against xs[0], for reuse
    for x in xs:
        for metric in [m for m in METRICS if m in set(obs["metric"])]:
            for token, order in VARIANT_PAIRS:
                label = f"{metric} {token}/{order} vs {x}"
                sub = obs[(obs["metric"] == metric) & (obs["token"] == token)
                          & (obs["order"] == order)]
                if sub.empty:
                    if (token, order) in present:
                        messages.append(f"{label}: no values; fit skipped")
                    continue
                xv = sub[x].to_numpy(float)
                if not (np.isfinite(xv) & (xv > 0)).all():
                    keep = np.isfinite(xv) & (xv > 0)
                    messages.append(f"{label}: {int((~keep).sum())} rows without a positive {x};"
                                    " left out")
                    sub = sub[keep]
                fits: dict[str, Fit] = {}
                parts: dict[str, pd.DataFrame] = {}
                reused: dict[str, FitRecord] = {}
                for form in forms_for(metric, geneval_form):
                    part = _fittable(sub, form, x, label, messages)
                    if part is None:
                        continue
                    parts[form] = part
                    earlier = first.get((metric, token, order, form))
                    moved = _rescaled(*earlier, part, x) if earlier else None
                    if moved is not None:
                        fits[form], reused[form] = moved.fit, moved
                        continue
                    fits[form] = fit_curve(part[x], part["value"], form, groups=part["size"],
                                           delta=delta)
                    if not fits[form].converged:
                        messages.append(f"{label} [{form}]: optimiser did not converge "
                                        f"({fits[form].message}); reported with converged=False")
                if metric == "fid" and "offset" in fits and "power" in fits:
                    gain = 1.0 - fits["offset"].objective / max(fits["power"].objective, 1e-300)
                    if gain < fid_offset_gain:
                        messages.append(f"{label} [offset]: dropped, the data do not support an "
                                        f"offset (objective {max(gain, 0.0):.1%} below the "
                                        f"power law's, needs {fid_offset_gain:.0%})")
                        del fits["offset"]
                for form, fit in fits.items():
                    record = reused.get(form) or FitRecord(
                        metric, token, order, x, fit,
                        bootstrap_fit(fit, n_boot, stable_seed(seed, metric, token, order, form),
                                      method, delta))
                    if x == xs[0]:
                        first[(metric, token, order, form)] = (parts[form].index, record)
                    records.append(record)
    return records, messages


def _fittable(sub: pd.DataFrame, form: str, x: str, label: str, messages: list[str]
              ) -> pd.DataFrame | None:
    """The rows ``form`` can fit, or None (with the reason appended to ``messages``)."""
    f = FORMS[form]
    ok = f.valid(sub["value"].to_numpy(float))
    if not ok.all():
        messages.append(f"{label} [{form}]: {int((~ok).sum())} values outside the form's "
                        "domain; left out")
    part = sub[ok]
    n_sizes = part["size"].nunique()
    need = max(3, f.n_params + 1)
    if n_sizes < need:
        messages.append(f"{label} [{form}]: {n_sizes} sizes, needs {need}; fit skipped")
        return None
    n_x = part.groupby("size")[x].mean().nunique()
    if n_x < need:
        messages.append(f"{label} [{form}]: {n_x} distinct values of {x}, needs {need}; "
                        "fit skipped")
        return None
    if np.ptp(part["value"].to_numpy(float)) == 0:
        messages.append(f"{label} [{form}]: metric is constant; fit skipped")
        return None
    return part


def _rescaled(index: pd.Index, record: FitRecord, part: pd.DataFrame, x: str
              ) -> FitRecord | None:
    """``record`` moved to the x of ``part``, if it fitted the same rows and x is a constant
    multiple of its own x; otherwise None."""
    if not index.equals(part.index):
        return None
    ratio = part[x].to_numpy(float) / part[record.x].to_numpy(float)
    if not np.isfinite(ratio).all() or np.ptp(ratio) > 1e-9 * abs(ratio.mean()):
        return None
    k = float(ratio.mean())
    fit = record.fit
    x0 = fit.x0 * k
    params = {n: float(v) for n, v in FORMS[fit.form].public(fit.theta, x0).items()}
    moved = replace(fit, x0=x0, sizes_x=fit.sizes_x * k, params=params)
    return FitRecord(record.metric, record.token, record.order, x, moved,
                     replace(record.boot, fit=moved))


def preferred(records: Sequence[FitRecord], metric: str, token: str, order: str,
              x: str = "params") -> FitRecord | None:
    """The fit drawn in figures and used for comparisons: the first of ``forms_for`` present."""
    found = {r.form: r for r in records
             if (r.metric, r.token, r.order, r.x) == (metric, token, order, x)}
    for form in ("offset", "power", "loglinear", "logit"):
        if form in found:
            return found[form]
    return None


def extrapolate(records: Sequence[FitRecord], ladder: dict[str, float] = PAPER_PARAMS,
                level: float = 0.95) -> pd.DataFrame:
    """Every params-fit's prediction at the ladder sizes, with its bootstrap interval."""
    rows = []
    sizes = np.array(list(ladder.values()))
    for r in records:
        if r.x != "params":
            continue
        pred = r.fit.predict(sizes)
        lo, hi = r.boot.predict_interval(sizes, level)
        for i, (name, n) in enumerate(ladder.items()):
            rows.append({"metric": r.metric, "token": r.token, "order": r.order, "form": r.form,
                         "size": name, "params": n, "prediction": float(pred[i]),
                         "ci_low": float(lo[i]), "ci_high": float(hi[i]),
                         "extrapolated": bool(n > r.fit.sizes_x.max() * 1.0001
                                              or n < r.fit.sizes_x.min() / 1.0001)})
    return pd.DataFrame(rows, columns=["metric", "token", "order", "form", "size", "params",
                                       "prediction", "ci_low", "ci_high", "extrapolated"])


# ---------------------------------------------------------------------------------------------
# Summary statistics


def config_means(obs: pd.DataFrame) -> pd.DataFrame:
    """One row per (token, order, size): the seed-mean of each metric (columns = metrics)."""
    if obs.empty:
        return pd.DataFrame(columns=["token", "order", "size", "params"])
    table = obs.pivot_table(index=["token", "order", "size"], columns="metric", values="value",
                            aggfunc="mean")
    params = obs.groupby(["token", "order", "size"])["params"].mean()
    return table.join(params).reset_index()


def correlations(obs: pd.DataFrame, against: str = "val_loss",
                 metrics: Sequence[str] = ("fid", "geneval_overall"),
                 ) -> tuple[pd.DataFrame, list[str]]:
    """Pearson r of each metric with ``against`` across configurations (seed means).

    Per token type and over all runs; the interval is Fisher's z (needs ≥ 4 configurations).
    Seeds are averaged first: they are repeated evaluations of one model, not independent runs.
    """
    columns = ["metric", "against", "token", "n", "r", "ci_low", "ci_high", "p_value"]
    means = config_means(obs)
    rows, messages = [], []
    for metric in metrics:
        if metric not in means.columns or against not in means.columns:
            messages.append(f"correlation {metric}~{against}: a metric is absent; skipped")
            continue
        for token in ("discrete", "continuous", "all"):
            sel = means if token == "all" else means[means["token"] == token]
            pair = sel[[metric, against]].dropna()
            n = len(pair)
            if n < 3 or pair[metric].nunique() < 2 or pair[against].nunique() < 2:
                messages.append(f"correlation {metric}~{against} ({token}): {n} configurations "
                                "with both values or a constant column; skipped")
                continue
            r, p = stats.pearsonr(pair[metric], pair[against])
            lo = hi = float("nan")
            if n > 3 and abs(r) < 1:
                zr, half = math.atanh(r), stats.norm.ppf(0.975) / math.sqrt(n - 3)
                lo, hi = math.tanh(zr - half), math.tanh(zr + half)
            rows.append({"metric": metric, "against": against, "token": token, "n": n,
                         "r": float(r), "ci_low": lo, "ci_high": hi, "p_value": float(p)})
    return pd.DataFrame(rows, columns=columns), messages


def winners(obs: pd.DataFrame, records: Sequence[FitRecord],
            metrics: Sequence[str] = ("val_loss", "fid", "geneval_overall")) -> pd.DataFrame:
    """Each variant's value at the largest size two or more variants reached, ranked.

    Uncertainty: the standard deviation over seeds (NaN with one seed) and the preferred
    params-fit's 95% bootstrap interval at that variant's parameter count.
    """
    columns = ["metric", "size", "rank", "token", "order", "mean", "seed_sd", "n_seeds", "params",
               "fit_form", "fit_pred", "fit_ci_low", "fit_ci_high", "gap_to_best"]
    rows = []
    for metric in metrics:
        sub = obs[obs["metric"] == metric]
        if sub.empty:
            continue
        per = sub.groupby(["size", "token", "order"]).agg(
            mean=("value", "mean"), seed_sd=("value", "std"), n_seeds=("value", "size"),
            params=("params", "mean")).reset_index()
        order_sizes = per.groupby("size")["params"].median().sort_values(ascending=False)
        counts = per.groupby("size").size()
        shared = [s for s in order_sizes.index if counts[s] >= 2]
        if not shared:
            continue
        at = per[per["size"] == shared[0]].copy()
        at = at.sort_values("mean", ascending=LOWER_IS_BETTER[metric]).reset_index(drop=True)
        best = at["mean"].iloc[0]
        for rank, row in at.iterrows():
            rec = preferred(records, metric, row["token"], row["order"])
            pred = lo = hi = float("nan")
            if rec is not None:
                pred = float(rec.fit.predict([row["params"]])[0])
                lo_a, hi_a = rec.boot.predict_interval([row["params"]])
                lo, hi = float(lo_a[0]), float(hi_a[0])
            rows.append({"metric": metric, "size": shared[0], "rank": rank + 1,
                         "token": row["token"], "order": row["order"], "mean": row["mean"],
                         "seed_sd": row["seed_sd"], "n_seeds": int(row["n_seeds"]),
                         "params": row["params"], "fit_form": rec.form if rec else "",
                         "fit_pred": pred, "fit_ci_low": lo, "fit_ci_high": hi,
                         "gap_to_best": abs(row["mean"] - best)})
    return pd.DataFrame(rows, columns=columns)
