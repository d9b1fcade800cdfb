"""The README's Python example runs as written (in a scratch directory) and does what it says."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's 'From Python' section has no python block"
    return blocks[0]


def test_the_readme_python_example_runs_as_written(tmp_path):
    code = _python_example()
    assert "api.compare(" in code and "api.run(" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "results" / "api-example"
    assert (sweep / "table.md").read_text() in proc.stdout          # print(result.table_md)
    assert len((sweep / "runs.csv").read_text().splitlines()) == 1 + 2 * 2 * 2
    summary = json.loads((tmp_path / "results" / "api-example-run" / "summary.json").read_text())
    assert f"{summary['final']['acc-mean']} {summary['bytes_up']}" in proc.stdout
