"""Fold ensembles on the runtime backends (issue 31): ``recokd predict --backend onnxruntime|openvino -f 0 1``
and ``recokd predict-onnx --onnx A B`` average the folds' logits inside nnU-Net's own predictor, as nnU-Net's
PyTorch predictor does with ``-f 0 1``. Reference: nnU-Net's ``nnUNetPredictor`` on the two PyTorch folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from recokd.cli import main
from recokd.errors import UserError
from tests.deploy.test_onnx import _segmentations, tiny_plans, write_results_folder

DATASET = "Dataset902_RecoKDDeploy"


def add_fold(model: Path, fold: int, seed: int) -> Path:
    """``model/fold_<fold>``: fold 0's checkpoint with every weight perturbed (another trained fold)."""
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(seed)
    checkpoint["network_weights"] = {
        k: v + 0.3 * v.std().nan_to_num() * torch.randn(v.shape, generator=generator) if v.is_floating_point()
        else v for k, v in checkpoint["network_weights"].items()}
    checkpoint["init_args"]["fold"] = fold
    (model / f"fold_{fold}").mkdir()
    torch.save(checkpoint, model / f"fold_{fold}" / "checkpoint_final.pth")
    return model / f"fold_{fold}"


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("ensemble_results")
    model = write_results_folder(results / DATASET, tiny_plans([4, 8, 16], [16, 16, 16]))
    add_fold(model, 1, seed=7)
    return model


def _torch_predictor(model: Path, folds: tuple[int, ...]):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), folds)
    return predictor


def _runtime_predictor(backend: str, exported: list[Path]):
    if backend == "onnxruntime":
        from recokd.deploy.onnx_predictor import nnUNetONNXPredictor

        predictor = nnUNetONNXPredictor(tile_step_size=0.5, use_mirroring=True, threads=1)
        predictor.initialize_from_onnx(exported)
    else:
        from recokd.deploy.openvino_backend import nnUNetOpenVINOPredictor

        predictor = nnUNetOpenVINOPredictor(tile_step_size=0.5, use_mirroring=True, threads=1)
        predictor.initialize_from_openvino(exported)
    return predictor


def _export(backend: str, model: Path, fold: int, folder: Path) -> Path:
    if backend == "onnxruntime":
        from recokd.deploy.onnx_export import export_onnx

        return export_onnx(model, folder / f"fold_{fold}.onnx", fold=fold).onnx_path
    from recokd.deploy.openvino_backend import export_openvino

    return export_openvino(model, folder / f"fold_{fold}", fold=fold).folder


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtime_ensemble_equals_nnunet_torch_ensemble(two_folds, tmp_path, backend):
    """Logits of the 2-fold ensemble on a preprocessed volume of several tiles (mirroring on): equal to
    nnU-Net's PyTorch 2-fold ensemble within float tolerance, and measurably different from either fold
    alone (so the ensemble really ran both folds)."""
    exported = [_export(backend, two_folds, f, tmp_path) for f in (0, 1)]
    data = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 20, 16, 24)).astype(np.float32))
    reference = _torch_predictor(two_folds, (0, 1)).predict_logits_from_preprocessed_data(data).float()
    singles = [_torch_predictor(two_folds, (f,)).predict_logits_from_preprocessed_data(data).float()
               for f in (0, 1)]

    predictor = _runtime_predictor(backend, exported)
    assert len(predictor.list_of_parameters) == 2
    got = predictor.predict_logits_from_preprocessed_data(data).float()

    # nnU-Net accumulates the tiles' logits in float16: allow a few fp16 steps (2^-10 relative each)
    tolerance = 2**-8 * max(1.0, float(reference.abs().max()))
    diff = float((got - reference).abs().max())
    assert diff <= tolerance, f"max |{backend} ensemble - torch ensemble| = {diff}"
    for single in singles:  # each fold alone is far from the ensemble: a one-fold run would fail above
        assert float((single - reference).abs().max()) > 10 * tolerance


