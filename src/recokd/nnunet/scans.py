"""Folders of raw scans in nnU-Net's naming (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...), checked
against a model's ``dataset.json`` before anything is preprocessed, predicted or written.

:func:`check_scan_folder` is the check of every folder of the user's own scans (unlabelled scans for
distillation, scans to pseudo-label); :func:`labelled_cases` lists the labelled cases of an nnU-Net raw
dataset, whose ids such scans must not reuse. Both build on nnU-Net's own file matching
(``nnunetv2.utilities.utils``) and on :func:`recokd.nnunet.inputs.prediction_cases` (naming, channel count,
unreadable images, NaN voxels).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from pathlib import Path

from recokd.errors import UserError
from recokd.json_files import read_json
from recokd.nnunet.inputs import check_image_file, prediction_cases


def _visible_files(folder: Path) -> list[Path]:
    """The regular files of ``folder`` whose names do not start with a dot (``.DS_Store``, temporaries)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _some(names: list[str], shown: int = 3) -> str:
    """``a, b, c and 4 more``."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_scan_folder(folder: str | Path, dataset_json: dict, *, exclude_case_ids: Iterable[str] = (),
                      check_images: bool = True, plans: dict | None = None, what: str = "scans folder"
                      ) -> dict[str, list[Path]]:
    """The cases of a folder of raw scans, ``{case_id: [channel 0 file, channel 1 file, ...]}``, sorted by id.

    ``dataset_json``: the model's dataset.json (its ``file_ending`` and ``channel_names``). Raises a
    one-line :class:`UserError` naming ``what`` and the file when: the folder does not exist or holds no
    file; a file does not end in ``file_ending``; a file lacks the ``_XXXX`` channel suffix; a case has
    missing or extra channels; a case id is one of ``exclude_case_ids`` (e.g. the labelled cases the scans
    join); with ``check_images``, an image cannot be read or has NaN / infinite voxels, or nnU-Net's image
    reader (the one of ``plans``, else the one nnU-Net picks for the file ending) refuses a case, e.g.
    channels of different shape or spacing. Sub-folders and hidden files are ignored, as nnU-Net does.
    """
    from nnunetv2.utilities.utils import create_paths_fn

    folder = Path(folder).expanduser()
    file_ending, channel_names = dataset_json["file_ending"], dataset_json["channel_names"]
    if not folder.is_dir():
        raise UserError(f"{what} {folder} does not exist or is not a folder")
    files = _visible_files(folder)
    if not files:
        raise UserError(f"{what} {folder} is empty: expected raw images in nnU-Net naming "
                        f"(CASE_0000{file_ending}, ...)")
    other = [p.name for p in files if not p.name.endswith(file_ending)]
    if other:
        raise UserError(f"{what} {folder}: {_some(other)} do(es) not end in {file_ending}, the file ending "
                        f"of the model's dataset.json; convert the scans to {file_ending}")
    cases = prediction_cases(folder, file_ending, channel_names, check_images=False)
    clashes = sorted(set(cases) & set(exclude_case_ids))
    if clashes:
        raise UserError(f"{what} {folder}: case id(s) {_some(clashes)} are labelled cases too; case ids must "
                        f"be unique: rename the scan files (e.g. {clashes[0]}_u_0000{file_ending})")
    names = [p.name for p in files]
    out = {case: [Path(p) for p in create_paths_fn(str(folder), names, file_ending, case)] for case in cases}
    if check_images:
        for paths in out.values():
            for path in paths:
                check_image_file(path)
        check_cases_with_nnunet_reader(out, nnunet_reader_class(dataset_json, plans, out), what)
    return out


def nnunet_reader_class(dataset_json: dict, plans: dict | None, cases: dict[str, list[Path]]) -> type:
    """The image reader nnU-Net's preprocessing uses: the plans' ``image_reader_writer``, or without plans
    the one nnU-Net picks from dataset.json (``overwrite_image_reader_writer``, else the file ending)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    if plans is not None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(plans).image_reader_writer_class
    example = str(next(iter(cases.values()))[0])
    with contextlib.redirect_stdout(io.StringIO()):
        return determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)


def check_cases_with_nnunet_reader(cases: dict[str, list[Path]], reader_class: type, what: str) -> None:
    """Read every case with nnU-Net's image reader ``reader_class`` (e.g. ``SimpleITKIO``), as its
    preprocessing will; a :class:`UserError` naming the case and nnU-Net's complaint if it refuses one."""
    reader = reader_class()
    for case, files in cases.items():
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):
                reader.read_images([str(p) for p in files])
        except Exception as e:  # noqa: BLE001 - nnU-Net's readers raise bare RuntimeErrors after printing why
            detail = " ".join(said.getvalue().split())[:300] or f"{type(e).__name__}: {e}"
            raise UserError(f"{what}: nnU-Net's image reader {reader_class.__name__} refuses case {case} "
                            f"({', '.join(p.name for p in files)}): {detail}") from None


def labelled_cases(raw_dataset: str | Path, what: str = "labelled dataset"
                   ) -> dict[str, tuple[list[Path], Path]]:
    """The labelled training cases of an nnU-Net raw dataset folder, ``{case_id: ([image files], label
    file)}``, as nnU-Net's ``get_filenames_of_train_images_and_targets`` finds them (``imagesTr``/
    ``labelsTr``, or dataset.json's ``dataset`` entry), each file checked to exist."""
    folder = Path(raw_dataset).expanduser()
    if not folder.is_dir():
        raise UserError(f"{what} {folder} does not exist (expected an nnU-Net raw dataset folder "
                        "DatasetXXX_Name with dataset.json, imagesTr and labelsTr)")
    dataset_json = read_json(folder / "dataset.json", f"{what} dataset.json")
    missing = [k for k in ("channel_names", "file_ending") if k not in dataset_json] \
        if isinstance(dataset_json, dict) else ["channel_names", "file_ending"]
    if missing:
        raise UserError(f"{folder / 'dataset.json'} has no {', '.join(missing)} (nnU-Net's dataset.json)")
    if "dataset" in dataset_json:  # nnU-Net's explicit case list (paths relative to the folder)
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        try:
            found = get_filenames_of_train_images_and_targets(str(folder), dataset_json)
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{folder / 'dataset.json'}: its 'dataset' entry does not list cases as nnU-Net "
                            f"expects ({type(e).__name__}: {e})") from e
    else:  # imagesTr/labelsTr, as nnU-Net lists them (without its 12-process pool)
        if not (folder / "labelsTr").is_dir():
            raise UserError(f"{what} {folder} has no labelsTr folder")
        scans = check_scan_folder(folder / "imagesTr", dataset_json, check_images=False,
                                  what=f"{what} images folder")
        ending = dataset_json["file_ending"]
        found = {case: {"images": paths, "label": folder / "labelsTr" / f"{case}{ending}"}
                 for case, paths in scans.items()}
    if not found:
        raise UserError(f"{what} {folder}: dataset.json's 'dataset' entry lists no case")
    out = {}
    for case, entry in sorted(found.items()):
        images, label = [Path(p) for p in entry["images"]], Path(entry["label"])
        n = len(dataset_json["channel_names"])
        if len(images) != n:
            raise UserError(f"{what} {folder}: case {case} has {len(images)} image file(s), dataset.json "
                            f"names {n} channel(s)")
        for path in (*images, label):
            if not path.is_file():
                raise UserError(f"{what} {folder}: {path} (case {case}) does not exist")
        out[case] = (images, label)
    return out
