"""Verdicts agree with their numbers: the one difference rule, and every verdict sentence fed the edge cases —
negative drops, equal maps, empty maps, a difference inside the margin, an interval across zero."""
from __future__ import annotations

import math

import numpy as np
import pytest

from utils.evaluate.verdicts import (
    VERDICTS,
    baseline_sentence,
    baseline_verdict,
    difference_verdict,
    empty_maps,
    format_difference,
    interval_side,
    is_empty_map,
    no_map_sentence,
    road_scale_sentence,
    road_sentence,
    road_verdict,
    sanity_sentence,
    sanity_step_verdict,
    verdict_phrase,
)

NAN = float("nan")


def ci(value: float, lo: float, hi: float, n: int = 40) -> dict[str, float]:
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": n}


EQUAL = ci(0.0, 0.0, 0.0)  # two equal maps: every bootstrap difference is exactly zero
MISSING = {"value": NAN, "ci_low": NAN, "ci_high": NAN, "n": 0}


# ----------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(("diff", "margin", "expected"), [
    (ci(0.05, 0.02, 0.08), 0.0, "above"),
    (ci(-0.05, -0.08, -0.02), 0.0, "below"),
    (ci(0.01, -0.02, 0.04), 0.0, "inconclusive"),  # the interval straddles zero
    (EQUAL, 0.0, "inconclusive"),  # equal maps: zero is inside [0, 0]
    (ci(0.003, 0.001, 0.005), 0.005, "within"),  # detectable, smaller than the margin
    (ci(-0.003, -0.005, -0.001), 0.005, "within"),
    (ci(0.005, 0.001, 0.009), 0.005, "above"),  # the margin itself counts
    (ci(-0.02, -0.03, -0.01), 0.01, "below"),
    (ci(0.2, -0.1, 0.5), 0.01, "inconclusive"),  # a large estimate with an interval across zero is not shown
    (MISSING, 0.0, "not measured"),
    (ci(0.1, NAN, NAN), 0.0, "inconclusive"),  # an estimate without an interval cannot be read
])
def test_difference_verdict(diff, margin, expected):
    assert difference_verdict(diff, margin) == expected
    assert expected in VERDICTS


def test_interval_side_and_bad_margin():
    assert interval_side(ci(0.003, 0.001, 0.005)) == "above"
    assert interval_side(ci(-0.003, -0.005, -0.001)) == "below"
    assert interval_side(EQUAL) == "across" and interval_side(MISSING) == "not measured"
    with pytest.raises(ValueError, match="margin"):
        difference_verdict(EQUAL, -0.1)


def test_phrases_name_the_verdict_and_the_numbers():
    assert format_difference(ci(0.0123, -0.004, 0.03)) == "+0.012 [95% CI -0.004, +0.030]"
    assert format_difference(MISSING) == "not measured"
    assert verdict_phrase("within", 0.005, "above") == "detectably above zero but within the margin of 0.005"
    assert "includes" in verdict_phrase("inconclusive")
    with pytest.raises(ValueError, match="unknown verdict"):
        verdict_phrase("maybe")


# ----------------------------------------------------------------------------------------- no map
def test_empty_maps_are_constant_or_without_a_finite_value():
    maps = np.zeros((5, 4, 4))
    maps[1, 0, 0] = 1.0  # a map with a location
    maps[2] = 0.7  # constant, not zero: still no location
    maps[3] = np.nan
    maps[4] = np.nan
    maps[4, 1, 1], maps[4, 2, 2] = 0.1, 0.9  # finite values with structure
    assert empty_maps(maps).tolist() == [True, False, True, True, False]
    assert is_empty_map(np.zeros((3, 3))) and not is_empty_map(np.eye(3))
    assert empty_maps(np.zeros((0, 4, 4))).shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        empty_maps(np.zeros((4, 4)))


def test_no_map_sentence_counts():
    assert no_map_sentence(0, 10) == ""
    assert no_map_sentence(3, 10).startswith("3 of 10 maps were empty or constant") and "7 scored" in no_map_sentence(3, 10)
    assert no_map_sentence(4, 4).startswith("All 4 maps were empty")
    with pytest.raises(ValueError):
        no_map_sentence(5, 4)


# ----------------------------------------------------------------------------------------- ROAD
DROP = ci(0.8, 0.3, 1.3)


