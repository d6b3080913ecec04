"""Recall-first evaluation: thresholds, metrics, bootstrap CIs, calibration and temperature scaling.

Conventions: ``y_true`` holds 0 = NORMAL, 1 = PNEUMONIA; ``prob`` is P(PNEUMONIA); an image is called
positive when ``prob >= threshold``. Thresholds are chosen on *validation* predictions only and then
applied, frozen, to the test set; the operating rule itself is :func:`utils.artifacts.threshold_for_recall`.
Every function is pure (no global state, no file access); scikit-learn does the ranking metrics and the
confusion matrices.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from scipy.optimize import minimize_scalar
from scipy.stats import binomtest
from sklearn.metrics import average_precision_score, brier_score_loss, confusion_matrix, roc_auc_score, roc_curve

from utils.artifacts import labels_and_probs, rule_name, threshold_for_recall
from utils.fileio import jsonable

ArrayLike = Sequence[float] | np.ndarray

#: Names of the headline metrics, in display order (keys of :func:`evaluate_predictions`'s ``metrics``).
THRESHOLD_METRICS: tuple[str, ...] = ("sensitivity", "specificity", "precision", "npv", "f1", "accuracy")
THRESHOLD_FREE_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "brier", "ece")
HEADLINE_METRICS: tuple[str, ...] = THRESHOLD_METRICS + THRESHOLD_FREE_METRICS

_EPS = 1e-7  # probability clip before taking logits


def _ratio(num: float, den: float) -> float:
    """``num / den``, or nan when the denominator is zero (metric undefined)."""
    return float(num) / den if den else math.nan


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


# ------------------------------------------------------------------------------------------ thresholds
def youden_threshold(y_true: ArrayLike, prob: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (first, i.e. highest, on ties)."""
    y, p = labels_and_probs(y_true, prob)
    if not _both_classes(y):
        raise ValueError("youden_threshold needs both classes")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop sklearn's +inf "nobody positive" point
    return float(thr[np.argmax(tpr - fpr)])


def choose_thresholds(y_val: ArrayLike, p_val: ArrayLike, target_recall: float = 0.98) -> dict[str, float]:
    """The candidate operating points, all fitted on validation data only.

    Keys: :func:`utils.artifacts.rule_name` (e.g. ``"recall>=0.98"``, :func:`threshold_for_recall`, the
    recall-first rule), ``"youden"`` (:func:`youden_threshold`, balanced) and ``"0.5"`` (the naive
    default rule, for comparison).
    """
    return {rule_name(target_recall): threshold_for_recall(y_val, p_val, target_recall),
            "youden": youden_threshold(y_val, p_val),
            "0.5": 0.5}


# --------------------------------------------------------------------------------------------- metrics
def threshold_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict[str, float]:
    """Confusion counts and the rates derived from them at ``prob >= threshold``.

    Keys: ``sensitivity`` (recall, TP/(TP+FN)), ``specificity`` (TN/(TN+FP)), ``precision`` (PPV,
    TP/(TP+FP)), ``npv`` (TN/(TN+FN)), ``f1``, ``accuracy`` and the counts ``tp fp tn fn``. A rate whose
    denominator is zero is nan.
    """
    y, p = labels_and_probs(y_true, prob)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, (p >= threshold).astype(np.int64),
                                                       labels=[0, 1]).ravel())
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "accuracy": _ratio(tp + tn, y.size),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def outcome_groups(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> np.ndarray:
    """Each image's outcome at ``prob >= threshold`` (the series' decision rule): ``"TP" "FN" "FP" "TN"``."""
    y, p = labels_and_probs(y_true, prob)
    called = p >= threshold
    return np.where(y == 1, np.where(called, "TP", "FN"), np.where(called, "FP", "TN"))


def _bin_sums(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of [0, 1] (the last one closed): image count, sum of prob, sum of labels."""
    idx = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    return (np.bincount(idx, minlength=n_bins), np.bincount(idx, weights=p, minlength=n_bins),
            np.bincount(idx, weights=y, minlength=n_bins))


def reliability_curve(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Per-bin calibration table over ``n_bins`` equal-width bins of [0, 1] (the last bin includes 1).

    Columns: ``bin_lower``, ``bin_upper``, ``mean_pred`` (mean probability in the bin), ``frac_pos``
    (observed fraction of PNEUMONIA), ``count``. Empty bins have count 0 and nan means.
    """
    count, sum_p, sum_y = _bin_sums(*labels_and_probs(y_true, prob), n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:], "mean_pred": sum_p / count,
                             "frac_pos": sum_y / count, "count": count})


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> float:
    """ECE = sum over equal-width bins b of (n_b / N) * |mean prob in b - fraction positive in b|.

    0 for a perfectly calibrated model (within each bin the mean predicted probability equals the
    observed frequency); up to 1 for a confidently wrong one. Empty bins contribute nothing. The bins
    are those of :func:`reliability_curve`.
    """
    y, p = labels_and_probs(y_true, prob)
    _, sum_p, sum_y = _bin_sums(y, p, n_bins)
    return float(np.abs(sum_p - sum_y).sum() / y.size) if y.size else math.nan  # n_b/N*|sum_p/n_b - sum_y/n_b|


