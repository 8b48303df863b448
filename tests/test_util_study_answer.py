"""util.study.answer: the README's results block is what `report --readme` writes from the committed results."""
from __future__ import annotations

import shutil

import pytest

from tests.test_study import REPO
from util.study import load_study
from util.study.answer import answer_block, markers, readme_block, update_readme


@pytest.mark.parametrize("name", ["brca_cpu", "brca_cpu_portable"])
def test_readme_results_block_matches_the_committed_results(name):
    study = load_study(REPO / "configs" / "study" / f"{name}.yaml")
    assert readme_block(REPO / "README.md", study) == answer_block(study), (
        f"README.md's {name} block is stale: run `python -m util.study report configs/study/{name}.yaml "
        "--readme README.md`")


def test_block_numbers_come_from_summary_and_contrasts(tmp_path):
    study = load_study(REPO / "configs" / "study" / "brca_cpu.yaml")
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "brca_cpu", results / "brca_cpu")
    study.results_dir = results
    summary = (results / "brca_cpu" / "summary.csv")
    lines = summary.read_text().splitlines()
    head = lines[0].split(",")
    i = next(k for k, line in enumerate(lines) if line.startswith("escnn_c8_none,") and ",1.0," in line)
    row = lines[i].split(",")
    row[head.index("mF1_mean")], row[head.index("mF1_std")], row[head.index("seeds")] = "0.7", "0.0125", "3"
    lines[i] = ",".join(row)
    summary.write_text("\n".join(lines) + "\n")
    contrasts = results / "brca_cpu" / "contrasts.csv"
    text = contrasts.read_text().splitlines()
    chead = text[0].split(",")
    j = next(k for k, line in enumerate(text) if line.startswith("c,moment_d4_rot,moment_d4_none,") and ",1.0," in line)
    crow = text[j].split(",")
    crow[chead.index("diff")], crow[chead.index("ci_low")], crow[chead.index("ci_high")] = "-0.25", "-0.5", "0.125"
    crow[chead.index("seeds")] = "2"
    text[j] = ",".join(crow)
    contrasts.write_text("\n".join(text) + "\n")
    block = answer_block(study)
    assert "| escnn_c8_none | 104 k | 0.01 | " in block and "| 0.700 ± 0.013 (3) |" in block
    assert "| c | moment_d4_rot | moment_d4_none | same net | " in block
    assert "−0.250 [−0.500, +0.125] (2) |" in block


def test_update_readme_replaces_only_the_block_and_refuses_a_file_without_markers(tmp_path):
    study = load_study(REPO / "configs" / "study" / "brca_cpu.yaml")
    begin, end = markers(study)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nprose before\n\n{begin}\nold numbers\n{end}\n\nprose after\n")
    assert update_readme(readme, study) is True
    text = readme.read_text()
    assert text.startswith("# Title\n\nprose before\n\n" + begin + "\n") and text.endswith(end + "\n\nprose after\n")
    assert "old numbers" not in text and readme_block(readme, study) == answer_block(study)
    assert update_readme(readme, study) is False  # already current
    bare = tmp_path / "bare.md"
    bare.write_text("no markers here\n")
    with pytest.raises(ValueError, match=r"bare\.md: expected the marker lines '<!-- results:brca_cpu -->'"):
        update_readme(bare, study)
    assert bare.read_text() == "no markers here\n"