@pytest.mark.parametrize(("own", "diff", "verdict", "start", "numbers"), [
    (DROP, ci(0.4, 0.1, 0.7), "faithful", "The map is faithful", "+0.400 [95% CI +0.100, +0.700]"),
    # a negative drop: removing what the map points at raises the score — even if the null does worse still
    (ci(-0.012, -0.02, -0.004), ci(0.006, 0.001, 0.011), "not faithful", "The map is not faithful: removing its most "
     "relevant pixels *raises*", "-0.012 [95% CI -0.020, -0.004]"),
    (DROP, ci(-0.3, -0.5, -0.1), "not faithful", "The map is not faithful: the same map moved elsewhere beats it",
     "-0.300 [95% CI -0.500, -0.100]"),
    (DROP, EQUAL, "not shown", "Faithfulness not shown: removing the map's pixels lowers", "+0.000 [95% CI +0.000"),
    (DROP, ci(0.1, -0.1, 0.3), "not shown", "Faithfulness not shown", "the interval includes zero"),
    (ci(0.1, -0.2, 0.4), ci(0.4, 0.1, 0.7), "not shown", "Faithfulness not shown: removing the map's most relevant "
     "pixels does not detectably lower", "+0.100 [95% CI -0.200, +0.400]"),
])
def test_road_sentences(own, diff, verdict, start, numbers):
    assert road_verdict(own, diff) == verdict
    s = road_sentence(own, diff)
    assert s.startswith(start) and numbers in s, s


def test_road_says_when_the_map_beats_the_null_but_its_own_drop_is_not_shown():
    s = road_sentence(ci(0.04, -0.1, 0.17), ci(0.17, 0.03, 0.34), null="another image's map")
    assert road_verdict(ci(0.04, -0.1, 0.17), ci(0.17, 0.03, 0.34)) == "not shown"
    assert "the interval includes zero), although the map beats another image's map (combined ROAD score" in s
    assert "although" not in road_sentence(ci(0.04, -0.1, 0.17), ci(0.1, -0.1, 0.3))


def test_road_inside_the_margin_and_empty_maps():
    diff = ci(0.02, 0.01, 0.03)
    assert road_verdict(DROP, diff, margin=0.05) == "not shown"
    s = road_sentence(DROP, diff, margin=0.05)
    assert "less than the margin of 0.05" in s and "+0.020" in s
    s = road_sentence(ci(0.8, 0.3, 1.3, n=38), ci(0.4, 0.1, 0.7, n=38), n_no_map=2)
    assert s.startswith("The map is faithful") and "2 of 40 maps were empty or constant" in s
    assert road_verdict(MISSING, MISSING) == "no map"
    s = road_sentence(MISSING, MISSING, n_no_map=5, n_total=5)
    assert s == "ROAD was not scored: All 5 maps were empty or constant (no map): nothing could be scored."


def test_road_says_when_the_removal_itself_adds_evidence():
    s = road_sentence(ci(-0.2, -0.4, -0.05), ci(0.3, 0.1, 0.5), control=ci(2.0, 1.5, 2.5, n=30),
                      null="another image's map")
    assert s.startswith("The map is not faithful: removing its most relevant pixels *raises*")
    assert "from 30 control images raises their logit margin by +2.000" in s and "cannot show faithfulness" in s
    flat = road_sentence(DROP, ci(0.4, 0.1, 0.7), control=ci(0.1, -0.2, 0.4))
    assert flat.startswith("The map is faithful") and "adds evidence" not in flat  # a control across zero says nothing


FR = (0.005, 0.01, 0.02)


def test_road_scale_sentence_can_and_cannot_separate():
    # margin 6.9: P = 0.999, where a change of 1 in margin moves P by 0.001 — a probability curve looks flat
    can = road_scale_sentence(6.9, FR, [-0.3, -0.7, -0.9], [0.0, 0.1, 0.2], DROP, [0.0, 0.1, 0.2], ci(0.1, -0.1, 0.3))
    assert "median of 6.90 on these images (P = 0.999)" in can and "moves P by only 0.001" in can
    assert "0.5–2 % of the pixels" in can and "-0.30 … -0.90 for the map" in can and "the curves can separate" in can
    small = road_scale_sentence(6.9, FR, [-0.3, -0.7, -0.9], [0.0, 0.1, 0.2], DROP, [0.1, 0.3, 0.5], ci(0.3, 0.1, 0.5))
    assert "the curves can separate" in small  # a detectable rise, smaller than the map's drop (0.8)
    cannot = road_scale_sentence(6.9, FR, [0.0, 0.1, 0.3], [0.2, 0.5, 1.0], ci(-0.1, -0.3, 0.1), [0.5, 3.6, 9.0],
                                 ci(4.4, 3.5, 5.3))
    assert "cannot separate" in cannot and "+4.40 on NORMAL images against a mean drop of -0.10" in cannot
    assert "+0.50 … +9.00" in cannot