def threshold_free_metrics(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> dict[str, float]:
    """``roc_auc``, ``pr_auc`` (average precision), ``brier`` and ``ece`` (:func:`expected_calibration_error`).

    The ranking metrics are nan when only one class is present.
    """
    y, p = labels_and_probs(y_true, prob)
    both = _both_classes(y)
    return {"roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
            "pr_auc": float(average_precision_score(y, p)) if both else math.nan,
            "brier": float(brier_score_loss(y, p, pos_label=1)) if y.size else math.nan,
            "ece": expected_calibration_error(y, p, n_bins)}


def headline_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float,
                     n_bins: int = 10) -> dict[str, float]:
    """All :data:`HEADLINE_METRICS` (threshold and threshold-free) at ``threshold``, counts excluded."""
    tm = threshold_metrics(y_true, prob, threshold)
    return {**{k: tm[k] for k in THRESHOLD_METRICS}, **threshold_free_metrics(y_true, prob, n_bins)}


def mann_whitney_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (average ranks for ties) in plain NumPy, for loops that call it
    thousands of times; nan with one class. tests/test_metrics.py checks it against scikit-learn."""
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _headline_fast(y: np.ndarray, p: np.ndarray, threshold: float, n_bins: int = 10) -> list[float]:
    """:func:`headline_metrics`' values (same order, same definitions, nan where undefined) in plain NumPy.

    The bootstrap calls this thousands of times; scikit-learn's per-call input checks would dominate.
    ROC AUC is the Mann-Whitney statistic with average ranks for ties; PR AUC is scikit-learn's average
    precision (sum over distinct scores of recall increase × precision). tests/test_metrics.py checks
    both against scikit-learn.
    """
    pred = p >= threshold
    tp = int(np.count_nonzero(pred & (y == 1)))
    fp = int(np.count_nonzero(pred)) - tp
    n_pos = int(np.count_nonzero(y))
    fn, tn = n_pos - tp, y.size - n_pos - (int(np.count_nonzero(pred)) - tp)
    out = [_ratio(tp, tp + fn), _ratio(tn, tn + fp), _ratio(tp, tp + fp), _ratio(tn, tn + fn),
           _ratio(2 * tp, 2 * tp + fp + fn), _ratio(tp + tn, y.size)]
    if 0 < n_pos < y.size:
        auc = mann_whitney_auc(y, p)
        order = np.argsort(-p, kind="mergesort")
        ps, ys = p[order], y[order]
        last = np.r_[np.flatnonzero(np.diff(ps)), ys.size - 1]  # last image of each distinct score
        tps = np.cumsum(ys)[last]
        precision = tps / (last + 1)
        ap = float(np.sum(np.diff(np.r_[0.0, tps / n_pos]) * precision))
        out += [float(auc), ap]
    else:
        out += [math.nan, math.nan]
    out += [float(np.mean((p - y) ** 2)) if y.size else math.nan, expected_calibration_error(y, p, n_bins)]
    return out


# ------------------------------------------------------------------------------------------- bootstrap
def bootstrap_indices(n: int, groups: ArrayLike | None = None, n_boot: int = 1000,
                      seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` resamples of the indices ``0..n-1`` (seeded, hence reproducible).

    Without ``groups`` images are drawn with replacement. With ``groups`` (one patient id per image),
    *patients* are drawn with replacement and each drawn patient contributes all of its images, so
    images of one patient never get split across the resample (the images are not independent).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, size=n)
        return
    groups = np.asarray(groups).ravel()
    if groups.size != n:
        raise ValueError(f"groups has {groups.size} values for {n} predictions")
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")        # images sorted by patient
    sizes = np.bincount(inverse)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    for _ in range(n_boot):
        drawn = rng.integers(0, sizes.size, size=sizes.size)
        lengths = sizes[drawn]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        yield order[np.repeat(starts[drawn], lengths) + offsets]


def _bootstrap_matrix(y: np.ndarray, p: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], Sequence[float]],
                      groups: ArrayLike | None, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, k)`` array of ``fn`` on each resample; nan where a metric is undefined on it."""
    rows: list[np.ndarray | None] = []
    # inputs were validated once by the caller; skipping sklearn's per-call checks halves the run time
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for idx in bootstrap_indices(y.size, groups, n_boot, seed):
            try:
                rows.append(np.asarray(fn(y[idx], p[idx]), dtype=np.float64))
            except ValueError:  # e.g. a sklearn metric refusing a single-class resample
                rows.append(None)
    width = next((r.size for r in rows if r is not None), 1)
    return np.vstack([np.full(width, np.nan) if r is None else r.reshape(width) for r in rows])


