"""`retex-hf build` and `retex-hf eval` end to end, on experts saved as local directories and
data given as local json files (the Hub-id code path is the same, minus the download)."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel

import retex_hf
from retex_hf.cli import main
from retex_hf.synthetic import make_suite


def _write_jsonl(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    suite = make_suite("bert", num_tasks=3, seed=0)
    paths = suite.save(root / "models")
    args = ["build", "--base", paths["base"], "--output", str(root / "retex"), "--merge", "ties",
            "--merge-arg", "density=0.3", "--budget", "0.1", "--recovery-steps", "100", "--quiet"]  # fmt: skip
    for task in suite.tasks:
        calib = [{k: v.tolist() for k, v in example.items()} for example in suite.calibration[task]]
        test = suite.test[task]
        rows = [
            {"input_ids": ids[mask.bool()].tolist(), "label": int(label)}
            for ids, mask, label in zip(test["input_ids"], test["attention_mask"], suite.test_labels[task])
        ]
        args += ["--expert", f"{task}={paths['experts'][task]}"]
        args += ["--calibration", f"{task}={_write_jsonl(root / f'{task}_calib.jsonl', calib)}"]
        args += ["--eval", f"{task}={_write_jsonl(root / f'{task}_test.jsonl', rows)}"]
    assert main(args) == 0
    return suite, paths, root, args


def test_build_writes_a_complete_hub_ready_directory(built):
    suite, paths, root, _ = built
    out = root / "retex"
    assert {"config.json", "model.safetensors", "README.md", "accuracy.svg"} <= {p.name for p in out.iterdir()}
    assert not [p for p in root.iterdir() if p.name.startswith(".retex.")]  # staging dirs cleaned up
    card = ModelCard.load(out / "README.md")
    assert "ties" in card.text and all(task in card.text for task in suite.tasks)
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, retex_hf.RetexForSequenceClassification)
    assert model.config.merge_hparams["density"] == 0.3
    for index, (task, inputs) in enumerate(suite.test.items()):
        out_ = model(**inputs)
        assert (out_.task_ids == index).float().mean() >= 0.95
        agree = (out_.logits.argmax(-1) == suite.experts[task](**inputs).logits.argmax(-1)).float().mean()
        assert agree >= 0.9, (task, agree)


def test_eval_reports_per_task_and_router_accuracy_as_json(built, tmp_path, capsys):
    suite, paths, root, build_args = built
    data = [a for a in build_args if "_test.jsonl" in a]
    args = ["eval", str(root / "retex"), "--json", str(tmp_path / "report.json"), "--quiet"]
    for spec in data:
        args += ["--data", spec]
    for task in suite.tasks:
        args += ["--expert", f"{task}={paths['experts'][task]}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "router" in printed and "mean" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert [t["task"] for t in report["tasks"]] == suite.tasks
    for row in report["tasks"]:
        assert row["router_accuracy"] >= 0.95 and row["fidelity"] >= 0.9 and row["expert_accuracy"] >= 0.9


def test_same_seed_and_inputs_give_a_byte_identical_checkpoint(built, tmp_path):
    _, _, root, build_args = built
    args = [a if a != str(root / "retex") else str(tmp_path / "again") for a in build_args]
    args = [a for a in args]
    assert main(args) == 0
    first = load_file(root / "retex" / "model.safetensors")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (root / "retex" / "config.json").read_text() == (tmp_path / "again" / "config.json").read_text()


def test_bad_assignments_name_the_culprit(tmp_path):
    with pytest.raises(ValueError, match="--expert 'oops'"):
        main(["build", "--base", "x", "--expert", "oops", "--calibration", "a=b", "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_build_tokenizes_a_text_column_with_the_base_tokenizer(tmp_path):
    """Calibration given as raw text goes through the base's tokenizer, which is shipped in the output."""
    from transformers import AutoTokenizer, BertTokenizer

    suite = make_suite("bert", num_tasks=3, seed=0)
    paths = suite.save(tmp_path / "models")
    vocab_size = suite.base.config.vocab_size
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, vocab_size)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True).save_pretrained(paths["base"])
    args = ["build", "--base", paths["base"], "--output", str(tmp_path / "out"), "--budget", "0.1",
            "--recovery-steps", "0", "--quiet"]  # fmt: skip
    for task in suite.tasks:
        texts = [" ".join(f"w{int(i)}" for i in ex["input_ids"][1:-1]) for ex in suite.calibration[task]]
        path = tmp_path / f"{task}.csv"
        path.write_text("text\n" + "\n".join(texts) + "\n")
        args += ["--expert", f"{task}={paths['experts'][task]}", "--calibration", f"{task}={path}"]
    assert main(args) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModel.from_pretrained(tmp_path / "out")
    for index, task in enumerate(suite.tasks):
        text = " ".join(f"w{int(i)}" for i in suite.calibration[task][0]["input_ids"][1:-1])
        encoded = tokenizer([text], return_tensors="pt")
        assert encoded["input_ids"][0].tolist() == suite.calibration[task][0]["input_ids"].tolist()
        assert model(**encoded).task_ids.item() == index