def test_recokd_predict_runtime_backends_ensemble_folds(two_folds, tmp_path, monkeypatch, capsys):
    """`recokd predict -f 0 1` on onnxruntime (export on the fly) and on openvino (given model folders)
    writes the segmentations of the PyTorch 2-fold ensemble; predict-onnx with two files likewise."""
    from tests.deploy.test_onnx import write_case

    cases = tmp_path / "cases"
    write_case(cases, "case_a", (20, 16, 24), seed=1)
    write_case(cases, "case_b", (16, 24, 18), seed=2)
    for key in ("raw", "preprocessed"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / key))
    monkeypatch.setenv("nnUNet_results", str(two_folds.parent.parent))
    base = ["predict", "-i", str(cases), "-d", "902", "-c", "3d_fullres", "-f", "0", "1", "-tr",
            "nnUNetTrainer", "-p", "nnUNetPlans", "--device", "cpu", "-npp", "0", "-nps", "0"]
    assert main([*base, "-o", str(tmp_path / "torch")]) == 0
    assert main([*base, "-o", str(tmp_path / "ort"), "--backend", "onnxruntime", "--threads", "1"]) == 0
    assert "ensemble of folds 0, 1, ONNX Runtime" in capsys.readouterr().out
    ov = [_export("openvino", two_folds, f, tmp_path) for f in (0, 1)]
    openvino = ["--backend", "openvino", "--openvino", *map(str, ov)]
    assert main([*base, "-o", str(tmp_path / "ov"), *openvino]) == 0
    assert "ensemble of folds 0, 1, OpenVINO fp32" in capsys.readouterr().out
    onnx = [_export("onnxruntime", two_folds, f, tmp_path) for f in (0, 1)]
    assert main(["predict-onnx", "-i", str(cases), "-o", str(tmp_path / "po"), "--onnx", *map(str, onnx),
                 "--sequential", "--threads", "1"]) == 0
    ref = _segmentations(tmp_path / "torch")
    for folder in ("ort", "ov", "po"):
        got = _segmentations(tmp_path / folder)
        assert list(got) == list(ref) == ["case_a.nii.gz", "case_b.nii.gz"]
        for name in ref:
            a, b = sitk.GetArrayFromImage(ref[name]), sitk.GetArrayFromImage(got[name])
            assert (a == b).mean() >= 0.999, f"{folder}/{name}: {(a != b).sum()} of {a.size} voxels differ"
    # fold 0 alone segments differently: the agreement above is the ensemble's
    assert main([*base[:8], "0", *base[10:], "-o", str(tmp_path / "fold0")]) == 0
    fold0 = _segmentations(tmp_path / "fold0")
    assert any((sitk.GetArrayFromImage(ref[n]) != sitk.GetArrayFromImage(fold0[n])).any() for n in ref)


def test_folds_of_different_models_are_refused(two_folds, tmp_path):
    other = write_results_folder(tmp_path / "other", tiny_plans([4, 8, 16], [16, 16, 16], name="OtherPlans"),
                                 folder_name="nnUNetTrainer__OtherPlans__3d_fullres")
    a = _export("onnxruntime", two_folds, 0, tmp_path)
    (tmp_path / "b").mkdir()
    b = _export("onnxruntime", other, 0, tmp_path / "b")
    with pytest.raises(UserError, match=r"fold_0\.onnx and .*fold_0\.onnx cannot be ensembled: their "
                                        r"plans_identifier, plans differ"):
        _runtime_predictor("onnxruntime", [a, b])


def test_predict_onnx_refuses_folds_of_different_models(two_folds, tmp_path, capsys):
    """The same refusal through `recokd predict-onnx --onnx A B`, with the fault matrix's checks
    (tests/test_faults.py): exit 2, one line naming both files, no traceback, nothing written."""
    from tests.deploy.test_onnx import write_case
    from tests.test_faults import fails_cleanly

    other = write_results_folder(tmp_path / "other", tiny_plans([4, 8, 16], [16, 16, 16], name="OtherPlans"),
                                 folder_name="nnUNetTrainer__OtherPlans__3d_fullres")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = _export("onnxruntime", two_folds, 0, tmp_path / "a")
    b = _export("onnxruntime", other, 0, tmp_path / "b")
    cases, out = tmp_path / "cases", tmp_path / "pred"
    write_case(cases, "case_a", (20, 16, 24), seed=1)
    fails_cleanly(["predict-onnx", "-i", str(cases), "-o", str(out), "--onnx", str(a), str(b), "--sequential",
                   "--threads", "1"], capsys, [str(a), str(b), "cannot be ensembled"],
                  [cases, tmp_path / "a", tmp_path / "b", out])
    assert not out.exists()