def percentile_interval(values: ArrayLike, alpha: float = 0.05) -> dict[str, float]:
    """The percentile bootstrap (1 - alpha) interval ``{"ci_low", "ci_high"}`` of resampled ``values``, ignoring
    non-finite ones (resamples on which the statistic is undefined); nan when none is finite."""
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = v[np.isfinite(v)]
    if not ok.size:
        return {"ci_low": math.nan, "ci_high": math.nan}
    lo, hi = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"ci_low": float(lo), "ci_high": float(hi)}


def evaluate_predictions(y_true: ArrayLike, prob: ArrayLike, threshold: float,
                         groups: ArrayLike | None = None, n_boot: int = 1000, seed: int = 0,
                         alpha: float = 0.05, n_bins: int = 10) -> dict[str, Any]:
    """Every headline metric at a frozen ``threshold`` with a bootstrap CI, from one set of resamples.

    Returns ``{"threshold", "n", "n_positive", "n_patients" (None without groups), "counts": {tp, fp,
    tn, fn}, "metrics": {name: {"value", "ci_low", "ci_high"}} for name in HEADLINE_METRICS,
    "bootstrap": {"n_boot", "unit" ("patient" | "image"), "alpha", "seed", "n_skipped": {name: count}}}``.
    ``n_skipped`` counts the resamples on which a metric was undefined (left out of its interval).
    """
    y, p = labels_and_probs(y_true, prob)
    point = headline_metrics(y, p, threshold, n_bins)
    samples = _bootstrap_matrix(y, p, lambda a, b: _headline_fast(a, b, threshold, n_bins),  # = headline_metrics
                                groups, n_boot, seed)
    counts = threshold_metrics(y, p, threshold)
    return {
        "threshold": float(threshold), "n": int(y.size), "n_positive": int(y.sum()),
        "n_patients": None if groups is None else int(np.unique(np.asarray(groups)).size),
        "counts": {k: counts[k] for k in ("tp", "fp", "tn", "fn")},
        "metrics": {name: {"value": point[name], **percentile_interval(samples[:, i], alpha)}
                    for i, name in enumerate(point)},
        "bootstrap": {"n_boot": int(n_boot), "unit": "image" if groups is None else "patient",
                      "alpha": alpha, "seed": seed,
                      "n_skipped": {name: int(np.isnan(samples[:, i]).sum()) for i, name in enumerate(point)}},
    }


#: Metrics of :func:`operating_point_bootstrap` (threshold-dependent ones are at the re-chosen threshold).
OPERATING_METRICS: tuple[str, ...] = ("sensitivity", "specificity", "precision", "roc_auc")


