"""util.study without training: points and their reuse of search runs, shards, matched widths, the learning-rate
choice, the runner's time limit, child environments, and study files (bad ones refused, shipped ones fair)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from tests.test_study import REPO, write_study
from util.config import ConfigError, load_config
from util.study import Runner, child_env, choose_lr, expand_points, in_shard, load_study, point_status
from util.study.points import fixed_lr_words


def test_points_reuse_the_winning_search_run_and_split_into_shards(tmp_path, tiny_ocelot_root):
    cfg = write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, fractions=[0.5, 1.0], seeds=[0, 1])
    study = load_study(cfg)
    waiting = expand_points(study)
    assert [p.stage for p in waiting] == ["lr"] * 4 + ["main"] * 8
    assert all(p.config is None and point_status(p, {}) in ("waiting", "reuse-wait") for p in waiting[4:])
    rows = {p.id: {"val_mF1": v, "config_hash": p.config.config_hash()}
            for p, v in zip(waiting[:4], (0.4, 0.5, 0.7, 0.6))}
    points = expand_points(study, rows)
    main = {p.id: p for p in points if p.stage == "main"}
    assert main["plain_none-f1-s0"].source == "lr-plain_none-0.01"
    assert main["moment_none-f1-s0"].source == "lr-moment_none-0.003"
    assert main["plain_none-f0.5-s1"].source is None and main["plain_none-f0.5-s1"].learning_rate == 0.01
    assert point_status(main["plain_none-f1-s0"], rows) == "reuse"
    assert main["plain_none-f0.5-s1"].config.data.subset_seed == 1
    assert main["plain_none-f0.5-s1"].config.data.subset_fraction == 0.5
    shards = [{p.id for p in points if in_shard(p, (i, 3))} for i in range(3)]
    assert set().union(*shards) == {p.id for p in points} and sum(map(len, shards)) == len(points)
    assert {p.id for p in points if p.index % 3 == 1} == shards[1]


def test_matched_arm_gets_the_target_parameter_count(tmp_path, tiny_ocelot_root):
    from model import build_model, count_parameters

    arms = [{"label": "moment_none", "model": {"name": "moment_unet", "kwargs": {"group": "D4", "width": 8}},
             "preset": "none"},
            {"label": "plain_pm", "preset": "none", "match_params": "moment_none"}]
    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, arms=arms, contrasts=[],
                                   lr_search=None))
    pts = {p.arm.label: p for p in expand_points(study)}
    target = count_parameters(build_model("moment_unet", group="D4", width=8, depth=2))
    got = count_parameters(build_model("unet", **pts["plain_pm"].config.model.kwargs))
    assert pts["plain_pm"].width != 8 and abs(got - target) <= 0.05 * target
    assert pts["plain_pm"].arm.comparison == "equal_params:moment_none"


def test_choose_lr_takes_the_best_validation_score_and_waits_for_all():
    study = SimpleNamespace(lr_values=[1e-3, 3e-3, 1e-2])
    rows = {"lr-a-0.001": {"val_mF1": "0.5"}, "lr-a-0.003": {"val_mF1": "0.62"}}
    assert choose_lr(study, "a", rows)[0] is None
    rows["lr-a-0.01"] = {"val_mF1": "0.62"}  # tie: the value listed first wins
    lr, scores = choose_lr(study, "a", rows)
    assert lr == 3e-3 and scores == {1e-3: 0.5, 3e-3: 0.62, 1e-2: 0.62}
    rows["lr-a-0.001"] = {"val_mF1": ""}  # a run without a score never wins
    assert choose_lr(study, "a", rows)[0] == 3e-3


def test_max_minutes_zero_starts_nothing(tmp_path, tiny_ocelot_root):
    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path))
    said: list[str] = []
    assert Runner(study, jobs=2, max_minutes=0, echo=said.append).run() == 0
    assert not any(s.startswith("start") for s in said) and "4 pending" in said[-1]
    assert not list((tmp_path / "runs").glob("tiny_study/*/config.yaml"))


def test_order_seed_starts_every_arm_at_a_seed_before_the_next(tmp_path, tiny_ocelot_root):
    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, fractions=[0.5, 1.0],
                                   seeds=[0, 1]))
    search = [p for p in expand_points(study) if p.stage == "lr"]
    rows = {p.id: {"val_mF1": "0.5", "config_hash": p.config.config_hash()} for p in search}
    points = expand_points(study, rows)

    def started(order: str) -> list[str]:
        runner = Runner(study, jobs=len(points), order=order, echo=lambda _: None)
        got: list[str] = []
        runner.launch = lambda p, slot: got.append(p.id)  # record the start order, train nothing
        runner.start_ready(points, rows)
        return got

    # the search winners (lr 1e-3, listed first) are reused by f1-s0, so those two points never start
    assert started("grid") == ["plain_none-f0.5-s0", "plain_none-f0.5-s1", "plain_none-f1-s1",
                               "moment_none-f0.5-s0", "moment_none-f0.5-s1", "moment_none-f1-s1"]
    assert started("seed") == ["plain_none-f0.5-s0", "moment_none-f0.5-s0", "plain_none-f1-s1",
                               "moment_none-f1-s1", "plain_none-f0.5-s1", "moment_none-f0.5-s1"]
    with pytest.raises(ValueError, match="unknown order 'random'"):
        Runner(study, order="random")


def test_finish_by_starts_only_points_estimated_to_end_in_time(tmp_path, tiny_ocelot_root):
    from util.study.runner import ESTIMATE_EXTRA_S, ESTIMATE_MARGIN, estimate_s

    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, fractions=[0.5, 1.0],
                                   seeds=[0, 1]))
    search = [p for p in expand_points(study) if p.stage == "lr"]
    walls = {"plain_none": ("100", "140", "120"), "moment_none": ("1000", "1100", "1200")}  # train_wall_s
    rows = {}
    for p in search:
        rows[p.id] = {"val_mF1": "0.5", "config_hash": p.config.config_hash(), "arm": p.arm.label, "threads": "1",
                      "train_wall_s": walls[p.arm.label][len([r for r in rows if p.arm.label in r])],
                      "source_point": p.id}  # as store writes it: a trained row names itself
    reuse = dict(rows["lr-plain_none-0.003"], train_wall_s="99999", source_point="lr-plain_none-0.003")
    rows["plain_none-f1-s0"] = reuse  # a reuse row repeats its source's wall time: not counted twice
    points = expand_points(study, rows)
    by_id = {p.id: p for p in points}
    assert estimate_s(by_id["plain_none-f0.5-s0"], rows, 1) == ESTIMATE_MARGIN * 120 + ESTIMATE_EXTRA_S
    assert estimate_s(by_id["plain_none-f0.5-s0"], rows, 2) is None  # no rows at 2 threads

    def started(finish_by: float | None, jobs: int = 2) -> list[str]:
        runner = Runner(study, jobs=jobs, threads=jobs, order="seed", finish_by=finish_by, echo=lambda _: None)
        got: list[str] = []
        runner.launch = lambda p, slot: got.append(p.id)
        runner.start_ready(points, rows)
        return got

    assert started(None) == ["plain_none-f0.5-s0", "moment_none-f0.5-s0"]
    # 10 minutes: a moment point (about 1500 s) does not fit, so the next plain points fill both slots
    assert started(10) == ["plain_none-f0.5-s0", "plain_none-f1-s1"]
    assert started(2) == []  # nothing fits in 2 minutes


def test_child_env_sets_threads_and_gpu():
    e = child_env(3, "1")
    assert e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == "3" and e["CUDA_VISIBLE_DEVICES"] == "1"
    assert child_env(1, None).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_load_study_rejects_bad_files(tmp_path, tiny_ocelot_root):
    bad = [{"lerning_rate": 1}, {"arms": [{"label": "a", "match_params": "nope"}]},
           {"contrasts": [{"kind": "d", "arm": "plain_none", "vs": "plain_none"}]},
           {"arms": [{"label": "a"}, {"label": "a"}]}, {"budget": {}}, {"fractions": [1.5]}]
    for i, change in enumerate(bad):
        with pytest.raises(ConfigError):
            load_study(write_study(tmp_path / f"bad{i}.yaml", tiny_ocelot_root, tmp_path, **change))


def test_a_fixed_per_arm_rate_is_used_without_a_search_and_refused_with_one(tmp_path, tiny_ocelot_root):
    arms = [{"label": "plain_none", "preset": "none", "overrides": {"learning_rate": 3e-4}},
            {"label": "moment_none", "model": {"name": "moment_unet", "kwargs": {"group": "D4"}}, "preset": "none"}]
    with pytest.raises(ConfigError, match="arm plain_none: overrides sets learning_rate, but lr_search"):
        load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, arms=arms))
    study = load_study(write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, arms=arms, lr_search=None))
    recipe = load_config(study.base).learning_rate
    assert recipe != 3e-4
    got = {p.arm.label: (p.learning_rate, p.config.learning_rate) for p in expand_points(study)}
    assert got == {"plain_none": (3e-4, 3e-4), "moment_none": (recipe, recipe)}
    assert fixed_lr_words(study) == (f"the recipe's learning rate {recipe:g}, except plain_none, which set their "
                                     f"own in the study file (the lr column; no search)")


@pytest.mark.parametrize("name", ["brca_cpu", "brca_gpu", "ocelot_gpu"])
def test_shipped_study_files_describe_the_fair_arms(name):
    study = load_study(REPO / "configs" / "study" / f"{name}.yaml")
    arms = {a.label: a for a in study.arms}
    assert {("unet", "none"), ("unet", "flips_rot90"), ("unet", "full"), ("moment_unet", "none"),
            ("moment_unet", "flips_rot90"), ("escnn_unet", "none")} <= {(a.model, a.preset) for a in study.arms}
    for eq in ("moment_d4_none", "escnn_c8_none"):  # narrowed plain arms with and without augmentation
        assert {arms[a].preset for a in arms if arms[a].match_params == eq} == {"none", "flips_rot90"}
    assert {c.kind for c in study.contrasts} == {"a", "b", "c"}
    assert len(study.seeds) >= 3 and 1.0 in study.fractions and len(study.lr_values) == 3
    if name == "brca_cpu":
        assert study.fractions == [0.25, 1.0] and arms["plain_none"].kwargs["width"] >= 16
    else:
        assert study.fractions == [0.1, 0.25, 0.5, 1.0] and len(study.seeds) == 5


def test_lr_edge_check_extends_exactly_the_edge_choices_of_brca_cpu():
    """brca_cpu_lr_edge.yaml: one value half a decade beyond the edge for every arm whose committed choice is an
    edge of the grid, and otherwise the very configuration of that arm's search runs."""
    from util.study import store

    main = load_study(REPO / "configs" / "study" / "brca_cpu.yaml")
    edge = load_study(REPO / "configs" / "study" / "brca_cpu_lr_edge.yaml")
    rows = store.read_rows(store.runs_csv(main))
    lo, hi = min(main.lr_values), max(main.lr_values)
    expected = {}
    for arm in main.arms:
        chosen = choose_lr(main, arm.label, rows)[0]
        assert chosen is not None, f"brca_cpu search of {arm.label} unfinished"
        if chosen in (lo, hi):
            expected[arm.label] = pytest.approx(lo / 10 ** 0.5, rel=0.06) if chosen == lo else \
                pytest.approx(hi * 10 ** 0.5, rel=0.06)
    got = {p.arm.label: p.config.learning_rate for p in expand_points(edge)}
    assert got == expected
    assert {p.arm.label: p.learning_rate for p in expand_points(edge)} == expected  # what plan and report show
    searched = {p.arm.label: p for p in expand_points(main, rows) if p.id == f"lr-{p.arm.label}-{lo:g}"}
    for p in expand_points(edge):
        a, b = p.config.to_dict(), searched[p.arm.label].config.to_dict()
        assert {k for k in a if a[k] != b[k]} == {"name", "learning_rate", "run_id"}, p.id
