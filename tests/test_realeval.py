"""Real-image evaluation: corruption ladders, ranking measures, `rankiq evaluate real`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers_qa import rankiq
from rankiq.service.fft import fft2c
from rankiq.training import ladders as lad
from rankiq.training.realeval import (
    adjacent_correct,
    consistent,
    flag_by_level,
    model_agreement,
    resampled,
    resampling_changes,
    spearman,
    summarise_ladders,
    zero_filled,
)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A small head-like magnitude slice with air around it."""
    from rankiq.service.qa.synth import phantom

    return phantom(1, 48, "T2", np.random.default_rng(3))[0]


def test_ladder_shapes_clean_level_and_determinism(image):
    a = lad.ladders(image, seed=5, index=0)
    b = lad.ladders(image, seed=5, index=0)
    c = lad.ladders(image, seed=6, index=0)
    assert list(a) == list(lad.TYPES)
    for kind in lad.TYPES:
        assert len(a[kind]) == lad.N_LEVELS
        assert all(x.shape == image.shape and x.dtype == np.float32 for x in a[kind])
        assert np.array_equal(a[kind][0], image)
        assert all(np.array_equal(x, y) for x, y in zip(a[kind], b[kind], strict=True))
    assert not np.array_equal(a["noise"][3], c["noise"][3])
    assert np.array_equal(a["blur"][3], c["blur"][3])  # no randomness in blur