def operating_point_bootstrap(y_val: ArrayLike, val_probs: Mapping[str, ArrayLike], y_test: ArrayLike,
                              test_probs: Mapping[str, ArrayLike], target_recall: float,
                              groups_val: ArrayLike | None = None, groups_test: ArrayLike | None = None,
                              n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                              metrics: Sequence[str] = OPERATING_METRICS) -> dict[str, Any]:
    """Test metrics whose uncertainty **includes the choice of the threshold**, for one or more models, paired.

    Each resample draws validation patients *and* test patients with replacement (whole patients, when
    ``groups_*`` are given), re-chooses every model's threshold on the validation resample with the operating
    rule (:func:`utils.artifacts.threshold_for_recall`), and scores each model on the *same* test resample at
    its own re-chosen threshold. A threshold fixed at the full-validation value would hide the fact that it
    was itself estimated from a few validation positives. Because all models share every resample, the
    differences between them are paired: the interval of ``a - b`` is the interval of the difference, not a
    comparison of two separate intervals.

    ``val_probs`` / ``test_probs`` map a model name to its probabilities on the same validation / test images.
    Returns ``{"models": {name: {"threshold": {value, ci_low, ci_high}, metric: {value, ci_low, ci_high}}},
    "differences": {"a - b": {metric: {value, ci_low, ci_high, p_le_0}}}, "bootstrap": {...}}``, where point
    values use the full validation threshold on the full test set and ``p_le_0`` is the share of resamples
    in which ``a - b <= 0``.
    """
    yv = np.asarray(y_val).astype(np.int64).ravel()
    yt = np.asarray(y_test).astype(np.int64).ravel()
    names = list(val_probs)
    pv = {k: np.asarray(val_probs[k], dtype=np.float64).ravel() for k in names}
    pt = {k: np.asarray(test_probs[k], dtype=np.float64).ravel() for k in names}

    def score(k: str, idx_v: np.ndarray, idx_t: np.ndarray) -> list[float]:
        yv_, yt_ = yv[idx_v], yt[idx_t]
        if not yv_.any():
            return [math.nan] * (len(metrics) + 1)
        t = threshold_for_recall(yv_, pv[k][idx_v], target_recall)
        vals = _headline_fast(yt_, pt[k][idx_t], t)
        named = dict(zip(HEADLINE_METRICS, vals))
        return [t] + [named[m] for m in metrics]

    full_v, full_t = np.arange(yv.size), np.arange(yt.size)
    point = {k: score(k, full_v, full_t) for k in names}
    draws: dict[str, list[list[float]]] = {k: [] for k in names}
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31, size=2)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for idx_v, idx_t in zip(bootstrap_indices(yv.size, groups_val, n_boot, int(seeds[0])),
                                bootstrap_indices(yt.size, groups_test, n_boot, int(seeds[1]))):
            for k in names:
                draws[k].append(score(k, idx_v, idx_t))
    arr = {k: np.asarray(v, dtype=np.float64).reshape(n_boot, len(metrics) + 1) for k, v in draws.items()}
    cols = ["threshold", *metrics]
    out: dict[str, Any] = {"models": {}, "differences": {}}
    for k in names:
        out["models"][k] = {c: {"value": float(point[k][i]), **percentile_interval(arr[k][:, i], alpha)}
                            for i, c in enumerate(cols)}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = arr[a] - arr[b]
            out["differences"][f"{a} - {b}"] = {
                c: {"value": float(point[a][j] - point[b][j]), **percentile_interval(diff[:, j], alpha),
                    "p_le_0": float(np.mean(diff[np.isfinite(diff[:, j]), j] <= 0)) if np.isfinite(diff[:, j]).any()
                    else math.nan}
                for j, c in enumerate(cols) if c != "threshold"}
    out["bootstrap"] = {"n_boot": int(n_boot), "seed": seed, "alpha": alpha, "target_recall": float(target_recall),
                        "unit": "patient" if groups_test is not None else "image",
                        "threshold": "re-chosen on each validation resample"}
    return out


