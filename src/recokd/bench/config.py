"""What a bench is: the study settings every run must share, the selection of runs, the folder layout.

A bench folder holds ``bench_config.json`` with the :class:`Study` (dataset, configuration, fold,
teacher, training schedule, test set): everything that makes two runs comparable. A later
``recokd bench`` on the same folder must describe the same study (it may select other methods,
widths or seeds: those only add runs); otherwise it is refused, since mixing runs trained
under different settings in one table would be wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from recokd.errors import KDError, UserError
from recokd.json_files import write_json_atomic
from recokd.nnunet import layout
from recokd.nnunet.optim import OPTIMIZER_TEXT, check_optimizer_name

CONFIG_FILE = "bench_config.json"
CONFIG_FORMAT = 1
NOKD = "nokd"
TEACHER = "teacher"
#: reserved method: stock nnU-Net on the labelled cases + the teacher's hard pseudo-labels of the unlabelled
#: ones (``--labelled-cases``; :mod:`recokd.bench.labelled`)
PSEUDO = "pseudo"
#: share of unlabelled patches per batch of the KD runs (``recokd train --unlabelled-share``'s default,
#: :data:`recokd.nnunet.unlabelled.DEFAULT_UNLABELLED_SHARE`; kept here so that the CLI imports no torch)
DEFAULT_UNLABELLED_SHARE = 0.5
#: fewest labelled cases: nnU-Net's 5-fold split of them needs 5
MIN_LABELLED_CASES = 5
#: dataset id and name of the phantom dataset written by ``--phantoms`` (inside the bench folder)
PHANTOM_DATASET_ID = 991
PHANTOM_DATASET_NAME = "BenchPhantoms"
RESULT_FILE = "result.json"
#: a run's segmentations of the test scans, in its folder
PREDICTIONS_DIR = "predictions"
LOG_FILE = "run.log"


# ---------------------------------------------------------------------------- parsing helpers


def parse_int_list(text: str, what: str, minimum: int = 0) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (duplicates removed, order kept); UserError naming ``what``."""
    out: list[int] = []
    for raw in str(text).split(","):
        raw = raw.strip()
        try:
            value = int(raw)
        except ValueError:
            raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
        if value < minimum:
            raise UserError(f"{what}: values must be >= {minimum}, got {value}")
        if value not in out:
            out.append(value)
    return out


def registered_methods() -> list[str]:
    """Registered KD methods, in registration order (ReCo-KD, its ablations, then the baselines)."""
    from recokd.kd.registry import available_methods

    return list(available_methods())


def parse_methods(text: str | None, registered: list[str] | None = None) -> list[str]:
    """KD methods of ``--methods`` (default: every registered one), checked against the registry.

    An entry may also be a weighted spec of registered methods (``reco:10``, ``reco+logits:0.5``,
    :func:`recokd.kd.registry.parse_method_spec`): ``reco:10`` trains ReCo-KD at 10 x the study's
    ``--kd-weight``, so one bench can sweep the KD weight. ``nokd`` (the student without KD) and
    ``teacher`` are always part of a bench; listing them is allowed and ignored.
    """
    known = registered_methods() if registered is None else list(registered)
    if text is None or not text.strip():
        return known
    names = [n.strip() for n in text.split(",") if n.strip()]

    def valid(name: str) -> bool:
        if name in known or name in (NOKD, TEACHER, PSEUDO):
            return True
        from recokd.kd.registry import parse_method_spec

        try:
            terms = parse_method_spec(name)
        except KDError:
            return False
        return all(n in known and math.isfinite(w) and w > 0 for n, w in terms)

    unknown = [n for n in names if not valid(n)]
    if unknown:
        raise UserError(
            f"--methods: unknown method(s) {', '.join(unknown)}; registered KD methods: {', '.join(known)} "
            f"(see `recokd methods`; weighted specs such as reco:10 or reco+logits:0.5 are accepted; "
            f"'{NOKD}' and '{TEACHER}' are always included; '{PSEUDO}' needs --labelled-cases)"
        )
    return list(dict.fromkeys(n for n in names if n not in (NOKD, TEACHER)))


