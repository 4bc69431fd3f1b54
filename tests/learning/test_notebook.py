"""The research notebook runs top to bottom against the log the tests create (issue 9,
item 8): real kernel, real archive, every cell executed; an error in any cell fails."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.learning.conftest import Traffic

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "decision_log.ipynb"


def test_the_notebook_runs_top_to_bottom(traffic: Traffic, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {"TIPML_DATA_DIR": str(traffic.settings.data_dir), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert f"{traffic.decisions} decisions" in text  # the OPE cell saw every /score decision
    assert "epsilon_greedy:0.1" in text
