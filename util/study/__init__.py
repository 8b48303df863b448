"""Study grids: ``python -m util.study plan|run|report STUDY.yaml`` (plan the points, train them, report; also
``reproduce`` and ``compare``).

A study answers the project's question on one data set: *does built-in equivariance replace rotation/flip
augmentation, and make training more data- and time-efficient?* Every arm gets the same learning-rate search
on validation, the same step budget and thresholds chosen on validation; equivariant arms are compared with
plain U-Nets at equal compute (same channels per level) and at equal parameters (a narrowed plain U-Net).

Files::

    runs/<study>/<point>-<hash>/           run folders (util.train; not committed), configs/ and logs/ beside
    results/<study>/runs.csv               one row per finished point (committed; survives the run folders)
    results/<study>/points/<point>.json    validation curve + per-test-image TP/FP/FN of every test set
    results/<study>/summary.csv, contrasts.csv, README.md     written by ``report``
    visualization/<study>/*.png            the report's figures

Study file schema (YAML; paths relative to the study file unless said)::

    study: brca_cpu                 # name: runs/<study>/, results/<study>/, visualization/<study>/
    description: one paragraph      # optional, for people
    extends: brca_cpu.yaml          # optional: start from that study file's keys; each key given here replaces
                                    #   its whole (e.g. a new study name and numerics: the same grid retrained)
    numerics: portable              # optional: the util.numerics mode every training runs under (`run
                                    #   --numerics` overrides; each row records the settings it ran with)
    base: ../default.yaml           # the training recipe (an ExperimentConfig YAML) every point starts from
    overrides:                      # optional, applied to the recipe for every point: a nested mapping like a
      data: {root: data/brca_m2c}   #   config file, or a list of "dotted.key=value" strings
      eval_transforms: [rot90, rot180, flip, rot45]
    budget:
      max_steps: 450                # the budget: the same optimizer steps for every arm (wall time is measured)
      val_every_steps: 50           # optional: validate about every N steps at every fraction (sets
                                    #   val_every_n_epochs per point; else the recipe's val_every_n_epochs)
    lr_search:                      # optional (absent: every arm uses the recipe's learning_rate, or its own
                                    #   overrides: {learning_rate: ...}; with a search, arms may not set one)
      values: [1.0e-3, 3.0e-3, 1.0e-2]
      fraction: 1.0                 # searched on this fraction and seed; best validation mF1 wins (ties: first)
      seed: 0                       #   and is reused for every fraction and seed of the arm
    fractions: [0.25, 1.0]          # data.subset_fraction values (each seed draws its own subset)
    seeds: [0, 1, 2]
    target_mf1: 0.55                # optional: time-to-target threshold of the report (default: the runs')
    bootstrap: {replicates: 2000, seed: 0}     # optional; the fixed RNG seed makes the report reproducible
    runs_dir: runs                  # optional, relative to the working directory (also results_dir: results,
                                    #   figures_dir: visualization)
    arms:                           # one entry per arm
      - label: plain_rot            # unique; letters, digits, _ - . +
        model: {name: unet, kwargs: {width: 16, depth: 4}}   # optional; kwargs merge over the recipe's
                                    #   (over its width/depth/in_channels/pad only for another model)
        preset: flips_rot90         # none | flips_rot90 | rotate_any | full (default: the recipe's)
        match_params: moment_d4_none   # optional: width = model.width_for_params(name, that arm's parameters)
        comparison: equal_compute   # optional label (default equal_params:<arm> with match_params, else
                                    #   equal_compute)
        overrides: {}               # optional per-arm config overrides (mapping or key=value list)
    contrasts:                      # the paired comparisons of the report (arm − vs, same seeds and images)
      - {kind: a, arm: moment_d4_none, vs: plain_rot, match: equal compute}
                                    # kind a: equivariant, no augmentation vs plain + flips_rot90 (the claim)
                                    # kind b: equivariant vs plain, both without augmentation
                                    # kind c: equivariant with vs without augmentation

Points: search points ``lr-<arm>-<lr>`` first (arm, then value), then main points ``<arm>-f<fraction>-s<seed>``
(arm, fraction, seed); point ``k`` of this list belongs to shard ``k mod n``. A main point equal to a finished
search point (same fraction, seed, learning rate) reuses that run.
"""
from util.study.costs import macs_per_pixel, model_cost
from util.study.planning import format_table, plan_rows, plan_text, plan_totals
from util.study.report import cell_summary, contrast_table, load_results, report
from util.study.runner import Runner, child_env, point_status, run_study
from util.study.points import (Point, base_config, choose_lr, expand_points, in_shard, parse_shard,
                               point_config)
from util.study.spec import CONTRAST_KINDS, Arm, Contrast, Study, load_study
from util.study.stats import (bootstrap_mf1, bootstrap_paired, counts_array, f1_from_counts, first_reach,
                              mean_std, median_curve_by_step, median_curve_by_time, mf1_from_counts)
from util.study.store import ROW_FIELDS, read_point_records, read_rows, runs_csv, upsert_row

__all__ = ["CONTRAST_KINDS", "ROW_FIELDS", "Arm", "Contrast", "Point", "Runner", "Study", "base_config",
           "bootstrap_mf1", "bootstrap_paired", "cell_summary", "child_env", "choose_lr", "contrast_table",
           "counts_array", "expand_points", "f1_from_counts", "first_reach", "format_table", "in_shard",
           "load_results", "load_study", "macs_per_pixel", "mean_std", "median_curve_by_step",
           "median_curve_by_time", "mf1_from_counts", "model_cost", "parse_shard", "plan_rows", "plan_text",
           "plan_totals", "point_config", "point_status", "read_point_records", "read_rows", "report",
           "run_study", "runs_csv", "upsert_row"]