def method_weights_text(methods: list[str], kd_weight: float) -> str | None:
    """Each weighted or combined spec of ``methods`` with the weight of each of its terms, in words.

    A suffix weighs one term: ``reco:10+logits`` is ReCo-KD at 10 x ``kd_weight`` plus logit KD at
    1 x, so ``reco+logits:10`` (logits at 10 x, ReCo-KD at 1 x) is a different student. ``None`` when
    every method is a single term at 1 x.
    """
    from recokd.kd.registry import parse_method_spec

    parts = []
    for spec in methods:
        if spec in (NOKD, TEACHER, PSEUDO):
            continue
        terms = parse_method_spec(spec)
        if len(terms) == 1 and terms[0][1] == 1.0:
            continue
        parts.append(f"{spec} = " + " + ".join(f"{name} {w * kd_weight:g}" for name, w in terms))
    if not parts:
        return None
    return (f"KD terms and their weights lambda_max (a suffix :W weighs its term only, W x {kd_weight:g}): "
            + "; ".join(parts))


# ---------------------------------------------------------------------------- configuration


@dataclass
class PhantomSpec:
    """The generated dataset of ``--phantoms`` (:func:`recokd.data.phantoms.write_phantom_dataset`)."""

    cases: int = 24
    test_cases: int = 8
    shape: list[int] = field(default_factory=lambda: [32, 32, 32])
    seed: int = 0
    #: radius factor of the small structures (:func:`recokd.data.anatomy.generate_case`)
    small_scale: float = 1.0

    def validate(self) -> None:
        if self.cases < 5:
            raise UserError("--phantom-cases must be >= 5 (nnU-Net's 5-fold split needs 5 training cases)")
        if self.test_cases < 1:
            raise UserError("--phantom-test-cases must be >= 1")
        if len(self.shape) != 3 or min(self.shape) < 16:
            raise UserError(f"--phantom-shape: expected one or three sizes >= 16, got {self.shape}")
        if not 0.5 <= self.small_scale <= 4.0:
            raise UserError(f"--phantom-small-scale: expected a number in 0.5..4, got {self.small_scale}")


