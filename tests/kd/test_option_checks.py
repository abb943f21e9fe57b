"""Every KD option value is type- and range-checked when the method is built (not at the first step)."""

from __future__ import annotations

import pytest

from recokd.errors import UserError
from recokd.kd.registry import available_methods, build_kd_method
from recokd.nnunet.kd_setup import kd_options

CH = ([4, 8], [8, 16], 3)


@pytest.mark.parametrize(
    ("method", "option", "value", "expected"),
    [
        ("reco", "chunk", 0, "an integer >= 1"),
        ("reco", "chunk", 2.5, "an integer >= 1"),
        ("reco", "compile", "maybe", "true or false"),
        ("reco", "validate_targets", 1, "true or false"),
        ("reco", "temperature", "2", "a number > 0"),
        ("reco", "temperature", 0, "a number > 0"),
        ("reco", "fg", -1, "a number >= 0"),
        ("reco", "context", "global", "one of 'gc', 'affinity'"),
        ("reco", "level_weights", [1, "a"], "null or a list of numbers >= 0, one per tapped stage"),
        ("reco", "ignore_label", -1, "null or a label value >= 0"),
        ("skd", "pool", "median", "one of 'max', 'avg'"),
        ("cirkd", "grid", 0, "an integer >= 1"),
        ("rkd", "across_batch", "yes", "true or false"),
        ("logits", "temperature", float("nan"), "a number > 0"),
        ("reco", "tau", -0.5, "a number >= 0"),
        ("dist", "tau", 0, "a number > 0"),  # a temperature, where ReCo-KD's tau is an exponent
    ],
)
def test_bad_option_values_are_refused_naming_method_option_and_expectation(method, option, value, expected):
    with pytest.raises(ValueError) as e:
        build_kd_method(method, *CH, **{option: value})
    assert str(e.value) == f"option {option!r} of KD method {method!r} must be {expected}, got {value!r}"


def test_every_default_passes_its_own_check():
    for name in available_methods():
        build_kd_method(name, *CH)  # defaults are valid
    build_kd_method("reco", *CH, chunk=64, compile=False, level_weights=[0.6, 0.4], ignore_label=2, alpha=0)
    build_kd_method("reco", *CH, tau=0)  # no size normalisation of the region weights: allowed


def test_an_ignore_label_contradicting_the_dataset_is_refused():
    with pytest.raises(UserError, match=r"ignore_label=5 contradicts the dataset's ignore label \(None"):
        kd_options("reco", {"ignore_label": 5}, None, False)
    assert kd_options("reco", {}, 3, False)["ignore_label"] == 3
    assert kd_options("reco", {"ignore_label": 3}, 3, False) == {"ignore_label": 3}
    notes = []
    assert kd_options("fitnet", {}, 3, True, warn=notes.append) == {}
    assert len(notes) == 2 and "does not take it" in notes[0]