def test_road_scale_sentence_edge_cases():
    none = road_scale_sentence(2.0, FR[:1], [-0.5], [0.0], DROP)
    assert "0.5 % of the pixels" in none and "No control images were given" in none
    assert "P = 0.881" in none and "moves P by 0.105: P is not saturated" in none
    assert road_scale_sentence(NAN, FR, [NAN] * 3, [NAN] * 3, MISSING) == ("ROAD's scale was not measured (no map was "
                                                                           "scored).")
    with pytest.raises(ValueError, match="one change per fraction"):
        road_scale_sentence(1.0, FR, [0.0], [0.0, 0.0, 0.0], DROP)


# ----------------------------------------------------------------------------------------- sanity
def step(blocks: str, sim: float, ref: float, lo: float, hi: float, n: int = 16) -> dict:
    return {"blocks": blocks, "similarity": ci(sim, sim - 0.05, sim + 0.05), "reference": ci(ref, ref - 0.05, ref + 0.05),
            "difference": ci(sim - ref, lo, hi, n)}


def test_sanity_at_and_above_the_reference():
    at = [step("fc+layer4", 0.42, 0.41, -0.03, 0.05), step("fc+layer4+layer3", 0.40, 0.41, -0.05, 0.03)]
    s = sanity_sentence(at, "|Spearman rho|")
    assert s.startswith("|Spearman rho|: at the reference level from fc+layer4 down to the stem") and "0.420" in s
    assert "0.410" in s and "another image's randomised map" in s
    assert all(sanity_step_verdict(x["difference"]) == "at the reference" for x in at)
    above = [*at, step("fc+layer4+layer3+layer2", 0.60, 0.41, 0.12, 0.26)]
    s = sanity_sentence(above, "SSIM")
    assert s.startswith("SSIM: above the reference level at 1 of 3 steps") and "fc+layer4+layer3+layer2" in s
    assert "+0.190 [95% CI +0.120, +0.260]" in s
    # a fixed-threshold rule would pass 0.45 < 0.5; against a reference of 0.20 it does not
    s = sanity_sentence([step("fc+layer4", 0.45, 0.20, 0.18, 0.32)])
    assert s.startswith("|rho|: above the reference level")


def test_sanity_equal_maps_margin_and_no_maps():
    # equal similarity and reference (difference exactly zero): at the reference level
    assert sanity_step_verdict(EQUAL) == "at the reference"
    assert sanity_sentence([step("fc+layer4", 0.3, 0.3, 0.0, 0.0)]).startswith("|rho|: at the reference level")
    inside = step("fc+layer4", 0.43, 0.41, 0.01, 0.03)
    assert sanity_step_verdict(inside["difference"]) == "above the reference"
    assert sanity_step_verdict(inside["difference"], margin=0.05) == "at the reference"
    nothing = {"blocks": "fc+layer4", "similarity": MISSING, "reference": MISSING, "difference": MISSING}
    s = sanity_sentence([nothing], n_no_map=16, n_total=16)
    assert s.startswith("The randomisation check was not scored: All 16 maps were empty")
    s = sanity_sentence([step("fc+layer4", 0.42, 0.41, -0.03, 0.05, n=14)], n_no_map=2)
    assert "2 of 16 maps were empty or constant" in s
    with pytest.raises(ValueError):
        sanity_sentence([])


# ----------------------------------------------------------------------------------------- localisation
def test_baseline_sentences():
    beats = baseline_sentence("near", 0.8, "mean-lesion prior", 0.4, ci(0.4, 0.25, 0.55), 30)
    assert beats.endswith("the map beats every image-blind baseline.") and "0.800" in beats and "+0.400" in beats
    ties = baseline_sentence("energy", 0.12, "lung-field prior", 0.11, ci(0.01, -0.01, 0.03), 30)
    assert "does not beat the best image-blind baseline" in ties
    worse = baseline_sentence("near", 0.2, "mean-lesion prior", 0.4, ci(-0.2, -0.35, -0.05), 30)
    assert "worse than the best image-blind baseline" in worse
    margin = baseline_sentence("near", 0.42, "mean-lesion prior", 0.40, ci(0.02, 0.01, 0.03), 30, margin=0.05)
    assert "does not beat the best image-blind baseline by the margin of 0.05" in margin
    assert baseline_verdict(ci(0.02, 0.01, 0.03), 0.05) == "ties" and baseline_verdict(EQUAL) == "ties"
    empty = baseline_sentence("near", NAN, "centre prior", NAN, MISSING, 0, n_no_map=6)
    assert empty == "near: not scored. All 6 maps were empty or constant (no map): nothing could be scored."
    some = baseline_sentence("near", 0.8, "mean-lesion prior", 0.4, ci(0.4, 0.25, 0.55), 28, n_no_map=2)
    assert "2 of 30 maps were empty or constant" in some
    assert math.isnan(MISSING["value"])