@dataclass
class Study:
    """Settings every run of a bench shares (compared on resume; see the module doc)."""

    dataset: str  #: ``DatasetXXX_Name`` (for ``--phantoms``: the generated one)
    phantoms: dict[str, Any] | None  #: :class:`PhantomSpec` fields, or None for a user dataset
    configuration: str = "3d_fullres"
    fold: str = "0"
    plans: str = "nnUNetPlans"
    c_min: int = 4
    teacher: str | None = None  #: an existing teacher results folder, or None: trained by the bench
    teacher_epochs: int | None = 5  #: when the bench trains the teacher (None otherwise)
    teacher_seed: int | None = 0
    epochs: int = 5
    iters_per_epoch: int = 30
    val_iters: int = 2
    kd_weight: float = 0.01
    #: KD weight schedule and warm-up fraction (``recokd train --schedule/--warmup``)
    schedule: str = "linear"
    warmup: float = 0.6
    #: nnU-Net's data augmentation for every run the bench trains (False: the NoDA trainers)
    augmentation: bool = True
    #: optimiser of every student, KD or not (:mod:`recokd.nnunet.optim`: ``sgd`` or ``adam``)
    optimizer: str = "sgd"
    #: optimiser of the teacher the bench trains
    teacher_optimizer: str = "sgd"
    test_images: str | None = None  #: None: ``imagesTs`` of the raw dataset
    test_labels: str | None = None  #: None: ``labelsTs`` of the raw dataset
    small_classes: list[str] | None = None  #: None: the phantoms' size group "small" (if any)
    #: KD method options of every KD run (``recokd train --kd-option``): ``KEY`` goes to every KD method of
    #: the bench (each must accept it), ``METHOD.KEY`` to that method only (:meth:`kd_options_for`)
    kd_options: dict[str, Any] = field(default_factory=dict)
    #: ``--labelled-cases K``: the students see the labels of the first K training cases (sorted ids) only,
    #: the others are unlabelled scans (None: every training case is labelled, the students see them all)
    labelled_cases: int | None = None
    #: ``--unlabelled-share``: share of unlabelled patches per batch of the KD runs (None without
    #: ``labelled_cases``)
    unlabelled_share: float | None = None
    #: ``--unlabelled-images DIR``: a folder of extra unlabelled scans (raw images in nnU-Net naming, absolute
    #: path) that join the unlabelled pool after the dataset's own unlabelled cases (None: none)
    unlabelled_images: str | None = None
    #: ``--unlabelled-cases U``: the students get the first U scans of the unlabelled pool only (the dataset's
    #: unlabelled cases in sorted order, then the extra images sorted; None: the whole pool)
    unlabelled_cases: int | None = None
    #: ``--pseudo-label-loss``: every KD run trains with ``recokd train --pseudo-label-loss`` (nnU-Net's
    #: Dice+CE on the unlabelled patches against the teacher's online hard labels, besides the KD terms)
    pseudo_label_loss: bool = False

    def validate(self) -> None:
        for name in ("epochs", "iters_per_epoch", "val_iters"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.teacher is None and (self.teacher_epochs is None or self.teacher_epochs < 1):
            raise UserError("--teacher-epochs must be >= 1")
        if not self.kd_weight >= 0:
            raise UserError(f"--kd-weight must be >= 0, got {self.kd_weight}")
        if not 0 <= self.warmup <= 1:
            raise UserError(f"--warmup must be in [0, 1], got {self.warmup}")
        if self.c_min < 1:
            raise UserError(f"--c-min must be >= 1, got {self.c_min}")
        check_optimizer_name(self.optimizer, "--optimizer")
        check_optimizer_name(self.teacher_optimizer, "--teacher-optimizer")
        if self.labelled_cases is None and self.unlabelled_share is not None:
            raise UserError("--unlabelled-share applies with --labelled-cases K only")
        self._check_unlabelled_pool()
        if self.labelled_cases is not None:
            self._check_labelled_split()
        if (self.test_images is None) != (self.test_labels is None):
            raise UserError(
                "give --test-images and --test-labels together (or neither: imagesTs/labelsTs of "
                "the raw dataset)"
            )

    @property
    def label_free(self) -> bool:
        """``--labelled-cases 0``: no student sees a label (KD runs as ``recokd train --label-free``)."""
        return self.labelled_cases == 0

    def _check_labelled_split(self) -> None:
        """The checks of ``--labelled-cases K`` (K >= 5, or 0: label-free students)."""
        k = self.labelled_cases
        assert k is not None
        if 0 < k < MIN_LABELLED_CASES:
            raise UserError(
                f"--labelled-cases must be >= {MIN_LABELLED_CASES} (nnU-Net's 5-fold split of the "
                f"labelled cases needs 5), or 0 (label-free students), got {k}"
            )
        if self.fold == "all":
            raise UserError(
                "--labelled-cases needs a numbered fold -f 0..4 (fold 'all' has no validation split to "
                "keep the same for every student)"
            )
        share = self.unlabelled_share
        if self.label_free:
            if share is not None:
                raise UserError(
                    "--unlabelled-share does not apply with --labelled-cases 0 (label-free KD runs: every "
                    "patch is an unlabelled one)"
                )
            if self.kd_weight <= 0 or (self.warmup > 0 and self.schedule != "constant"):
                raise UserError(
                    "--labelled-cases 0 (label-free KD runs, `recokd train --label-free`) needs "
                    "--kd-weight > 0 and a KD weight from the first step: --warmup 0 or --schedule constant"
                )
        elif share is None or not 0 < share < 1:
            raise UserError(f"--unlabelled-share must be in (0, 1), got {share}")

    def _check_unlabelled_pool(self) -> None:
        """``--unlabelled-images``, ``--unlabelled-cases`` and ``--pseudo-label-loss`` need
        ``--labelled-cases`` (UserError naming those given)."""
        given = [
            flag for flag, value in (
                ("--unlabelled-images", self.unlabelled_images is not None),
                ("--unlabelled-cases", self.unlabelled_cases is not None),
                ("--pseudo-label-loss", self.pseudo_label_loss),
            ) if value
        ]
        if self.labelled_cases is None and given:
            raise UserError(
                f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} with --labelled-cases K only "
                "(the students' unlabelled scans)"
            )
        if self.unlabelled_cases is not None and self.unlabelled_cases < 1:
            raise UserError(f"--unlabelled-cases must be >= 1, got {self.unlabelled_cases}")

    def kd_options_for(self, spec: str) -> dict[str, Any]:
        """The options of :attr:`kd_options` the KD run ``spec`` (``reco``, ``reco:10``,
        ``reco+logits:0.5``) is trained with, checked: a plain ``KEY`` must be accepted by ``spec``, a
        ``METHOD.KEY`` is passed on when ``METHOD`` is a term of ``spec`` and must be one of its options;
        values are checked against the option's default (:func:`recokd.kd.option_checks.check_option`).

        Raises :class:`~recokd.errors.UserError` naming the option, the method and its options.
        """
        from recokd.kd.option_checks import check_option
        from recokd.kd.registry import available_methods, parse_method_spec

        terms = [name for name, _ in parse_method_spec(spec)]
        out: dict[str, Any] = {}
        for key, value in self.kd_options.items():
            method, dot, option = key.rpartition(".")
            targets = [method] if dot else terms
            if dot and method not in terms:
                continue  # addresses another method of the bench
            for name in targets:
                known = available_methods()[name].options()
                if option not in known:
                    raise UserError(
                        f"--kd-option {key}: KD method {name!r} of --methods entry {spec!r} has no option "
                        f"{option!r} (its options: {', '.join(sorted(known))}); address one method with "
                        "METHOD.KEY, or bench the methods that take it in another -o folder"
                    )
                try:
                    check_option(name, option, value, known[option])
                except KDError as e:
                    raise UserError(f"--kd-option {key}: {e}") from None
            out[key] = value
        return out

    def check_kd_options(self, methods: list[str]) -> None:
        """Every KD run of ``methods`` takes the options meant for it (:meth:`kd_options_for`), and each
        ``METHOD.KEY`` option names a method of some run (UserError otherwise)."""
        used: set[str] = set()
        for spec in methods:
            used |= set(self.kd_options_for(spec))
        unused = [key for key in self.kd_options if key not in used]
        if unused:
            raise UserError(
                f"--kd-option {', '.join(unused)}: no KD method of --methods ({', '.join(methods)}) is "
                "named by it"
            )

    @property
    def stock_trainer(self) -> str:
        """Trainer of the teacher the bench trains and of the no-KD students."""
        return layout.short_trainer(self.augmentation)

    @property
    def kd_trainer(self) -> str:
        """Trainer of the KD students (``recokd train -tr``)."""
        return layout.kd_trainer(self.augmentation)

    def schedule_text(self, teacher_shown: str | None = None) -> str:
        """The training schedule in words; ``teacher_shown``: the teacher's path as the report shows it
        (default: as given)."""
        teacher = (
            f"teacher: existing model {teacher_shown or self.teacher}"
            if self.teacher
            else f"teacher: stock nnU-Net ({self.stock_trainer}, {OPTIMIZER_TEXT[self.teacher_optimizer]}) "
            f"{self.teacher_epochs} epoch(s) x {self.iters_per_epoch} iterations, seed {self.teacher_seed}"
        )
        warmup = (
            "constant" if self.schedule == "constant" or self.warmup == 0
            else f"{self.schedule} warm-up over the first {self.warmup:.0%} of the epochs"
        )
        augmentation = "nnU-Net's data augmentation" if self.augmentation else "no data augmentation"
        options = "".join(f", {key}={json.dumps(value)}" for key, value in self.kd_options.items())
        return (
            f"students: {self.epochs} epoch(s) x {self.iters_per_epoch} training iterations "
            f"({self.val_iters} validation iteration(s) per epoch), {OPTIMIZER_TEXT[self.optimizer]}; "
            f"KD weight lambda_max {self.kd_weight} "
            f"({warmup}{options}); {augmentation}; {teacher}"
        )


