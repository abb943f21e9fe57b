"""``recokd bench``: every KD method against the no-KD student and the teacher, over seeds and widths.

For a dataset (an existing nnU-Net dataset, or phantoms generated with ``--phantoms``) the bench
trains or takes a teacher, then for every width exponent t and seed the width-reduced student
without KD (stock nnU-Net training on the student plans) and with each KD method (``recokd
train``), all on the same schedule, each in its own process and ``nnUNet_results`` folder. It
predicts and scores the test cases of every run, profiles each architecture on the CPU and
writes ``runs.csv``, ``summary.csv``, ``results.md`` (mean and sd over seeds, per-class Dice, a
paired Wilcoxon test against the no-KD student, the share of the teacher-student gap
recovered) and Dice-vs-latency / per-class charts. Finished runs are never repeated: run the
same command again to resume.

- :mod:`recokd.bench.config`: the study settings, the selection of runs, ``bench_config.json``;
- :mod:`recokd.bench.runner`: dataset preparation, student plans, the run loop, profiles;
- :mod:`recokd.bench.worker`: what each subprocess does;
- :mod:`recokd.bench.report`: aggregation, statistics, tables and charts;
- :mod:`recokd.bench.cli`: the command line.
"""

from recokd.bench.cli import register

__all__ = ["register"]
