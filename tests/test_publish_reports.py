"""``attnspec publish-reports``: pages, an index and replayable case files for what did not pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from attnspec.conformance.frontends.cli import main

HERE = Path(__file__).parent


def test_publish_writes_pages_index_and_replayable_failures(tmp_path, capsys):
    broken = f"{HERE / 'softmax_catalogue.py'}:WrongScale"
    out = tmp_path / "reports"
    code = main(["publish-reports", "--out", str(out), "--backend", "numpy", "--backend", broken,
                 "--problem", "softmax_attention", "--family", "uniform"])
    assert code == 0
    index = (out / "README.md").read_text()
    numpy_page = (out / "numpy.md").read_text()
    assert "Judged software and machine: attnspec" in numpy_page and "numpy " in numpy_page
    assert "attnspec conform --backend numpy --profile quick --problem softmax_attention --family uniform" in numpy_page
    assert "| [`numpy`](numpy.md) | 16 | 0 | 0 | 0 | 0 | 0 |" in index  # 8 uniform cases × float32, float64
    pages = sorted(p.name for p in out.glob("*.md"))
    broken_page = next(p for p in pages if "WrongScale" in p)
    assert "/" not in broken_page and ":" not in broken_page
    case_files = sorted((out / "cases" / broken_page[:-3]).glob("*.json"))
    assert case_files, "every case that did not pass gets a case file"
    row = next(line for line in index.splitlines() if "WrongScale" in line)
    fails = int(row.split("|")[3])
    assert fails >= 1 and row.rstrip(" |").endswith(str(len(case_files)))
    # A published case file replays: the same certified fail.
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.run([sys.executable, "-m", "attnspec.conformance.frontends.cli", "replay", "--backend", broken,
                           str(case_files[0]), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["status"] == "fail"


def test_publish_refuses_an_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["publish-reports", "--out", str(blocker / "sub"), "--backend", "numpy"]) == 2


def test_publish_lists_case_files_over_the_size_cap_instead_of_copying_them(tmp_path):
    broken = f"{HERE / 'softmax_catalogue.py'}:WrongScale"
    out = tmp_path / "reports"
    code = main(["publish-reports", "--out", str(out), "--backend", broken, "--problem", "softmax_attention",
                 "--family", "uniform", "--max-case-kb", "0"])
    assert code == 0
    page_path = next(p for p in out.glob("*.md") if "WrongScale" in p.name)
    page = page_path.read_text()
    assert not (out / "cases" / page_path.stem).exists()
    assert "case files over 0 KB are not published" in page
    listed = [line[3:-1] for line in page.splitlines() if line.startswith("- `softmax_attention/")]
    assert listed and all(case_id.startswith("softmax_attention/") for case_id in listed)
    assert "--case ID --report DIR" in page
    row = next(line for line in (out / "README.md").read_text().splitlines() if "WrongScale" in line)
    assert row.rstrip(" |").endswith("| 0")