@dataclass
class Selection:
    """The runs asked for: KD methods (``nokd`` and the teacher are implied), width exponents, seeds."""

    methods: list[str]
    ts: list[int]
    seeds: list[int]

    @property
    def kd_methods(self) -> list[str]:
        """:attr:`methods` that are KD runs (``recokd train``): all but ``pseudo``."""
        return [m for m in self.methods if m != PSEUDO]

    def validate(self) -> None:
        if not self.ts:
            raise UserError("-t: give at least one width exponent")
        if not self.seeds:
            raise UserError("--seeds: give at least one seed")
        if any(t < 1 for t in self.ts):
            raise UserError(f"-t: width exponents must be >= 1 (t=0 is the teacher), got {self.ts}")


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``teacher`` (t None), or a student of width exponent ``t`` (``nokd`` or a KD
    method)."""

    method: str
    t: int | None
    seed: int | None

    @property
    def key(self) -> str:
        if self.method == TEACHER:
            return TEACHER
        return f"t{self.t}/{self.method}/seed{self.seed}"

    @property
    def label(self) -> str:
        if self.method == TEACHER:
            return TEACHER
        return f"t{self.t} {self.method} seed {self.seed}"

    def folder(self, out: Path) -> Path:
        if self.method == TEACHER:
            return out / TEACHER
        return out / "runs" / f"t{self.t}" / self.method / f"seed{self.seed}"


def check_selection(study: Study, selection: Selection) -> None:
    """Runs the study can train: ``pseudo`` needs unlabelled cases (``--labelled-cases``)."""
    if PSEUDO in selection.methods and study.labelled_cases is None:
        raise UserError(
            f"--methods {PSEUDO}: the pseudo-label student needs unlabelled cases; give --labelled-cases K "
            "(the first K training cases keep their labels, the teacher pseudo-labels the others)"
        )


def plan_runs(selection: Selection, nokd: bool = True) -> list[RunSpec]:
    """Teacher first, then per width and seed the no-KD student (unless not ``nokd``: label-free students,
    none sees a label) and every KD method (so that the first seed of every method is finished before the
    second one starts)."""
    runs = [RunSpec(TEACHER, None, None)]
    for t in selection.ts:
        for seed in selection.seeds:
            if nokd:
                runs.append(RunSpec(NOKD, t, seed))
            runs.extend(RunSpec(m, t, seed) for m in selection.methods)
    return runs


# ---------------------------------------------------------------------------- bench_config.json


def _with_defaults(study: dict[str, Any]) -> dict[str, Any]:
    """A saved study with the defaults of fields added since it was written (same meaning as then)."""
    out: dict[str, Any] = {f.name: f.default for f in fields(Study) if f.default is not MISSING}
    out.update({f.name: f.default_factory() for f in fields(Study) if f.default_factory is not MISSING})
    out.update(study)
    phantoms = study.get("phantoms")
    if isinstance(phantoms, dict):
        out["phantoms"] = {**asdict(PhantomSpec()), **phantoms}
    return out


def study_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: saved ..., now ...`` for every study field that differs (a field missing from an
    older ``bench_config.json`` counts as its default, which is what that bench ran with)."""
    out = []
    saved, current = _with_defaults(saved), _with_defaults(current)
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            out.append(f"{key}: saved {saved.get(key)!r}, now {current.get(key)!r}")
    return out