def paired_difference_ci(a: ArrayLike, b: ArrayLike, groups: ArrayLike | None = None, n_boot: int = 1000,
                         seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Mean of ``a - b`` over paired per-image scores (e.g. a map's hit vs a baseline's on the same images)
    with a bootstrap interval that resamples whole patients (``groups``) or images; ``p_le_0`` is the share of
    resamples in which the mean difference is ``<= 0``."""
    d = np.asarray(a, dtype=np.float64).ravel() - np.asarray(b, dtype=np.float64).ravel()
    if d.size == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_le_0": math.nan, "n": 0}
    means = np.array([d[idx].mean() for idx in bootstrap_indices(d.size, groups, n_boot, seed)])
    return {"value": float(d.mean()), **percentile_interval(means, alpha), "p_le_0": float(np.mean(means <= 0)),
            "n": int(d.size)}


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (nan, nan when ``n == 0``)."""
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return float(ci.low), float(ci.high)


def per_group_recall(y_true: ArrayLike, prob: ArrayLike, threshold: float, groups: ArrayLike,
                     alpha: float = 0.05) -> pd.DataFrame:
    """Recall per group (e.g. subtype bacteria / virus) among the *positive* images of each group.

    One row per group that has positives: ``group``, ``n_positive``, ``detected`` (TP), ``missed`` (FN),
    ``recall``, ``ci_low``, ``ci_high`` (Wilson interval; images treated as independent, so it is
    optimistic when patients contribute several images).
    """
    y, p = labels_and_probs(y_true, prob)
    g = np.asarray(groups).astype(str).ravel()
    if g.size != y.size:
        raise ValueError(f"groups has {g.size} values for {y.size} predictions")
    rows = []
    for name in sorted(set(g[y == 1])):
        hit = p[(g == name) & (y == 1)] >= threshold
        lo, hi = wilson_interval(int(hit.sum()), hit.size, alpha)
        rows.append({"group": name, "n_positive": hit.size, "detected": int(hit.sum()),
                     "missed": int((~hit).sum()), "recall": float(hit.mean()), "ci_low": lo, "ci_high": hi})
    columns = ["group", "n_positive", "detected", "missed", "recall", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------- temperature scaling
def prob_to_logit(prob: ArrayLike) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-7, 1 - 1e-7] so saturated probabilities stay finite."""
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T), computed stably."""
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(scores: ArrayLike, y_true: ArrayLike, from_logits: bool = False,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T > 0 minimising the validation NLL of sigmoid(logit / T).

    ``scores`` are probabilities (default) or logits (``from_logits=True``). T > 1 softens an
    over-confident model, T < 1 sharpens an under-confident one. Dividing every logit by the same
    positive T is monotone, so it changes calibration only, never ranking: AUC, PR-AUC and the ordering
    of images are unchanged (a threshold must be mapped through :func:`apply_temperature`, or re-chosen).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y, _ = labels_and_probs(y_true, s)
    logits = s if from_logits else prob_to_logit(s)
    res = minimize_scalar(lambda log_t: _nll(logits, y, math.exp(log_t)), method="bounded",
                          bounds=(math.log(bounds[0]), math.log(bounds[1])), options={"xatol": 1e-6})
    return float(math.exp(res.x))


def apply_temperature(prob: ArrayLike, temperature: float) -> np.ndarray:
    """Recalibrated probabilities sigmoid(logit(prob) / T) (ranking preserved, see :func:`fit_temperature`)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return 1.0 / (1.0 + np.exp(-prob_to_logit(prob) / temperature))


def nll(y_true: ArrayLike, prob: ArrayLike) -> float:
    """Mean negative log-likelihood (log loss) of probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = labels_and_probs(y_true, prob)
    return _nll(prob_to_logit(p), y, 1.0)


# -------------------------------------------------------------------------------- reporting and JSON
def format_ci(entry: Mapping[str, float], digits: int = 3, signed: bool = False) -> str:
    """``{"value", "ci_low", "ci_high"}`` as ``"0.950 [0.920, 0.970]"``; ``signed`` for a difference:
    ``"+0.012 [-0.004, +0.030]"``."""
    f = f"{'+' if signed else ''}.{digits}f"
    return f"{entry['value']:{f}} [{entry['ci_low']:{f}}, {entry['ci_high']:{f}}]"


def compare_models(results: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = HEADLINE_METRICS,
                   digits: int = 3) -> pd.DataFrame:
    """Side-by-side table: rows = metrics, columns = models, cells ``"0.950 [0.920, 0.970]"``.

    ``results`` maps a model name to an :func:`evaluate_predictions` result (or its ``"metrics"`` dict).
    """
    table = {name: {m: format_ci(res.get("metrics", res)[m], digits) for m in metrics}
             for name, res in results.items()}
    return pd.DataFrame(table, index=list(metrics))


def metrics_record(evaluation: Mapping[str, Any], split: str, threshold_rule: str, model_fingerprint: str,
                   data_fingerprint: str, **extra: Any) -> dict[str, Any]:
    """JSON-ready record for ``assets/metrics.json`` built from an :func:`evaluate_predictions` result.

    Keys: ``split``, ``n``, ``n_positive``, ``n_patients``, ``threshold`` ({"rule", "value"}),
    ``metrics`` (each with CI), ``counts``, ``bootstrap``, ``model_fingerprint``, ``data_fingerprint``,
    plus any ``extra`` (e.g. ``temperature=1.3``). nan becomes null.
    """
    record = {"split": split, "n": evaluation["n"], "n_positive": evaluation["n_positive"],
              "n_patients": evaluation["n_patients"],
              "threshold": {"rule": threshold_rule, "value": evaluation["threshold"]},
              "metrics": evaluation["metrics"], "counts": evaluation["counts"],
              "bootstrap": evaluation["bootstrap"], "model_fingerprint": model_fingerprint,
              "data_fingerprint": data_fingerprint, **extra}
    return jsonable(record)
