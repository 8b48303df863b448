"""util.study compare: points trained in two studies, their test mF1 differences against hand-computed values."""
from __future__ import annotations

import csv
import math

import pytest

from tests.test_study import write_study
from util.study import ROW_FIELDS, load_study
from util.study.__main__ import main as study_main
from util.study.compare import compare_rows, lr_choices_text, seed_std, summarize


def _row(point, test, stage="main", source=None, lr="0.001", arm="plain_none", fraction="1.0", seed="0", val="0.7",
         **kw):
    row = {f: "" for f in ROW_FIELDS}
    row.update(point=point, stage=stage, arm=arm, model="unet", group="", preset="none", fraction=fraction,
               seed=seed, width="16", depth="4", parameters="1000", max_steps="450", learning_rate=lr,
               test_mF1=str(test), best_val_mF1=str(val), source_point=point if source is None else source)
    row.update(kw)
    return row


def _rows(*rows):
    return {r["point"]: r for r in rows}


def test_compare_rows_pairs_own_trainings_and_marks_another_learning_rate():
    a = _rows(_row("lr-plain_none-0.001", 0.60, stage="lr"), _row("plain_none-f1-s0", 0.60, source="lr-plain_none-0.001"),
              _row("plain_none-f1-s1", 0.55, seed="1"), _row("only_in_a", 0.5))
    b = _rows(_row("lr-plain_none-0.001", 0.62, stage="lr", val="0.75"),
              _row("plain_none-f1-s0", 0.62, source="lr-plain_none-0.001"),
              _row("plain_none-f1-s1", 0.54, seed="1", lr="0.003"))
    table = compare_rows(a, b)
    assert [r["point"] for r in table] == ["lr-plain_none-0.001", "plain_none-f1-s1"]  # reused row counted once
    assert table[0]["diff"] == pytest.approx(0.02) and table[0]["same_lr"]
    assert table[1]["diff"] == pytest.approx(-0.01) and not table[1]["same_lr"] and table[1]["lr_b"] == 0.003
    assert table[0]["best_val_mF1_b"] - table[0]["best_val_mF1_a"] == pytest.approx(0.05)


def test_compare_rows_refuses_other_trainings_by_name():
    a = _rows(_row("p", 0.6))
    with pytest.raises(ValueError, match="point p: preset is 'none' in the first study and 'full' in the second"):
        compare_rows(a, _rows(_row("p", 0.6, preset="full")))


def test_summary_matches_hand_values():
    s = summarize([0.01, -0.03, 0.02])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.0, abs=1e-12)
    assert s["sd"] == pytest.approx(math.sqrt((0.01**2 + 0.03**2 + 0.02**2) / 2))
    assert s["mean_abs"] == pytest.approx(0.02) and s["max_abs"] == pytest.approx(0.03)
    assert -0.03 <= s["lo"] < 0 < s["hi"] <= 0.02  # the mean of resampled points lies within their range
    assert summarize([0.01, -0.03, 0.02]) == s  # fixed RNG seed
    assert summarize([]) == {"n": 0}


def test_seed_std_is_the_median_over_cells_of_main_points():
    rows = _rows(_row("x-s0", 0.5), _row("x-s1", 0.7, seed="1"),                                 # std 0.1414
                 _row("y-s0", 0.5, arm="y"), _row("y-s1", 0.6, arm="y", seed="1"), _row("y-s2", 0.7, arm="y", seed="2"),  # 0.1
                 _row("z-s0", 0.5, arm="z"), _row("z-s1", 0.5, arm="z", seed="1"),             # 0
                 _row("lr-x", 0.9, stage="lr"), _row("w-s0", 0.4, arm="w"))                    # not a cell of ≥ 2
    assert seed_std(rows) == pytest.approx(0.1)
    assert seed_std(_rows(_row("lr-x", 0.9, stage="lr"))) is None


