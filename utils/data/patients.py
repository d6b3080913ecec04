"""Who is a patient? Patient keys from Kermany file names, and the evidence for the rule.

The Kermany / Kaggle ``chest_xray`` folders carry no patient table: the only trace of a child is the file
name. There are four numbering **series**::

    personN_bacteria_M.jpeg      personN_virus_M.jpeg      (PNEUMONIA)
    IM-XXXX-YYYY.jpeg            NORMAL2-IM-XXXX-YYYY.jpeg (NORMAL; a few carry one more -ZZZZ)

Read naively, ``person12_bacteria_*`` and ``person12_virus_*`` are one child, and so are ``IM-0117-*`` and
``NORMAL2-IM-0117-*``. The names say otherwise: between the official train and test folders 170 person
numbers recur, and *in every one of them* the type differs (bacteria in one folder, virus in the other);
not one recurs with the same type. The NORMAL number ranges of the two folders are disjoint within each
series. Two independent numbering sequences explain that pattern; one child filmed for two diseases in
two folders, 170 times and never once for the same disease, does not. So a patient is keyed by **series
and number**: ``person12_bacteria``, ``person12_virus``, ``IM-0117``, ``NORMAL2-IM-0117``
(:func:`patient_id_from_name`). :func:`patient_key_evidence` recomputes those counts on whatever folder
is loaded, so notebook 01 shows the evidence instead of asserting it.

A file name of no known form gets a stated rule: it is its own patient (its stem), and the loader says
how many such files it found (a patient-level leak guard cannot protect them; the identical-image check
still does).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

_PERSON = re.compile(r"^person(\d+)_(bacteria|virus)_\d+", re.I)
_IM = re.compile(r"^(NORMAL2-)?IM-(\d+)-\d+", re.I)

def parse_name(name: str) -> tuple[str, int] | None:
    """``(series, number)`` of a Kermany file name, or None for a name of no known form."""
    stem = Path(name).stem
    if m := _PERSON.match(stem):
        return m.group(2).lower(), int(m.group(1))
    if m := _IM.match(stem):
        return ("NORMAL2-IM" if m.group(1) else "IM"), int(m.group(2))
    return None


def patient_key(series: str, number: int) -> str:
    """The patient id of ``(series, number)``: ``person12_bacteria``, ``IM-0117``, ``NORMAL2-IM-0117``."""
    if series in ("bacteria", "virus"):
        return f"person{number}_{series}"
    return f"{series}-{number:04d}"


def patient_id_from_name(name: str) -> str:
    """Patient id of a Kermany file name, keyed by series and number (see the module docstring).

    ``person12_bacteria_3.jpeg`` → ``person12_bacteria``; ``NORMAL2-IM-0117-0001.jpeg`` →
    ``NORMAL2-IM-0117``. A name of no known form is its own patient: its stem.
    """
    parsed = parse_name(name)
    return patient_key(*parsed) if parsed else Path(name).stem


def subtype_from_name(name: str) -> str:
    """``bacteria`` / ``virus`` from a Kermany PNEUMONIA file name, else ``''``."""
    parsed = parse_name(name)
    return parsed[0] if parsed and parsed[0] in ("bacteria", "virus") else ""


def unknown_names(names: Iterable[str]) -> list[str]:
    """The names of no known Kermany form (each becomes its own patient)."""
    return [n for n in names if parse_name(n) is None]


def _pairs(folders: pd.Series, names: pd.Series) -> pd.DataFrame:
    parsed = [parse_name(n) for n in names]
    keep = [p is not None for p in parsed]
    df = pd.DataFrame([p for p in parsed if p is not None], columns=["series", "number"])
    df["folder"] = folders[keep].to_numpy()
    df["kind"] = df["series"].map(lambda s: "person" if s in ("bacteria", "virus") else "IM")
    return df.drop_duplicates()


def patient_key_evidence(folders: Iterable[str], names: Iterable[str]) -> pd.DataFrame:
    """How often numbers recur across folders and series, under each way of keying a patient.

    ``folders`` (``train`` / ``test`` …) and ``names`` (file names) describe one image each. One row per
    family of names (``person`` numbers: bacteria + virus; ``IM`` numbers: IM + NORMAL2-IM) with:

    * ``numbers``: distinct numbers; ``in_two_series``: numbers used in both series of the family;
    * ``across_folders``: numbers present in two folders (e.g. train and test);
    * ``across_folders_same_series`` / ``across_folders_other_series``: of those, how many recur within
      the same series, and how many only in the other series.

    Keyed by number alone, every ``across_folders`` number is a patient on both sides of the split; keyed by
    series and number, only ``across_folders_same_series`` are.
    """
    df = _pairs(pd.Series(list(folders)), pd.Series(list(names)))
    rows = []
    for kind, d in df.groupby("kind"):
        by_number = d.groupby("number")
        multi_folder = by_number["folder"].nunique() > 1
        same = d.groupby(["series", "number"])["folder"].nunique() > 1
        same_numbers = set(same[same].index.get_level_values("number"))
        across = set(multi_folder[multi_folder].index)
        rows.append({"family": kind, "series": " + ".join(sorted(d["series"].unique())),
                     "numbers": int(d["number"].nunique()),
                     "in_two_series": int((by_number["series"].nunique() > 1).sum()),
                     "across_folders": len(across),
                     "across_folders_same_series": len(across & same_numbers),
                     "across_folders_other_series": len(across - same_numbers)})
    return pd.DataFrame(rows, columns=["family", "series", "numbers", "in_two_series", "across_folders",
                                       "across_folders_same_series", "across_folders_other_series"])


def number_only_key(name: str) -> str:
    """The naive key this project does *not* use: the number alone (``person12``, ``IM0117``)."""
    parsed = parse_name(name)
    if parsed is None:
        return Path(name).stem
    family = "person" if parsed[0] in ("bacteria", "virus") else "IM"
    return f"{family}{parsed[1]:04d}" if family == "IM" else f"{family}{parsed[1]}"


#: The two ways of keying a patient that notebook 01 compares.
KEY_RULES = {"number only": number_only_key, "series + number": patient_id_from_name}


def shared_patients_by_rule(folders: Iterable[str], names: Iterable[str], a: str = "train", b: str = "test"
                            ) -> dict[str, int]:
    """Patients that would sit in both folder ``a`` and folder ``b`` under each rule of :data:`KEY_RULES`."""
    df = pd.DataFrame({"folder": list(folders), "name": list(names)})
    out = {}
    for rule, key in KEY_RULES.items():
        keys = df.assign(key=df["name"].map(key))
        out[rule] = len(set(keys.loc[keys.folder == a, "key"]) & set(keys.loc[keys.folder == b, "key"]))
    return out
