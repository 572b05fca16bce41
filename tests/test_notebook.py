"""The walk-through notebook runs from top to bottom in a real Jupyter kernel and shows what it claims.

nbclient executes ``notebooks/walkthrough.ipynb`` as a reader would (working directory
``notebooks/``); one check cell is appended that prints the notebook's own results as JSON, so
the test reads values, not formatted text.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
MARKER = "@@walkthrough@@ "
CHECK_CELL = f"""
import json
checks = {{
    "tasks": suite.tasks,
    "summary": summary,
    "pipeline": [classifier(suite.raw_inputs(t)[:4]) for t in suite.tasks],
    "reload_max_diff": float((before.logits[finite] - after.logits[finite]).abs().max()),
    "hub_max_diff": float((before.logits[finite] - hub_out.logits[finite]).abs().max()),
    "hub_same_task_ids": bool(torch.equal(hub_out.task_ids, before.task_ids)),
    "reloaded_class": type(reloaded).__name__,
    "hub_server_exit": hub_server.returncode,
}}
print({MARKER!r} + json.dumps(checks))
"""


def _stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def test_walkthrough_notebook_runs_and_shows_its_claims():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it unexecuted"
    notebook.cells.append(nbformat.v4.new_code_cell(CHECK_CELL))
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    line = next(x for x in _stream_text(notebook.cells[-1]).splitlines() if x.startswith(MARKER))
    checks = json.loads(line[len(MARKER) :])
    tasks = checks["tasks"]
    assert len(tasks) == 3 and set(checks["summary"]) == set(tasks)
    for task, row in checks["summary"].items():
        # The built model stands in for each expert with the task unknown (demo-sized budget).
        assert row["router_accuracy"] >= 0.9, (task, row)
        assert row["retex_accuracy"] >= row["expert_accuracy"] - 0.1, (task, row)
    for task, results in zip(tasks, checks["pipeline"]):
        assert len(results) == 4 and all(set(r) >= {"label", "score", "task"} for r in results)
        assert sum(r["task"] == task for r in results) >= 3, (task, results)
    assert checks["reloaded_class"] == "RetexForSequenceClassification"
    assert checks["reload_max_diff"] < 1e-5 and checks["hub_max_diff"] < 1e-5 and checks["hub_same_task_ids"]
    assert checks["hub_server_exit"] is not None  # the notebook stops the server it started
    printed = "".join(_stream_text(c) for c in notebook.cells)
    assert "Hub endpoint: http://127.0.0.1:" in printed and "x one model" in printed
