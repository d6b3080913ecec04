#!/usr/bin/env python3
"""README's results, generated from the committed run reports in ``docs/runs/`` — never typed by hand.

Each recorded run is a folder of ``docs/runs/`` (:data:`RUNS`) holding the JSON reports the notebooks wrote into
``assets/`` (``metrics.json`` with its sections, ``int8_report.json``, ``shortcut.json``, ``vit_comparison.json``,
``attribution_leaderboard.json``, ``data_summary.json``) and a ``run.json`` (commit, date, machine, knobs, the
shipped model's metadata). This script renders README's block between ``<!-- results:start -->`` and
``<!-- results:end -->`` from them:

* every row says what it was **measured on** (split, images, patients) and at which **scale** (image size, epochs,
  weights, device), read from the report the row comes from;
* every interval says how it was made: a patient bootstrap with the **threshold fixed** at the validation value, or
  with the **threshold re-chosen on each validation resample** (the operating point is reported with the latter);
* verdicts are the project's own: the sentence a report carries, else the project's verdict function applied to
  the record (:mod:`utils.evaluate.verdicts`, :func:`utils.studies.shortcut.shortcut_verdict`,
  :func:`utils.studies.leaderboard.leaderboard_table`);
* a report or section the run did not write gives "not measured in this run" — never an older number.

Usage::

    python scripts/results.py                 # rewrite README's results block (make results; make nav runs it too)
    python scripts/results.py --check         # change nothing; exit 1 if README differs from what the reports give
    python scripts/results.py --record-demo   # after `make demo`: copy its reports into docs/runs/demo_cpu_128px/
                                              # (with run.json), then rewrite the block (make record-demo)
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running as `python scripts/results.py` before `pip install -e .`
    sys.path.insert(0, str(ROOT))

from utils.cli import EXIT_OK, EXIT_PARTIAL, Parser, run_main
from utils.errors import UserError
from utils.evaluate.metrics import format_ci
from utils.evaluate.verdicts import baseline_sentence, interval_side
from utils.fileio import atomic_copy, atomic_write, read_json, write_json
from utils.paths import ARTIFACTS, artifact, project_root

README = ROOT / "README.md"
RUNS_DIR = ROOT / "docs" / "runs"
BLOCK_START, BLOCK_END = "<!-- results:start -->", "<!-- results:end -->"
NOT_MEASURED = "not measured in this run"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunSpec:
    """A recorded run shown in README: its folder under ``docs/runs/``, its title, and how it is made."""

    key: str
    folder: str
    title: str
    how: str  # the commands that make and record it


#: The runs README shows, in order.
RUNS: tuple[RunSpec, ...] = (
    RunSpec("demo", "demo_cpu_128px", "Demo profile", "`make demo`, then `make record-demo`"),
    RunSpec("real", "real_heldout_cpu_128px", "Real data, CPU scale",
            "`python scripts/real_run.py --source <the Kermany training folder>`"),
)

#: Report key -> artifact name (the file names come from ``utils.paths.ARTIFACTS``, the one place they are set).
REPORTS: dict[str, str] = {"data": "data_summary", "metrics": "metrics", "int8": "int8_report",
                           "shortcut": "shortcut", "vit": "vit_comparison", "leaderboard": "attribution_leaderboard"}
#: Small tables a run folder keeps beside the reports (copied, not rendered).
COPIED_TOO: tuple[str, ...] = ("history_phase1", "history_phase2", "marker_summary")
#: The split names of the notebooks and how README calls them (a run's ``run.json`` may rename "test").
SPLIT_WORDS: dict[str, str] = {"train": "training", "val": "validation", "test": "test"}
#: Shipped-model metadata copied into ``run.json`` (how its weights were started and trained).
MODEL_KEYS: tuple[str, ...] = ("arch", "weights", "pretrained", "init", "recipe", "phase", "image_size", "profile",
                               "data_source", "trained_on", "threshold", "threshold_rule", "explanation")


def report_file(name: str) -> str:
    """File name of an artifact of :data:`REPORTS` / :data:`COPIED_TOO` inside a run folder."""
    return Path(ARTIFACTS[name]).name


# ------------------------------------------------------------------------------------------ reading a run
@dataclass
class Reports:
    """The reports of one recorded run (``None`` where the run wrote no such file)."""

    folder: Path
    data: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    shortcut: dict[str, Any] | None = None
    vit: dict[str, Any] | None = None
    leaderboard: dict[str, Any] | None = None
    run: dict[str, Any] | None = None

    @property
    def exists(self) -> bool:
        return self.metrics is not None or self.data is not None

    def section(self, name: str) -> dict[str, Any] | None:
        """A section of ``metrics.json`` (``test``, ``val``, ``operating_point``…), or None."""
        return (self.metrics or {}).get(name) or None

    def knobs(self) -> dict[str, Any]:
        """The knobs the run used (as its reports recorded them)."""
        for rec in (self.section("test"), self.data, self.section("val")):
            if rec and isinstance(rec.get("run"), Mapping):
                return dict(rec["run"])
        return {}

    def weights(self) -> str:
        """How the shipped model's weights were started (``run.json``, else notebook 09's record of it)."""
        model = (self.run or {}).get("model") or {}
        if model.get("weights"):
            return str(model["weights"])
        models = (self.vit or {}).get("models") or {}
        first: dict[str, Any] = next(iter(models.values()), {})
        return str(first.get("weights") or "weights not recorded")

    def device(self) -> str:
        """The device the run trained on (``run.json``, else the studies' own scale records)."""
        for rec in (self.run, (self.shortcut or {}).get("scale"), (self.vit or {}).get("scale"),
                    (self.leaderboard or {}).get("scale")):
            if rec and rec.get("device"):
                return device_word(rec["device"])
        return "device not recorded"

    def split_word(self, split: str) -> str:
        """What README calls a split (``run.json`` ``splits.<name>.label`` wins: e.g. "pseudo-test")."""
        label = (((self.run or {}).get("splits") or {}).get(split) or {}).get("label")
        return str(label or SPLIT_WORDS.get(split, split))

    def on(self, split: str, images: int | None = None, patients: int | None = None, what: str = "images") -> str:
        """``"test: 195 images, 110 patients"`` from ``data_summary.json`` (or the counts given)."""
        counts = ((self.data or {}).get("splits") or {}).get(split) or {}
        images = counts.get("images") if images is None else images
        patients = counts.get("patients") if patients is None else patients
        parts = [f"{_n(images)} {what}" if images is not None else "", f"{_n(patients)} patients" if patients else ""]
        return f"{self.split_word(split)}: " + ", ".join(p for p in parts if p)

    def scale(self, knobs: Mapping[str, Any] | None = None, weights: str | None = None,
              device: str | None = None) -> str:
        """``"128 px · 3 + 3 epochs · <weights> · CPU"`` from a report's own knobs (default: the run's)."""
        k = dict(self.knobs() if knobs is None else knobs)
        return scale_tag(k.get("image_size"), (k.get("epochs_phase1"), k.get("epochs_phase2")),
                         weights or self.weights(), device or self.device())

    def study_scale(self, sc: Mapping[str, Any] | None, weights: str | None = None) -> str:
        """The scale line of a study's own ``scale`` record (notebooks 08–10), the run's where it is silent."""
        sc = sc or {}
        knobs = sc.get("knobs") or self.knobs()
        epochs = sc.get("epochs") or (knobs.get("epochs_phase1"), knobs.get("epochs_phase2"))
        return scale_tag(sc.get("image_size") or knobs.get("image_size"), epochs, weights or self.weights(),
                         device_word(sc["device"]) if sc.get("device") else self.device())


def device_word(device: Any) -> str:
    """``"cpu"`` -> ``"CPU"``, ``"cuda"`` -> ``"GPU (cuda)"``; anything else as recorded."""
    d = str(device)
    return {"cpu": "CPU", "cuda": "GPU (cuda)", "mps": "GPU (mps)"}.get(d.lower(), d)


def scale_tag(size: Any, epochs: Sequence[Any], weights: str, device: str) -> str:
    """One short line naming a measurement's scale."""
    parts = [f"{size} px" if size else "size not recorded",
             f"{epochs[0]} + {epochs[1]} epochs" if len(epochs) == 2 and None not in epochs else "epochs not recorded",
             weights, device]
    return " · ".join(parts)


def load_reports(folder: Path) -> Reports:
    """Every report of the run folder ``folder`` (a missing file is None; an unreadable one a one-line error)."""
    rep = Reports(Path(folder))
    for key, name in REPORTS.items():
        path = rep.folder / report_file(name)
        if path.is_file():
            setattr(rep, key, read_json(path))
    if (rep.folder / RUN_FILE).is_file():
        rep.run = read_json(rep.folder / RUN_FILE)
    return rep


# ------------------------------------------------------------------------------------------ small formats
def _n(x: Any) -> str:
    return f"{int(x):,}" if isinstance(x, (int, float)) and math.isfinite(float(x)) else str(x)


def _ci(d: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not d or d.get("value") is None or not math.isfinite(float(d["value"])):
        return "not measured"
    if d.get("ci_low") is None or d.get("ci_high") is None:
        return f"{float(d['value']):{'+' if signed else ''}.3f}"
    return format_ci(d, signed=signed)


def interval_kind(boot: Mapping[str, Any] | None, what: str = "") -> str:
    """How an interval was made, from a report's ``bootstrap`` record: the unit resampled and, for a metric at a
    threshold, whether the threshold was fixed or re-chosen on each validation resample."""
    if not boot:
        return "no interval recorded"
    unit = boot.get("unit", "image")
    n = boot.get("n_boot")
    head = f"{unit} bootstrap" + (f", {_n(n)} resamples" if n else "")
    rule = str(boot.get("threshold") or "")
    if "re-chosen" in rule:
        how = "threshold re-chosen on each validation resample"
    elif what == "paired":
        how = "paired"
    else:
        how = "threshold fixed at the validation value"
    return f"{head}; {how}"


def _sides(diffs: Mapping[str, Mapping[str, Any]], names: Iterable[str]) -> str:
    """Which differences' intervals exclude zero (:func:`utils.evaluate.verdicts.interval_side`)."""
    off = [f"{METRIC_WORDS.get(m, m)} ({interval_side(diffs[m])} zero)" for m in names if m in diffs
           and interval_side(diffs[m]) in ("above", "below")]
    return ("intervals excluding zero: " + ", ".join(off)) if off else "every interval includes zero"


#: How README names the metrics of a record.
METRIC_WORDS: dict[str, str] = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "npv": "NPV", "f1": "F1", "ece": "ECE"}


def _diffs(diffs: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{METRIC_WORDS.get(m, m)} {_ci(d, signed=True)}" for m, d in diffs.items())


def _rates(metrics: Mapping[str, Any]) -> str:
    return (f"sensitivity {_ci(metrics.get('sensitivity'))}, specificity {_ci(metrics.get('specificity'))}, "
            f"ROC AUC {_ci(metrics.get('roc_auc'))}")


def record_sentences(rec: Mapping[str, Any] | None) -> list[str]:
    """The verdict sentences a record carries (``sentences`` as a list or dict, ``verdict_sentences``, or one
    ``sentence``), in order; empty when it carries none."""
    if not rec:
        return []
    for key in ("sentences", "verdict_sentences"):
        val = rec.get(key)
        if isinstance(val, Mapping):
            return [str(v) for v in val.values() if v]
        if isinstance(val, (list, tuple)):
            return [str(v) for v in val if v]
    return [str(rec["sentence"])] if rec.get("sentence") else []


@dataclass
class Row:
    """One line of a results table."""

    what: str
    on: str
    result: str
    intervals: str


def missing(what: str, why: str = NOT_MEASURED) -> Row:
    return Row(what, "—", why, "—")


# ------------------------------------------------------------------------------------------ the rows
def model_rows(rep: Reports) -> list[Row]:
    """Notebook 04: the shipped phase, the threshold and validation, the operating point on test, phase vs phase."""
    choice, val, test, op = (rep.section(k) for k in ("model_choice", "val", "test", "operating_point"))
    rows: list[Row] = []
    if choice:
        parts = [f"{r['model']}: specificity {r['val_specificity']:.3f}, sensitivity {r['val_sensitivity']:.3f}, "
                 f"ROC AUC {r['val_roc_auc']:.3f} at its threshold {r['threshold']:.3f}" for r in choice["validation"]]
        rows.append(Row("shipped phase, chosen on validation", f"{rep.on('val')} · {rep.scale(choice.get('run'))}",
                        f"**{choice['shipped']}** — " + "; ".join(parts) + f". Rule: {choice['rule']}.",
                        "none (a choice)"))
    else:
        rows.append(missing("shipped phase, chosen on validation"))
    if val:
        t, c = val["threshold"], val["counts"]
        note = f" ({val['note']})" if val.get("note") else ""
        rows.append(Row("operating threshold, and validation at it", f"{rep.on('val', val['n'], val.get('n_patients'))}"
                        f" · {rep.scale(val.get('run'))}",
                        f"threshold {t['value']:.3f} ({t['rule']}); at it: {_rates(val['metrics'])}; "
                        f"{c['fn']} FN, {c['fp']} FP{note}", interval_kind(val.get("bootstrap"))))
    else:
        rows.append(missing("operating threshold, and validation at it"))
    if test:
        shipped = (choice or {}).get("shipped")
        c = test["counts"]
        if op and shipped in op.get("models", {}):
            res, kind = op["models"][shipped], interval_kind(op.get("bootstrap"))
        else:
            res, kind = test["metrics"], interval_kind(test.get("bootstrap"))
        rows.append(Row(f"{rep.split_word('test')} at the operating point (shipped model)",
                        f"{rep.on('test', test['n'], test.get('n_patients'))} · {rep.scale(test.get('run'))}",
                        f"{_rates(res)}; at the validation threshold {test['threshold']['value']:.3f}: "
                        f"{c['fn']} FN, {c['fp']} FP", kind))
    else:
        rows.append(missing(f"{rep.split_word('test')} at the operating point"))
    op = op or {}
    for pair, diffs in (op.get("differences") or {}).items():
        rows.append(Row(f"{pair} on {rep.split_word('test')}", f"{rep.on('test')} · {rep.scale(op.get('run'))}",
                        f"{_diffs(diffs)}; {_sides(diffs, diffs)}", interval_kind(op.get("bootstrap")) + " (paired)"))
    return rows


def shift_rows(rep: Reports) -> list[Row]:
    """Notebook 04's dataset shift: validation beside a new population, and local recalibration."""
    shift = rep.section("dataset_shift")
    if not shift:
        return [missing("dataset shift: validation beside a new population"), missing("local recalibration")]
    comp, recal = shift["comparison"], shift["recalibration"]
    scale = rep.scale(shift.get("run"))
    names = comp.get("populations") or ["validation", shift.get("population", "new population")]
    counts = comp.get("counts") or {}
    sizes = " vs ".join(f"{p} {_n(counts[p]['images'])} images, {_n(counts[p]['patients'])} patients"
                        for p in names if p in counts)
    lab, sc = recal.get("labelled") or {}, recal.get("scored") or {}
    boot = (recal.get("bootstrap") or {}).get("bootstrap")
    return [Row(f"dataset shift: validation beside {shift.get('population', names[-1])}",
                f"{sizes or ' vs '.join(names)} · {scale}. {shift.get('description', '')}".strip(),
                " ".join(record_sentences(comp)) or NOT_MEASURED,
                interval_kind(comp.get("bootstrap")) + " (each population resampled)"),
            Row("local recalibration: the threshold re-chosen on a labelled sample of the new population",
                f"labelled {_n(lab.get('images'))} images of {_n(lab.get('patients'))} patients; scored on the other "
                f"{_n(sc.get('images'))} images of {_n(sc.get('patients'))} patients · {scale}",
                " ".join(record_sentences(recal)) or NOT_MEASURED,
                interval_kind(boot).replace("validation resample", "recalibration-sample resample") + " (paired)")]


_METRIC_WORDS = {"near": "near-pointing", "energy": "energy inside the lesion", "pointing": "pointing"}


def _sanity_text(sanity: Mapping[str, Any]) -> str:
    sentences = record_sentences(sanity)
    if sentences:
        return (f"**{sanity['verdict']}** — " if sanity.get("verdict") else "") + " ".join(sentences)
    # a record written before the check had a reference level (issue 22): its numbers, and no verdict
    return (f"recorded with the superseded rule ({sanity.get('rule', 'a fixed bound on mean |ρ|')}): worst mean |ρ| "
            f"{float(sanity['worst_after']):.2f}; no reference level was measured, so this run cannot say whether the "
            f"maps depend on the trained weights")


def _road_text(road: Mapping[str, Any]) -> str:
    sentences = record_sentences(road)
    if sentences:
        return (f"**{road['verdict']}** — " if road.get("verdict") else "") + " ".join(sentences)
    # a record of the superseded check (probability drop, most relevant first, smoothed-noise maps): numbers only
    drop = float(road["drop_map"])
    sign = ("negative: removing what the map points at *raised* P(pneumonia)" if drop < 0 else
            "positive" if drop > 0 else "zero")
    return (f"recorded with the superseded check (drop of P(pneumonia), most relevant pixels first, smoothed-noise "
            f"maps as the null): the map's mean drop {drop:+.3f} ({sign}), the random maps' "
            f"{float(road['drop_random']):+.3f}; map − random {_ci(road.get('difference'), signed=True)}; no verdict "
            f"under the current rule (a drop above zero in logit margin and a null of the map's own geometry)")


def explanation_rows(rep: Reports) -> list[Row]:
    """Notebook 05: the main explanation, its localisation against image-blind baselines, randomisation, ROAD."""
    loc = rep.section("localisation")
    if not loc:
        return [missing(w) for w in ("main explanation", "localisation vs the best image-blind baseline",
                                     "randomisation (sanity) check", "ROAD faithfulness")]
    scale = rep.scale(loc.get("run"))
    name = (loc.get("explanation") or {}).get("name", "not recorded")
    chosen = str(loc.get("chosen_on") or "not recorded")
    if chosen in SPLIT_WORDS:
        how = f"chosen on {SPLIT_WORDS[chosen]}" + (f": {loc['selection_rule']}" if loc.get("selection_rule") else "")
        on = f"{rep.on(chosen)} · {scale}"
    else:
        how, on = f"chosen on: {chosen}", scale
    rows = [Row("main explanation", on, f"{name} — {how}", "none (a choice)")]
    test_word = rep.split_word("test")
    if loc.get("masks") and loc.get("verdict"):
        for metric, v in loc["verdict"].items():
            sentences = record_sentences(v)
            text = " ".join(sentences) if sentences else baseline_sentence(
                _METRIC_WORDS.get(metric, metric), float(v["map"]), str(v["best_baseline"]),
                float(v["best_baseline_value"]), v["difference"], int(v["n"]), int(v.get("n_no_map", 0)),
                float(v.get("margin", 0.0)), images=f"{test_word} true positives")
            rows.append(Row(f"localisation ({_METRIC_WORDS.get(metric, metric)}) vs the best image-blind baseline",
                            f"{test_word}: {_n(v['n'])} true positives · {scale}", text,
                            "patient bootstrap of the paired per-image difference"))
    else:
        rows.append(missing("localisation vs the best image-blind baseline",
                            "not measurable on this data (no lesion masks)" if not loc.get("masks") else NOT_MEASURED))
    sanity, road = loc.get("sanity"), loc.get("road")
    n_s = (sanity or {}).get("n") or (sanity or {}).get("n_images")
    rows.append(Row("randomisation (sanity) check", f"{test_word}: {_n(n_s)} images · {scale}",
                    _sanity_text(sanity), interval_kind(sanity.get("bootstrap"), "paired")
                    if sanity.get("bootstrap") else "as stated in the result")
                if sanity else missing("randomisation (sanity) check"))
    rows.append(Row("ROAD faithfulness", f"{test_word}: {_n(road.get('n'))} images · {scale}", _road_text(road),
                    interval_kind(road.get("bootstrap"), "paired") if road.get("bootstrap") else
                    "paired bootstrap of the per-image difference")
                if road else missing("ROAD faithfulness"))
    return rows


def int8_rows(rep: Reports) -> list[Row]:
    """Notebook 07: INT8 against FP32, paired, and the timings with the machine they were taken on."""
    r = rep.int8
    if not r:
        return [missing("INT8 (ONNX Runtime) vs FP32")]
    m = r.get("machine") or {}
    load = m.get("load_average_1min")
    machine = (f"timings on {m.get('cpu', 'a CPU')}, {m.get('threads', '?')} threads"
               + (f", load average {float(load):.1f}" if load is not None else ""))
    return [Row("INT8 (ONNX Runtime, static QDQ) vs FP32", f"{rep.on('test', r.get('n_test'), None)} · "
                f"{rep.scale(r.get('run'))}; {machine}", str(r["summary"]),
                interval_kind((r.get("paired") or {}).get("bootstrap")) + " (paired INT8 − FP32)")]


def _shortcut_verdict(record: Mapping[str, Any]) -> list[str]:
    sentences = record_sentences(record) or record_sentences(record.get("verdict") if isinstance(
        record.get("verdict"), Mapping) else None)
    if sentences:
        return sentences
    if isinstance(record.get("verdict"), (list, tuple)):
        return [str(s) for s in record["verdict"]]
    from utils.studies.shortcut import shortcut_verdict  # the project's verdict (torch import: only when needed)

    return shortcut_verdict(dict(record))


def shortcut_rows(rep: Reports) -> list[Row]:
    """Notebook 08: the three models on the in-distribution, decorrelated and reversed tests, and the verdict."""
    s = rep.shortcut
    if not s:
        return [missing("shortcut learning (08): a marker that follows the label")]
    sc = s.get("scale") or {}
    auc = s["auc"]
    tests = list(next(iter(auc.values())))
    numbers = "; ".join(f"{model} " + " → ".join(f"{auc[model][t]['value']:.3f}" for t in tests) for model in auc)
    marker = s.get("marker") or {}
    planted = (f"a marker in {marker['p_marker_pneumonia']:.0%} of pneumonias and {marker['p_marker_normal']:.0%} of "
               "normals in training" if "p_marker_pneumonia" in marker else "a marker that follows the label")
    boot = ((s.get("operating_point") or {}).get(tests[-1]) or {}).get("bootstrap")
    return [Row(f"shortcut learning (08): {planted}",
                f"{rep.split_word('test')}: {_n(sc.get('test_images'))} images per version · " + (
                    f"notebook 08's own world: {sc['world']} · {device_word(sc.get('device', 'cpu'))}"
                    if sc.get("world") else rep.study_scale(sc)),
                f"ROC AUC ({' → '.join(tests)} test): {numbers}. " + " ".join(_shortcut_verdict(s)),
                interval_kind(boot) + " (paired between models)")]


def _claim_interval(h: Mapping[str, Any]) -> dict[str, Any]:
    return {"value": h.get("difference"), "ci_low": h.get("ci_low"), "ci_high": h.get("ci_high")}


def vit_rows(rep: Reports) -> list[Row]:
    """Notebook 09: ViT-Tiny beside ResNet-18 on the same test images, paired, and the claims' verdicts."""
    v = rep.vit
    if not v:
        return [missing("ViT-Tiny (09) vs ResNet-18")]
    sc = v.get("scale") or {}
    op = v.get("operating_point") or {}
    pair, diffs = next(iter((op.get("differences") or {}).items()), ("", {}))
    nums = _diffs(diffs)
    claims = "; ".join(f"{h['compared']}: {_ci(_claim_interval(h), signed=True)} → **{h['verdict']}**"
                       for h in v.get("hypothesis") or [])
    weights = "; ".join(f"{k}: {m.get('weights')}" for k, m in (v.get("models") or {}).items())
    extra = " ".join(record_sentences(v))
    text = f"{pair}: {nums}." + (f" Claims: {claims}." if claims else "") + (f" {extra}" if extra else "")
    return [Row("ViT-Tiny (09) vs ResNet-18, same recipe",
                f"{rep.split_word('test')}: {_n(sc.get('test_images'))} images · {rep.study_scale(sc, weights)}",
                text, interval_kind(op.get("bootstrap")) + " (paired between models)")]


def leaderboard_rows(rep: Reports) -> list[Row]:
    """Notebook 10: every attribution method with every check (the leaderboard's own table)."""
    lb = rep.leaderboard
    if not lb:
        return [missing("attribution leaderboard (10)")]
    from utils.studies.leaderboard import leaderboard_table  # the project's reading of the record

    table = leaderboard_table(lb)
    sc = lb.get("scale") or {}
    cols = [c for c in ("randomisation", "ROAD", "vs best prior (near)", "marker (08)") if c in table.columns]
    text = "; ".join(f"{r['method']}: " + ", ".join(f"{c} {r[c]}" for c in cols) for _, r in table.iterrows())
    return [Row("attribution leaderboard (10): each method's verdicts",
                f"{rep.split_word('test')}: {_n(lb.get('n_images'))} images · {rep.study_scale(sc)}",
                text, "paired bootstrap per check")]


ROW_BUILDERS: tuple[Callable[[Reports], list[Row]], ...] = (model_rows, shift_rows, explanation_rows, int8_rows,
                                                            shortcut_rows, vit_rows, leaderboard_rows)


# ------------------------------------------------------------------------------------------ rendering
def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", r"\|")


def table_markdown(rows: Sequence[Row]) -> str:
    lines = ["| what | measured on · scale | result | 95 % intervals |", "|---|---|---|---|"]
    lines += [f"| {_cell(r.what)} | {_cell(r.on)} | {_cell(r.result)} | {_cell(r.intervals)} |" for r in rows]
    return "\n".join(lines)


def _provenance(rep: Reports) -> str:
    run = rep.run or {}
    commit = run.get("commit")
    parts = [f"commit {commit}" + (" with uncommitted changes" if run.get("dirty") else "") if commit
             else "commit not recorded"]
    if run.get("date"):
        parts.append(f"recorded {run['date']}")
    m = run.get("machine") or {}
    if m:
        parts.append(f"on {m.get('cpu', 'a machine')} with {m.get('cores_available', '?')} cores")
    secs = run.get("seconds") or {}
    if secs:
        parts.append(f"notebooks {min(secs)}–{max(secs)} in {sum(float(s) for s in secs.values()) / 60:.0f} min")
    text = ", ".join(parts)
    return text[0].upper() + text[1:]


def render_run(spec: RunSpec, rep: Reports, runs_dir: Path = RUNS_DIR) -> str:
    """The markdown of one run: a paragraph with its data, scale and provenance, then its table."""
    rel = f"docs/runs/{spec.folder}/"
    if not rep.exists:
        return f"**{spec.title}** — no recorded run (`{rel}` holds no reports): run {spec.how}."
    k, data = rep.knobs(), rep.data or {}
    splits = (data.get("splits") or {})
    split_text = " / ".join(f"{rep.split_word(s)} {_n(c.get('images'))} images ({_n(c.get('patients'))} patients)"
                            for s, c in splits.items())
    described = (rep.run or {}).get("data") or data.get("data") or "data not recorded"
    notes = "; ".join(data.get("notes") or [])
    made_by = (rep.run or {}).get("made_by") or spec.how
    head = (f"**{spec.title}** (`{rel}`, made by {made_by}) — {described}. Profile `{k.get('profile', '?')}`, "
            f"source `{k.get('source', data.get('source', '?'))}`, scale {rep.scale()}. Splits by patient: "
            f"{split_text or 'not recorded'}" + (f"; {notes}" if notes else "") + f". {_provenance(rep)}.")
    rows = [row for build in ROW_BUILDERS for row in build(rep)]
    return head + "\n\n" + table_markdown(rows)


def _unmeasured(reports: Sequence[Reports]) -> str:
    """What no recorded run measured, computed from the runs' own scale records."""
    present = [r for r in reports if r.exists]
    has_224_imagenet = any(int(r.knobs().get("image_size") or 0) >= 224 and "imagenet" in r.weights().lower()
                           and "unavailable" not in r.weights().lower() for r in present)
    gaps = [] if has_224_imagenet else ["the full profile at 224 px with ImageNet weights"]
    if not any(r.device().startswith("GPU") for r in present):
        gaps.append("a GPU run")
    if not any(r.knobs().get("source") == "medmnist" for r in present):
        gaps.append("PneumoniaMNIST")
    gaps.append("the official Kaggle test folder (the project never reads it)")
    return "Not measured by any recorded run: " + ", ".join(gaps) + ". Speed: `docs/BENCHMARKS.md`."


def render_block(runs_dir: Path = RUNS_DIR, runs: Sequence[RunSpec] = RUNS) -> str:
    """The whole results block (without its markers)."""
    reports = [load_reports(runs_dir / spec.folder) for spec in runs]
    intro = ("Generated by `scripts/results.py` (`make results`) from the run reports in `docs/runs/`; do not edit by "
             "hand. Each row names what it was measured on and at which scale; the last column says how its 95 % "
             "intervals were made — with the operating threshold fixed, or re-chosen on each validation resample "
             "(the uncertainty of choosing it included, as the operating point is reported).")
    parts = [intro, *(render_run(spec, rep, runs_dir) for spec, rep in zip(runs, reports)), _unmeasured(reports)]
    return "\n\n".join(parts)


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    """``text`` with ``block`` between the results markers."""
    start, end = text.find(BLOCK_START), text.find(BLOCK_END)
    if start < 0 or end < start:
        raise UserError(f"{where}: the markers {BLOCK_START} ... {BLOCK_END} are missing; add them where the results "
                        "go.")
    return text[:start + len(BLOCK_START)] + "\n" + block + "\n" + text[end:]


def update(readme: Path = README, runs_dir: Path = RUNS_DIR, check: bool = False) -> bool:
    """Render the block into ``readme``; True when it changed (with ``check``: would change; nothing written)."""
    readme = Path(readme)
    if not readme.is_file():
        raise UserError(f"{readme} not found: pass --readme with the README that holds the results markers.")
    text = readme.read_text(encoding="utf-8")
    new = replace_block(text, render_block(runs_dir), readme.name)
    if new != text and not check:
        with open(readme, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(new)
    return new != text


# ------------------------------------------------------------------------------------------ recording a run
def _git(repo: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit_info(repo: Path = ROOT) -> dict[str, Any]:
    """``{"commit": short hash or None, "dirty": uncommitted changes?}`` of the checkout that ran."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {"commit": _git(repo, "rev-parse", "--short", "HEAD"), "dirty": bool(status) if status is not None else None}


def model_info(project: Path) -> dict[str, Any] | None:
    """The shipped checkpoint's metadata of :data:`MODEL_KEYS` (how it was started and trained), or None."""
    path = artifact("model", project)
    if not path.is_file():
        return None
    from utils.checkpoint import load_checkpoint

    meta = load_checkpoint(path)["meta"]
    out = {k: meta[k] for k in MODEL_KEYS if k in meta}
    if isinstance(out.get("explanation"), Mapping):
        out["explanation"] = out["explanation"].get("name")
    return out


def _fingerprints(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The data fingerprint each report names (they must agree: one run)."""
    out = {}
    if "data" in reports and reports["data"].get("fingerprint"):
        out[report_file("data_summary")] = str(reports["data"]["fingerprint"])
    for sec, rec in (reports.get("metrics") or {}).items():
        if isinstance(rec, Mapping) and rec.get("data_fingerprint") and sec != "dataset_shift":
            out[f"{report_file('metrics')} [{sec}]"] = str(rec["data_fingerprint"])
    for key in ("shortcut", "vit"):
        fp = ((reports.get(key) or {}).get("scale") or {}).get("fingerprint")
        if fp:
            out[report_file(REPORTS[key])] = str(fp)
    return out


def collect(project: Path) -> dict[str, dict[str, Any]]:
    """The reports a run wrote under ``project/assets`` (those present), checked to come from one run."""
    found = {key: read_json(artifact(name, project)) for key, name in REPORTS.items() if artifact(name, project).is_file()}
    if "metrics" not in found or "data" not in found:
        raise UserError(f"no run reports under {artifact('metrics', project).parent} ({report_file('metrics')} and "
                        f"{report_file('data_summary')} are needed): run the notebooks first (make demo).")
    fps = _fingerprints(found)
    if len(set(fps.values())) > 1:
        ref = fps[report_file("data_summary")]
        odd = [f"{f} ({fp})" for f, fp in fps.items() if fp != ref]
        raise UserError(f"the reports under {artifact('metrics', project).parent} come from different runs: "
                        f"{', '.join(odd)} differ from {report_file('data_summary')} ({ref}); re-run the notebooks that "
                        "wrote them (or delete the stale files) before recording.")
    return found


def record_run(project: Path, dest: Path, info: Mapping[str, Any] | None = None, repo: Path = ROOT) -> list[Path]:
    """Copy the reports of the run in ``project`` into the run folder ``dest`` (files of an earlier run that this
    one did not write are removed, so no stale number survives) and write ``dest/run.json``: commit, date, machine,
    knobs, the shipped model's metadata, plus ``info``. Returns the files written."""
    import torch

    from utils.deploy.timing import machine_info

    project, dest = Path(project), Path(dest)
    found = collect(project)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (*REPORTS.values(), *COPIED_TOO):
        src, dst = artifact(name, project), dest / report_file(name)
        if src.is_file():
            written.append(repo_relative_copy(src, dst, repo, project))
        elif dst.exists():
            dst.unlink()
    knobs = dict((found["metrics"].get("test") or {}).get("run") or found["data"].get("run") or {})
    device = next((str(r["scale"]["device"]) for r in (found.get("shortcut"), found.get("vit"), found.get("leaderboard"))
                   if r and (r.get("scale") or {}).get("device")), "cuda" if torch.cuda.is_available() else "cpu")
    run = {"date": date.today().isoformat(), **commit_info(repo), "machine": machine_info(torch.get_num_threads()),
           "python": platform.python_version(), "device": device, "knobs": knobs, "model": model_info(project),
           **dict(info or {})}
    written.append(write_json(dest / RUN_FILE, run))
    repo_relative_copy(dest / RUN_FILE, dest / RUN_FILE, repo)
    return written


def repo_relative_copy(src: Path, dst: Path, repo: Path = ROOT, project: Path | None = None) -> Path:
    """Copy ``src`` to ``dst`` (atomically); in a JSON report, every path inside the run's ``project`` root is
    written relative to it (``model/…``) and every other path inside the checkout ``repo`` relative to the checkout
    (``.realdata/…``), so a committed record does not name the recording machine's folders."""
    if Path(src).suffix != ".json":
        return atomic_copy(src, dst)
    text = Path(src).read_text(encoding="utf-8")
    for root in ([] if project is None else [project]) + [repo]:
        text = text.replace(str(Path(root).resolve()).rstrip("/") + "/", "")
    return atomic_write(dst, lambda f: f.write(text), binary=False)


def record_demo(project: Path | None = None, runs_dir: Path = RUNS_DIR) -> list[Path]:
    """``make record-demo``: the demo run in ``project`` (default: the project root ``make demo`` wrote to) into
    ``docs/runs/demo_cpu_128px/``. Refuses a run that is not the demo as ``make demo`` runs it."""
    project = project_root() if project is None else Path(project)
    found = collect(project)
    knobs = (found["metrics"].get("test") or {}).get("run") or found["data"].get("run") or {}
    env_set = sorted(v for v in (knobs.get("set_by") or {}).values() if str(v).startswith("CXR_"))
    if knobs.get("profile") != "demo" or env_set:
        why = f"knobs set by the environment ({', '.join(env_set)})" if env_set else f"profile {knobs.get('profile')!r}"
        raise UserError(f"{project}/assets holds a run with {why}: record-demo records the demo as `make demo` runs it "
                        "(unset the CXR_* knobs, run `make demo`, then `make record-demo`).")
    spec = next(s for s in RUNS if s.key == "demo")
    how = spec.how if project.resolve() == project_root().resolve() else (
        "the demo's notebooks run as `make demo` runs them in another project root (e.g. `make bench-demo`'s, kept "
        "with `python -m benchmarks.demo_time --keep`), recorded by `python scripts/results.py --record-demo "
        "--project <root>`")
    return record_run(project, runs_dir / spec.folder, {"run": "demo", "made_by": how,
                                                        "splits": {"test": {"label": "test"}}})


# ------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python scripts/results.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if README's block is out of date")
    p.add_argument("--record-demo", action="store_true",
                   help="first copy the demo's reports (assets/ of the project root) into docs/runs/demo_cpu_128px/")
    p.add_argument("--project", type=Path, default=None, help="project root of the run to record (default: the "
                   "project root: CXR_PROJECT_ROOT, else this checkout)")
    p.add_argument("--readme", type=Path, default=README, help="README holding the results markers")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="folder of the recorded runs (default docs/runs)")
    return p


def _cli(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.record_demo:
        if args.check:
            raise UserError("--record-demo writes files; it cannot be combined with --check.")
        for path in record_demo(args.project, args.runs_dir):
            print(f"recorded {os.path.relpath(path, ROOT)}")
    changed = update(args.readme, args.runs_dir, check=args.check)
    if args.check and changed:
        print(f"{args.readme.name}'s results block is out of date with the reports in {args.runs_dir}: run `make "
              "results` (python scripts/results.py)", file=sys.stderr)
        return EXIT_PARTIAL
    print(f"{'would update' if changed else 'up to date:'} {args.readme.name} results block" if args.check else
          f"{'updated' if changed else 'unchanged:'} {args.readme.name} results block")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when README is (now) up to date, 1 with ``--check`` when it is not, 2 for a user mistake."""
    return run_main(_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