def test_every_ladder_is_monotone_in_its_own_measure(image):
    from rankiq.service.iqm import head_mask

    lads = lad.ladders(image, seed=0, index=0)
    head = head_mask(image)
    # noise: the residual's std grows with the level, ~ level x head mean
    resid = [float(np.std(x - image)) for x in lads["noise"]]
    assert all(b > a for a, b in zip(resid, resid[1:], strict=False))
    # complex noise of std 0.10 x head mean; the magnitude keeps about 1/sqrt(2) of it
    assert 0.5 < resid[-1] / (0.10 * image[head].mean()) < 1.0
    # blur: high-frequency energy falls
    def hf(x: np.ndarray) -> float:
        k = np.abs(fft2c(x.astype(np.complex64)))
        n = x.shape[0]
        k[n // 4: 3 * n // 4, n // 4: 3 * n // 4] = 0
        return float((k**2).sum())

    e = [hf(x) for x in lads["blur"]]
    assert all(b < a for a, b in zip(e, e[1:], strict=False))
    # motion and undersampling: the L2 error grows
    for kind in ("motion", "undersample"):
        err = [float(np.linalg.norm(x - image)) for x in lads[kind]]
        assert all(b > a for a, b in zip(err, err[1:], strict=False)), kind


def test_undersampling_keeps_the_stated_fraction_of_lines_nested():
    ny = 64
    kept = lad.LEVELS["undersample"]
    masks = lad.nested_line_masks(ny, kept, 0.2, np.random.default_rng(0))
    centre = np.zeros(ny, bool)
    centre[ny // 2 - 6: ny // 2 - 6 + 13] = True  # round(0.2 * 64) = 13 lines
    for frac, m in zip(kept, masks, strict=True):
        assert m.sum() == round(frac * ny)
        assert m[centre].all()
    for a, b in zip(masks, masks[1:], strict=False):
        assert not (b & ~a).any()  # each level's kept lines are a subset of the previous


def test_level_values_and_bad_arguments():
    assert lad.level_value("noise", 0) == 0.0
    assert lad.level_value("undersample", 0) == 1.0
    assert lad.level_value("blur", 5) == lad.LEVELS["blur"][-1]
    with pytest.raises(ValueError):
        lad.level_value("ghost", 1)
    with pytest.raises(ValueError):
        lad.ladder(np.zeros((2, 4, 4)), "noise", np.random.default_rng(0))


def test_adjacent_accuracy_counts_ties_and_nan_as_wrong():
    assert adjacent_correct([0, 1, 1, 3, 2, 5]) == [True, False, True, False, True]
    assert adjacent_correct([0, float("nan"), 2]) == [False, False]
    s = summarise_ladders({
        "a": {"noise": [0, 1, 2, 3, 4, 5], "blur": [5, 4, 3, 2, 1, 0]},
        "b": {"noise": [0, 1, 1, 3, 2, 5], "blur": [1, 1, 1, 1, 1, 1]},
    })
    assert s["per_type"]["noise"]["correct"] == 5 + 3
    assert s["per_type"]["noise"]["pairs"] == 10
    assert s["per_type"]["blur"]["accuracy"] == 0.0
    assert s["overall"] == pytest.approx({"correct": 8, "pairs": 20, "accuracy": 0.4,
                                          "spearman_mean": s["overall"]["spearman_mean"],
                                          "spearman_n": 3})
    # constant ladder has no rho: blur averages image a only
    assert s["per_type"]["blur"]["spearman_mean"] == pytest.approx(-1.0)
    assert s["per_type"]["blur"]["spearman_n"] == 1
    assert list(s["per_type"]) == ["noise", "blur"]


def test_spearman_on_hand_made_lists():
    assert spearman([0, 1, 2, 3], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks of y with a tie: 1, 2.5, 2.5, 4 -> rho = 4.5 / sqrt(5 * 4.5)
    assert spearman([0, 1, 2, 3], [1, 5, 5, 9]) == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    assert math.isnan(spearman([0, 1, 2], [1, 1, 1]))
    assert math.isnan(spearman([0, 1, 2], [1, float("nan"), 3]))


def test_flag_by_level_counts_assessable_images_per_level():
    flags = {
        "a": {"noise": [False, False, True, None, True, True],
              "blur": [False, True, True, True, True, True]},
        "b": {"noise": [None, None, None, None, None, False],  # out of range until level 5
              "blur": [None, None, None, None, None, None]},
    }
    fl = flag_by_level(flags)
    assert fl["clean"] == {"flagged": 0, "assessable": 1}  # each clean image once
    assert [d["flagged"] for d in fl["per_type"]["noise"]] == [0, 1, 0, 1, 1]
    assert [d["assessable"] for d in fl["per_type"]["noise"]] == [1, 1, 0, 1, 2]
    assert [d["flagged"] for d in fl["all"]] == [1, 2, 1, 2, 2]
    assert [d["assessable"] for d in fl["all"]] == [2, 2, 1, 2, 3]
    assert list(fl["per_type"]) == ["noise", "blur"]


def test_model_agreement_of_two_rebuilds_on_hand_made_ladders():
    def entry(kind, values):
        return {"kind": kind, "values": values}

    a = {"x": {"noise": [1.0, 2.0, 3.0], "blur": [1.0, 1.5, 4.0]}}
    b = {"x": {"noise": [1.1, 2.2, 1.5], "blur": [1.1, 1.65, 4.4]}}  # one step reversed
    out = model_agreement({"m1": entry("rankiq", a), "EFC": entry("iqm", a),
                           "m2": entry("rankiq", b)})
    assert len(out) == 1 and (out[0]["a"], out[0]["b"]) == ("m1", "m2")  # IQMs are not models
    g = out[0]
    assert g["images"] == 5  # the clean image once, then two levels of each type
    assert g["steps"] == 4 and g["steps_ordered_differently"] == 1
    assert g["median_change"] == pytest.approx(0.1) and g["max_change"] == pytest.approx(0.5)
    assert g["spearman"] == pytest.approx(spearman([1, 2, 3, 1.5, 4], [1.1, 2.2, 1.5, 1.65, 4.4]))
    same = model_agreement({"m1": entry("rankiq", a), "m2": entry("rankiq", a)})[0]
    assert same["spearman"] == pytest.approx(1.0) and same["max_change"] == 0.0
    assert same["steps_ordered_differently"] == 0


def test_compare_consistency_rule():
    assert consistent(1.0, 2.0, [0.6, 0.1, 0.3])  # a lower score, a preferred
    assert not consistent(1.0, 2.0, [0.3, 0.1, 0.6])
    assert consistent(3.0, 2.0, [0.2, 0.5, 0.3])  # 'similar' verdict, b still above a
    assert not consistent(2.0, 2.0, [0.5, 0.0, 0.5 - 1e-3])
    assert consistent(2.0, 2.0, [0.45, 0.1, 0.45])


@pytest.mark.slow
def test_evaluate_real_end_to_end(tmp_path):
    out_json, out_md = tmp_path / "real.json", tmp_path / "real.md"
    r = rankiq("evaluate", "real", "--images", "pydicom-mr-small", "--json", str(out_json),
               "--out", str(out_md), "--archive")
    assert r.returncode == 0, r.stderr
    assert "| metric |" in r.stdout and "EFC (IQM)" in r.stdout
    doc = json.loads(out_json.read_text())
    assert {"images", "levels", "metrics", "models", "archive", "command", "seed"} <= set(doc)
    assert [i["name"] for i in doc["images"]] == ["pydicom-mr-small"]
    names = set(doc["metrics"])
    assert {"EFC", "FBER", "SNR", "CJV"} <= names
    rankiq_models = [n for n, m in doc["metrics"].items() if m["kind"] == "rankiq"]
    assert rankiq_models, "the shipped no-reference model is evaluated"
    for name, m in doc["metrics"].items():
        assert set(m["per_type"]) == {"noise", "blur", "motion", "undersample"}, name
        assert m["overall"]["pairs"] == 20
        assert 0 <= m["overall"]["correct"] <= 20
        assert all(len(v) == 6 for v in m["values"]["pydicom-mr-small"].values())
    assert doc["metrics"][rankiq_models[0]]["in_range"] == {
        "pydicom-mr-small": {"in_range": True, "reasons": []}}
    cmp = doc["metrics"][rankiq_models[0]]["compare"]
    assert cmp["pairs"] == 20 and 0 <= cmp["consistent"] <= 20
    # the default QA flag along the ladders agrees with the score and the model's threshold
    m = doc["metrics"][rankiq_models[0]]
    fl = m["flag_by_level"]
    assert fl["clean"]["assessable"] == 1 and len(fl["all"]) == 5
    thresholds = next(r for r in doc["models"] if r["name"] == rankiq_models[0])["qa_thresholds"]
    threshold = thresholds.get(doc["images"][0]["contrast"], thresholds["other"])
    for kind, flags in m["flags"]["pydicom-mr-small"].items():
        assert len(flags) == 6
        for value, f in zip(m["values"]["pydicom-mr-small"][kind], flags, strict=True):
            assert f is None or f == (value > threshold), (kind, value, f)
    assert "Default QA flag of" in r.stdout
    arch = doc["archive"]["models"][rankiq_models[0]]
    assert arch["clean"]["series"] == 3 and arch["corrupted"]["series"] == 4
    assert arch["not_scored"] == 0
    md = out_md.read_text()
    assert md.startswith("```\nrankiq evaluate real") and "| metric |" in md


@pytest.mark.slow
def test_evaluate_real_bad_input_is_one_line_exit_2(tmp_path):
    r = rankiq("evaluate", "real", "--images", "no-such-image", "--no-models")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no-such-image" in r.stderr
    r = rankiq("evaluate", "real", "--iqms", "psnr", "--no-models")
    assert r.returncode == 2 and "psnr" in r.stderr
    r = rankiq("evaluate", "real", "extra", "--no-models")
    assert r.returncode == 2
    r = rankiq("evaluate", "real", "--models", str(tmp_path / "none"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    r = rankiq("evaluate", str(tmp_path / "run"))  # runs still need --out
    assert r.returncode == 2 and "--out" in r.stderr


def test_json_has_no_nan_or_infinity_literals():
    from rankiq.training.commands.realeval_cmd import _finite

    doc = {"a": [1.0, float("nan"), float("inf"), -float("inf")], "b": {"c": (2, 3.5)}}
    text = json.dumps(_finite(doc), allow_nan=False)
    assert json.loads(text) == {"a": [1.0, None, "inf", "-inf"], "b": {"c": [2, 3.5]}}


def test_extra_emri_frames_are_available_by_name_only():
    """The other nine frames of emri_small are a set of their own: never in the default set
    (one scan would count ten times), loaded when named."""
    from rankiq.training.realdata import available_names, real_images

    default = [im.name for im in real_images()]
    known = available_names()
    if "pydicom-data-emri-f4" not in default:
        pytest.skip("pydicom-data is not installed")
    assert "pydicom-data-emri-f0" not in default and "pydicom-data-emri-f0" in known
    assert known[:len(default)] == default
    frames = real_images(["pydicom-data-emri-f0", "pydicom-data-emri-f9"])
    assert [im.name for im in frames] == ["pydicom-data-emri-f0", "pydicom-data-emri-f9"]
    assert all(im.image.shape == (64, 64) for im in frames)
    assert not np.array_equal(frames[0].image, frames[1].image)


def test_asl_mosaic_tiles_are_its_slices():
    """dicom3tools' Siemens PASL mosaic: slice 10 in the default set, the other 19 by name;
    each a 72x72 tile at 3 mm with a head in air (not the mosaic's empty corner)."""
    from rankiq.training.realdata import ASL_FILE, available_names, real_images

    if not ASL_FILE.is_file():
        pytest.skip("the Debian package dicom3tools is not installed")
    default = [im.name for im in real_images()]
    assert "dicom3tools-asl-s10" in default and "dicom3tools-asl-s0" not in default
    assert {f"dicom3tools-asl-s{i}" for i in range(20)} <= set(available_names())
    tiles = real_images(["dicom3tools-asl-s0", "dicom3tools-asl-s19"])
    assert [im.name for im in tiles] == ["dicom3tools-asl-s0", "dicom3tools-asl-s19"]
    for im in tiles:
        assert im.image.shape == (72, 72) and im.pixel_spacing == (3.0, 3.0)
        # the head fills the middle of its tile, air surrounds it
        assert im.image[24:48, 24:48].mean() > 5 * im.image[:6].mean()


def test_zero_filled_interpolation_keeps_the_scale_and_the_spectrum(image):
    up = zero_filled(image, 2)
    assert up.shape == (96, 96) and up.dtype == np.float32
    assert up.mean() == pytest.approx(float(image.mean()), rel=0.02)  # same intensity scale
    k = np.abs(fft2c(up.astype(np.complex64)))
    assert k[:24].max() < 1e-3 * k.max()  # nothing beyond the acquired band (up to |x|)
    assert resampled(image, "block_mean_half").shape == (24, 24)
    assert resampled(image, "cubic_2x").min() >= 0
    with pytest.raises(ValueError, match="unknown resampling"):
        resampled(image, "nearest")


def test_the_acquisition_header_undoes_zero_filled_interpolation(image):
    from rankiq.training.realdata import RealImage

    import rankiq

    model = rankiq.load_model("iqnet-noref")
    if model.kind != "features":
        pytest.skip("the shipped no-reference model is not a features model")
    res = resampling_changes([RealImage("phantom", image, (1.0, 1.0), "synthetic", "", "T2")],
                             model)["phantom"]
    assert set(res["changes"]) == {"zerofill_2x", "zerofill_2x_header", "linear_2x",
                                   "cubic_2x", "block_mean_half"}
    # told what was acquired, the score of the interpolated copy is the acquired one's
    assert abs(res["changes"]["zerofill_2x_header"]) < 0.05
    assert abs(res["changes"]["zerofill_2x"]) > abs(res["changes"]["zerofill_2x_header"])


@pytest.mark.parametrize("reverse", [False, True])
def test_explain_attributes_each_misordered_ladder_to_its_features(image, monkeypatch,
                                                                    reverse: bool):
    """`--explain`: exactly the ladders the model misorders are listed, each level's total is
    the change of log(score) from the clean image, and each listed feature's change is the
    model's score with that one feature swapped in (largest first, none below the cut).
    Reversed (the heaviest level first), a ladder the model orders is misordered, so the
    attribution is checked whatever the shipped model gets right."""
    from rankiq.service.noref import FEATURES, prepare_features
    from rankiq.training import realeval
    from rankiq.training.realdata import RealImage
    from rankiq.training.realeval import EXPLAIN_MIN, explain_misordered

    if reverse:
        forward = realeval.ladders
        monkeypatch.setattr(realeval, "ladders", lambda img, seed, index: {
            k: v[::-1] for k, v in forward(img, seed, index).items()})

    import rankiq

    model = rankiq.load_model("iqnet-noref")
    if model.kind != "features":
        pytest.skip("the shipped no-reference model is not a features model")
    ims = [RealImage("phantom", image, (1.0, 1.0), "synthetic", "", "T2")]
    rows = explain_misordered(ims, model, seed=0)
    built = realeval.ladders(image, 0, 0)
    listed = {r["type"] for r in rows}
    for kind, ladder in built.items():
        f = prepare_features(np.stack([x.astype(np.float32) for x in ladder])).features
        s = np.asarray(model.score(f), np.float64).reshape(-1)
        assert (kind in listed) == (not all(adjacent_correct(s.tolist()))), kind
        if kind not in listed:
            continue
        row = next(r for r in rows if r["type"] == kind)
        np.testing.assert_allclose(row["scores"], s, rtol=1e-6)
        for lv in row["levels"]:
            assert lv["total"] == pytest.approx(math.log(s[lv["level"]] / s[0]), abs=1e-6)
            changes = list(lv["features"].values())
            assert changes == sorted(changes, key=abs, reverse=True)
            assert all(abs(c) > EXPLAIN_MIN for c in changes)
            for name, c in lv["features"].items():
                g = f[:1].copy()
                g[0, FEATURES.index(name)] = f[lv["level"], FEATURES.index(name)]
                assert c == pytest.approx(math.log(float(model.score(g)[0]) / s[0]), abs=1e-6)
    assert explain_misordered(ims, object()) == []  # not a features model: nothing to explain
    assert rows or not reverse  # backwards, every ladder with a step ordered forwards is listed
