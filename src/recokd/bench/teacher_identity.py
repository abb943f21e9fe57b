"""Which teacher a bench's runs distilled, so that a resumed bench never pairs runs of two teachers.

A study's teacher is often re-built on a new machine by the same recipe (its ``teacher`` step), and nnU-Net
training is not bit-identical across CPUs or thread counts: the re-trained teacher has other weights, and
a bench resumed with it would put students of two teachers in one paired table without a word. So the
first bench command that finds the teacher's checkpoint records the digest of its weights
(:func:`recokd.nnunet.trained_model.weights_digest`) in ``OUT/teacher_weights.json``, and every later
command compares: another teacher is refused before any run starts. The digest covers the weights only,
so dropping a checkpoint's optimiser state (:func:`recokd.nnunet.trained_model.drop_training_state`)
keeps it.

A bench begun before this record existed gets it on its next command: the runs finished before were not
checked, and the message says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from recokd.errors import UserError
from recokd.json_files import write_json_atomic

#: the record, in the bench folder (``--overwrite`` deletes it with the bench, ``--rerun`` starts it over)
TEACHER_WEIGHTS_FILE = "teacher_weights.json"


def check_teacher_identity(out: Path, checkpoint: Path, finished_runs: int = 0) -> str | None:
    """Compare the weights of ``checkpoint`` (the teacher's ``checkpoint_final.pth``) with the ones recorded
    in ``out/teacher_weights.json``; record them when nothing is recorded yet.

    Returns a line to show when it recorded (None when it compared, or when ``checkpoint`` does not exist
    yet: the bench's teacher run writes it). ``finished_runs``: student runs already finished, named in
    that line because they were not checked. Raises :class:`~recokd.errors.UserError` naming both digests
    when the weights differ. Call it holding the bench's lock (:func:`recokd.bench.claims.bench_lock`) where
    another command may record at the same time.
    """
    if not checkpoint.is_file():
        return None
    from recokd.nnunet.trained_model import weights_digest

    record = out / TEACHER_WEIGHTS_FILE
    digest = weights_digest(checkpoint)
    if record.is_file():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
            saved_digest = saved["weights_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{record} is not a readable teacher record ({e}); expected the key "
                            "'weights_sha256'") from None
        if saved_digest != digest:
            raise UserError(
                f"{checkpoint} is not the teacher this bench's runs distilled (weights sha256 {digest[:12]}, "
                f"recorded {saved_digest[:12]} in {record} from {saved.get('checkpoint', '?')}): runs of two "
                "teachers must not be paired in one table; restore that teacher, or start the bench in "
                "another -o folder"
            )
        return None
    write_json_atomic(record, {
        "checkpoint": str(checkpoint),
        "weights_sha256": digest,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs_finished_before": finished_runs,
    })
    before = (f"; the {finished_runs} student run(s) finished before this record are not checked against it"
              if finished_runs else "")
    return f"teacher weights recorded in {record} (sha256 {digest[:12]}){before}"
