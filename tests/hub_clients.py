"""Client processes for the Hub tests: a fresh interpreter per client, pointed at the loopback server.

huggingface_hub reads HF_ENDPOINT when it is imported, and the test session imported it long ago
with HF_HUB_OFFLINE=1 (conftest), so every Hub client runs in a subprocess. A client compares a
model's outputs with a reference saved by the test (inputs, logits, task ids, in safetensors) and
prints one JSON line, which the test reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]

MARKER = "@@client-result@@ "
# Runs first in every client: one thread (as in the tests), `compare(model, reference_path)`, and
# `emit(result)`, which prints the result where the test finds it (prompts may share stdout).
PRELUDE = f"MARKER = {MARKER!r}\n" + textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import load_file
    torch.set_num_threads(1)

    def emit(result):
        print("\\n" + MARKER + json.dumps(result), flush=True)

    def compare(model, reference):
        ref = load_file(reference)
        batch = {k[len("input."):]: v for k, v in ref.items() if k.startswith("input.")}
        with torch.no_grad():
            out = model(**batch)
        finite = torch.isfinite(ref["logits"])
        return {
            "class": type(model).__name__,
            "module": type(model).__module__,
            "same_padding": bool(torch.equal(torch.isfinite(out.logits), finite)),
            "max_abs_diff": float((out.logits[finite] - ref["logits"][finite]).abs().max()),
            "same_task_ids": bool(torch.equal(out.task_ids, ref["task_ids"])),
        }
    """
)

# Makes `import retex_hf` fail in a client, as on a machine where it is not installed (the package
# is importable from the repo root otherwise), and checks that it does.
NO_RETEX = textwrap.dedent(
    """
    import importlib.abc

    class _NoRetex(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "retex_hf" or name.startswith("retex_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (this client has no retex_hf)")
            return None

    sys.meta_path.insert(0, _NoRetex())
    try:
        import retex_hf
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("retex_hf is still importable: the test would prove nothing")
    """
)


def save_reference(model, batch: dict[str, torch.Tensor], path: Path) -> dict:
    """Run ``model`` on ``batch`` and save inputs and outputs for `compare`; returns the outputs."""
    with torch.no_grad():
        out = model(**batch)
    tensors = {f"input.{k}": v.contiguous() for k, v in batch.items()}
    save_file({**tensors, "logits": out.logits.contiguous(), "task_ids": out.task_ids}, path)
    return out


def run_client(code: str, env: dict[str, str], *, no_retex: bool = False, timeout: int = 300) -> dict:
    """Run ``PRELUDE (+ NO_RETEX) + code`` in a fresh interpreter and return what it emitted last."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    source = PRELUDE + (NO_RETEX if no_retex else "") + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", source],
        env=full_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # transformers' trust_remote_code prompt must fail, not wait
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    results = [line[len(MARKER) :] for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    assert results, f"client emitted nothing:\n{proc.stdout[-2000:]}"
    return json.loads(results[-1])


def assert_same_outputs(result: dict, cls: str = "RetexForSequenceClassification") -> None:
    """Same class, same routing, same -inf padding, logits equal to float32 round-off."""
    assert result["class"] == cls, result
    assert result["same_padding"] and result["same_task_ids"], result
    assert result["max_abs_diff"] <= 1e-6, result