def test_cli_prints_the_table_and_writes_the_csv(tiny_ocelot_root, tmp_path, capsys):
    paths = []
    for name, tests in (("sa", (0.60, 0.50, 0.70)), ("sb", (0.61, 0.48, 0.70))):
        cfg = write_study(tmp_path / f"{name}.yaml", tiny_ocelot_root, tmp_path, study=name)
        study = load_study(cfg)
        study.study_results.mkdir(parents=True)
        rows = [_row(f"plain_none-f1-s{s}", t, seed=str(s)) for s, t in enumerate(tests)]
        with (study.study_results / "runs.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
            w.writeheader()
            w.writerows(rows)
        paths.append(cfg)
    assert study_main(["compare", str(paths[0]), str(paths[1])]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["plain_none-f1-s1", "0.001", "0.001", "0.5000", "0.4800", "-0.0200"] in lines
    assert "all points: n 3, mean d -0.0033" in out and "max |d| 0.0200" in out
    assert "yardstick: median seed std of test mF1 over sa's cells 0.1000" in out
    assert "contrasts: none in both reports (sa: 0, sb: 0)" in out
    written = list(csv.DictReader((tmp_path / "results" / "sb" / "compare_sa.csv").open()))
    assert [r["diff"] for r in written] == ["0.01", "-0.02", "0.0"]
    kept = (tmp_path / "results" / "sb" / "compare_sa.txt").read_text()  # the printed summary, kept beside it
    assert kept == out[:out.index("wrote ")] and "all points: n 3, mean d -0.0033" in kept
    # a table path ending in .txt would be overwritten by the summary: refused, nothing written
    assert study_main(["compare", str(paths[0]), str(paths[1]), "--out", str(tmp_path / "c.txt")]) == 1
    assert "--out " in capsys.readouterr().err and not (tmp_path / "c.txt").exists()


def _contrast(diff, lo, hi, reading, fraction="1.0", seeds=3):
    return {"kind": "a", "arm": "moment_d4_none", "vs": "plain_rot", "match": "equal compute", "fraction": fraction,
            "seeds": str(seeds), "images": "26", "diff": str(diff), "ci_low": str(lo), "ci_high": str(hi), "reading": reading}


def test_contrasts_side_by_side_say_whether_readings_agree(tmp_path):
    from util.study.compare import contrasts_text, read_contrasts

    rows = {"a": [_contrast(-0.046, -0.067, -0.022, "plain_rot better"),
                  _contrast(-0.005, -0.040, 0.038, "no clear difference (the interval includes 0)", "0.25")],
            "b": [_contrast(-0.030, -0.055, -0.004, "plain_rot better"),
                  _contrast(0.045, 0.010, 0.080, "moment_d4_none better", "0.25", seeds=1)]}
    for name, rs in rows.items():
        with (tmp_path / f"{name}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rs[0]))
            w.writeheader()
            w.writerows(rs)
    a, b = read_contrasts(tmp_path / "a.csv"), read_contrasts(tmp_path / "b.csv")
    text = contrasts_text("sa", "sb", a, b)
    assert ("(a) moment_d4_none − plain_rot at 1.0: a -0.046 [-0.067, -0.022] (3), b -0.030 [-0.055, -0.004] (3): "
            "the same reading") in text
    assert ("at 0.25: a -0.005 [-0.040, +0.038] (3), b +0.045 [+0.010, +0.080] (1): "
            "a: no clear difference (the interval includes 0); b: moment_d4_none better") in text
    assert text.endswith("readings agree in 1 of 2 contrasts; 1 of them have fewer paired seeds in one study than "
                         "in the other (an unfinished grid): their readings are not comparable yet")
    even = contrasts_text("sa", "sb", a, {k: v | {"seeds": "3"} for k, v in b.items()})
    assert even.endswith("readings agree in 1 of 2 contrasts")
    assert read_contrasts(tmp_path / "missing.csv") == {}
    assert contrasts_text("sa", "sb", a, {}) == "contrasts: none in both reports (sa: 2, sb: 0)"


def test_lr_choices_set_side_by_side_and_differences_counted():
    a = {"plain": (0.001, {0.001: 0.75, 0.01: 0.70}), "moment": (0.01, {0.001: 0.70, 0.01: 0.71}),
         "unfinished": (None, {0.001: 0.6})}
    b = {"plain": (0.001, {0.001: 0.74, 0.01: 0.72}), "moment": (0.001, {0.001: 0.71, 0.01: 0.70}),
         "unfinished": (0.01, {0.001: 0.6, 0.01: 0.7}), "only_b": (0.01, {0.01: 0.7})}
    text = lr_choices_text("A", "B", a, b)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[-1] == "the choice differs in 1 of 2 arms"
    assert lines[1].startswith("plain ") and "0.001:0.7500 0.01:0.7000" in lines[1] and "other choice" not in lines[1]
    assert lines[2].startswith("moment ") and lines[2].endswith("(other choice)") and "a [0.001:0.7000 0.01:0.7100]" in lines[2]
    assert lr_choices_text("A", "B", {"x": (None, {})}, {"x": (0.01, {})}).startswith("learning rates: no arm")