def check_or_write_config(out: Path, study: Study, selection: Selection, record: bool = True) -> bool:
    """Refuse an ``out`` folder that holds another study (or is not a bench folder); record this call's
    selection (once: the file's ``selections`` lists each distinct selection asked of the folder; not when
    ``record`` is False, e.g. ``--report-only``).

    Returns True when the folder was a bench of this study already (a resumed bench).
    """
    path = out / CONFIG_FILE
    current = asdict(study)
    resumed = False
    history: list[dict[str, Any]] = []
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            saved_study = saved["study"]
            history = list(saved.get("selections", []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{path} is not a readable bench configuration ({e}); pass --overwrite to start "
                "the bench in this folder over"
            ) from None
        diffs = study_differences(saved_study, current)
        if diffs:
            raise UserError(
                f"{out} holds a bench with other settings ({'; '.join(diffs)}). Runs trained under different "
                "settings must not be mixed in one table: use another -o folder, repeat the saved settings "
                "to resume that bench, or pass --overwrite to delete it and start over"
            )
        resumed = True
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"output folder {out} is not empty and holds no {CONFIG_FILE} (not a bench folder); "
            "choose another -o folder or pass --overwrite to delete its content"
        )
    if not record:
        return resumed
    if asdict(selection) not in history:  # a resume with the same selection records nothing new
        history.append(asdict(selection))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"reco_kd_bench": CONFIG_FORMAT, "study": current, "selections": history})
    return resumed
