r"""Sample the built-in demo tasks shipped inside ``prompt_core/demo_tasks`` from real data.

This sampler lives with the tests, not in the library: the package ships only its output
(``task.json`` plus ``train/validation/test.jsonl`` per task, and ``NOTICE.md``);
``tests/test_data.py`` checks that the shipped files are exactly what it writes when the
shared data are present. Regenerate every file byte for byte with

    .venv/bin/python -m tests.demo_data.sample_demo_tasks \
        --shared ../shared/data --out prompt_core/demo_tasks

(``--shared`` is the ``shared/data`` folder of task copies; see its README.md).

The six demo tasks are small samples of public data sets whose licences allow redistribution
(TweetEval sentiment and emotion, SNLI, QNLI, ETHICS justice and deontology); each task.json
names its source, licence and citation, and NOTICE.md lists them all.

The rule, per task and split (train 240, validation 60, test 120 rows):

* each demo split is drawn only from the *same* split of the shared copy (train from train,
  validation from validation, test from test), so a test row never comes from train;
* exact duplicate (text_a, text_b) rows are dropped within a split, and a validation or test
  row whose (text_a, text_b) also occurs in an earlier shared split is skipped;
* rows whose text_a + text_b is longer than ``MAX_CHARS`` characters are skipped (nothing is
  truncated), so the demo stays fast;
* the sample is stratified by label: each class gets its share of the *source* split's
  class counts (largest remainder), at most what is available; fewer rows if the split is
  smaller;
* rows are drawn with ``random.Random(f"{SEED}/{task}/{split}")`` (a str seed is hashed with
  SHA-512, the same on every Python version) from the class's rows in source order, and the
  drawn rows are shuffled with the same generator.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

SEED = 0
MAX_CHARS = 600
SIZES: tuple[tuple[str, int], ...] = (("train", 240), ("validation", 60), ("test", 120))
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "prompt_core" / "demo_tasks"
DEFAULT_SHARED = REPO.parent / "shared" / "data"

TWEETEVAL_LICENCE = (
    "TweetEval (README, section License): 'TweetEval is released without any restrictions but "
    "restrictions may apply to individual tasks (which are derived from existing datasets) or "
    "Twitter (main data source). We refer users to the original licenses accompanying each "
    "dataset and Twitter regulations.'"
)
TWEETEVAL_CITATION = (
    "Barbieri, Camacho-Collados, Espinosa-Anke and Neves (2020). TweetEval: Unified Benchmark "
    "and Comparative Evaluation for Tweet Classification. Findings of EMNLP 2020."
)
ETHICS_LICENCE = (
    "MIT licence (ETHICS is MIT-licensed by its authors, github.com/hendrycks/ethics; the copy "
    "sampled here, oughtinc/ice, is MIT-licensed too). The samples are redistributed under the "
    "same MIT licence; see NOTICE.md."
)
ETHICS_CITATION = (
    "Hendrycks, Burns, Basart, Critch, Li, Song and Steinhardt (2021). Aligning AI With Shared "
    "Human Values. ICLR 2021."
)
CC_BY_SA = (
    "Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0, "
    "https://creativecommons.org/licenses/by-sa/4.0/). The sample is a modified (sampled) "
    "copy, redistributed under the same licence, CC BY-SA 4.0; see NOTICE.md."
)

# name -> (shared folder, label words, description, source, licence, citation)
TASKS: dict[str, dict[str, Any]] = {
    "tweet_sentiment": {
        "shared": "tweeteval_sentiment",
        "label_words": ["negative", "neutral", "positive"],
        "description": "Three-way sentiment of English tweets (SemEval-2017 Task 4 via "
                       "TweetEval).",
        "source": "TweetEval sentiment (SemEval-2017 Task 4, Sentiment Analysis in Twitter), "
                  "github.com/cardiffnlp/tweeteval",
        "licence": TWEETEVAL_LICENCE + " The underlying SemEval-2017 Task 4 data states no "
                   "further licence in TweetEval; tweets are also subject to Twitter's terms.",
        "citation": TWEETEVAL_CITATION + " Rosenthal, Farra and Nakov (2017). SemEval-2017 "
                    "Task 4: Sentiment Analysis in Twitter. SemEval 2017.",
    },
    "tweet_emotion": {
        "shared": "tweeteval_emotion",
        "label_words": ["anger", "joy", "optimism", "sadness"],
        "description": "Four-way emotion of English tweets (SemEval-2018 Task 1 via TweetEval).",
        "source": "TweetEval emotion (SemEval-2018 Task 1, Affect in Tweets, emotion subset), "
                  "github.com/cardiffnlp/tweeteval",
        "licence": TWEETEVAL_LICENCE + " The underlying SemEval-2018 Task 1 data states no "
                   "further licence in TweetEval; tweets are also subject to Twitter's terms.",
        "citation": TWEETEVAL_CITATION + " Mohammad, Bravo-Marquez, Salameh and Kiritchenko "
                    "(2018). SemEval-2018 Task 1: Affect in Tweets. SemEval 2018.",
    },
    "snli": {
        "shared": "snli",
        "label_words": ["yes", "maybe", "no"],
        "description": "Natural language inference on image-caption premises (SNLI 1.0): does "
                       "the premise entail, leave open or contradict the hypothesis?",
        "source": "SNLI 1.0, the Stanford Natural Language Inference corpus "
                  "(nlp.stanford.edu/projects/snli), as distributed with e-SNLI "
                  "(github.com/OanaMariaCamburu/e-SNLI)",
        "licence": "SNLI: " + CC_BY_SA + " e-SNLI repository (the copy sampled): MIT.",
        "citation": "Bowman, Angeli, Potts and Manning (2015). A large annotated corpus for "
                    "learning natural language inference. EMNLP 2015. (Copy: Camburu, "
                    "Rocktaschel, Lukasiewicz and Blunsom (2018). e-SNLI: Natural Language "
                    "Inference with Natural Language Explanations. NeurIPS 2018.)",
    },
    "qnli": {
        "shared": "qnli",
        "label_words": ["yes", "no"],
        "description": "Question-answering NLI (GLUE QNLI): does the Wikipedia sentence contain "
                       "the answer to the question?",
        "source": "QNLI from the GLUE benchmark (gluebenchmark.com), built from SQuAD v1.1 "
                  "(rajpurkar.github.io/SQuAD-explorer)",
        "licence": "SQuAD (the source of every QNLI question and sentence): " + CC_BY_SA
                   + " The copy sampled (jonny-vr/LLMCBench) states no licence for the data; "
                   "its repository LICENSE is MIT.",
        "citation": "Wang, Singh, Michael, Hill, Levy and Bowman (2019). GLUE: A Multi-Task "
                    "Benchmark and Analysis Platform for Natural Language Understanding. ICLR "
                    "2019. Rajpurkar, Zhang, Lopyrev and Liang (2016). SQuAD: 100,000+ "
                    "Questions for Machine Comprehension of Text. EMNLP 2016.",
    },
    "ethics_justice": {
        "shared": "ethics_justice",
        "label_words": ["no", "yes"],
        "description": "ETHICS justice: is the claim of desert or of treating someone "
                       "differently reasonable?",
        "source": "ETHICS benchmark, justice subset (github.com/hendrycks/ethics), as copied "
                  "verbatim into oughtinc/ice",
        "licence": ETHICS_LICENCE,
        "citation": ETHICS_CITATION,
    },
    "ethics_deontology": {
        "shared": "ethics_deontology",
        "label_words": ["no", "yes"],
        "description": "ETHICS deontology: is the excuse offered for a request or a role-based "
                       "duty reasonable?",
        "source": "ETHICS benchmark, deontology subset (github.com/hendrycks/ethics), as "
                  "copied verbatim into oughtinc/ice",
        "licence": ETHICS_LICENCE,
        "citation": ETHICS_CITATION,
    },
}


def _key(a: Any, b: Any) -> tuple[str, str | None]:
    return (str(a), None if b is None or pd.isna(b) else str(b))


def _quotas(counts: Counter, n: int) -> dict[int, int]:
    """Largest-remainder shares of ``n`` in proportion to ``counts`` (ties: lower label)."""
    total = sum(counts.values())
    exact = {c: n * k / total for c, k in counts.items()}
    quota = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - quota[c]), c))[: n - sum(quota.values())]:
        quota[c] += 1
    return quota


def sample_split(df: pd.DataFrame, n: int, rng: random.Random,
                 seen: set[tuple[str, str | None]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Stratified sample of ``n`` rows of ``df`` (see the module docstring)."""
    source_counts = Counter(int(x) for x in df["label"])
    pool: dict[int, list[dict[str, Any]]] = {c: [] for c in sorted(source_counts)}
    keys: set[tuple[str, str | None]] = set()
    skipped = {"duplicate": 0, "in_earlier_split": 0, "too_long": 0}
    for a, b, y in zip(df["text_a"], df["text_b"], df["label"], strict=True):
        key = _key(a, b)
        if key in keys:
            skipped["duplicate"] += 1
            continue
        keys.add(key)
        if key in seen:
            skipped["in_earlier_split"] += 1
            continue
        if len(key[0]) + len(key[1] or "") > MAX_CHARS:
            skipped["too_long"] += 1
            continue
        pool[int(y)].append({"text_a": key[0], "text_b": key[1], "label": int(y)})
    quota = _quotas(source_counts, min(n, sum(len(v) for v in pool.values())))
    rows: list[dict[str, Any]] = []
    for c, members in pool.items():
        rows.extend(rng.sample(members, min(quota[c], len(members))))
    rng.shuffle(rows)
    seen |= keys
    return rows, skipped


def _jsonl(rows: list[dict[str, Any]]) -> str:
    lines = (json.dumps(r, ensure_ascii=False) for r in rows)
    # U+2028/9 are line breaks to some readers: keep them escaped so one row is one line
    return "".join(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"
                   for line in lines)


def build_task(name: str, shared: Path, out: Path) -> dict[str, Any]:
    info = TASKS[name]
    src_dir = shared / info["shared"]
    meta = json.loads((src_dir / "task.json").read_text(encoding="utf-8"))
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[str, str | None]] = set()
    sizes: dict[str, int] = {}
    balance: dict[str, dict[str, int]] = {}
    skipped_all: dict[str, dict[str, int]] = {}
    for split, n in SIZES:
        df = pd.read_parquet(src_dir / f"{split}.parquet")
        rng = random.Random(f"{SEED}/{name}/{split}")
        rows, skipped = sample_split(df, n, rng, seen)
        (folder / f"{split}.jsonl").write_text(_jsonl(rows), encoding="utf-8")
        sizes[split] = len(rows)
        counts = Counter(r["label"] for r in rows)
        balance[split] = {meta["label_names"][c]: counts.get(c, 0)
                          for c in range(len(meta["label_names"]))}
        skipped_all[split] = skipped
    commit = meta["source_commit"]
    task_json = {
        "name": name,
        "type": meta["type"],
        "label_names": meta["label_names"],
        "label_words": info["label_words"],
        "description": info["description"],
        "text_a_field_meaning": meta["text_a_field_meaning"],
        "text_b_field_meaning": meta["text_b_field_meaning"],
        "licence": f"{info['licence']} As stated for the shared copy: \"{meta['licence']}\"",
        "source": info["source"],
        "citation": info["citation"],
        "source_repo": meta["source_repo"],
        "source_commit": commit,
        "source_paths": meta["source_paths"],
        "sampled_from": f"shared/data/{info['shared']} (a copy of "
                        f"{meta['source_repo']}@{commit})",
        "sample": {
            "sizes": sizes,
            "label_counts": balance,
            "seed": SEED,
            "max_chars": MAX_CHARS,
            "skipped": skipped_all,
            "rule": "each split drawn only from the same split of the shared copy; stratified "
                    "by label in proportion to the source split's class counts (largest "
                    "remainder); exact duplicate (text_a, text_b) rows dropped, and validation/"
                    "test rows whose text pair occurs in an earlier shared split skipped; "
                    f"rows with len(text_a) + len(text_b) > {MAX_CHARS} characters skipped "
                    "(nothing truncated) so the demo stays fast; drawn and shuffled with "
                    f"random.Random('{SEED}/{name}/<split>'). Regenerate: python -m "
                    "tests.demo_data.sample_demo_tasks --shared <shared/data> --out "
                    "prompt_core/demo_tasks",
        },
        "notes": f"Demo sample of {sizes['train']}/{sizes['validation']}/{sizes['test']} "
                 "train/validation/test rows, each split drawn from the same split of the "
                 f"shared copy. Texts are not truncated: rows with text_a + text_b longer than "
                 f"{MAX_CHARS} characters were skipped so the demo stays fast "
                 f"({sum(v['too_long'] for v in skipped_all.values())} such rows in the shared "
                 f"splits); exact duplicate text pairs were dropped "
                 f"({sum(v['duplicate'] for v in skipped_all.values())} rows). Shared copy's "
                 f"notes: {meta['notes']}",
    }
    (folder / "task.json").write_text(json.dumps(task_json, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return task_json


MIT_TEXT = """\
Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def notice(metas: dict[str, dict[str, Any]]) -> str:
    """NOTICE.md: every task's source, licence and citation, and the licence terms."""
    parts = [
        "# Built-in demo tasks: sources, licences, citations\n",
        "The folders next to this file are small samples (a few hundred rows each) of public "
        "data sets, made by `tests/demo_data/sample_demo_tasks.py` from the project's "
        "`shared/data` copies; each `task.json` repeats its entry below and records the "
        "sampling rule. Texts are as in the source (not edited, not truncated). The project's "
        "own licence does **not** apply to these data: each sample keeps the licence of the "
        "data set it was drawn from.\n",
        "- **CC BY-SA 4.0** (`snli`, `qnli`): the samples are adapted (sampled) from the "
        "original data sets and are distributed under the same licence, CC BY-SA 4.0 "
        "(https://creativecommons.org/licenses/by-sa/4.0/). Attribution as below; changes "
        "made: a stratified random subset of rows was selected and stored as JSON lines, "
        "labels mapped to 0..K-1 as in `label_names`.\n"
        "- **MIT** (`ethics_justice`, `ethics_deontology`): the samples are distributed under "
        "the MIT licence of the ETHICS data set; its permission notice is reproduced at the "
        "end of this file.\n"
        "- **TweetEval** (`tweet_sentiment`, `tweet_emotion`): TweetEval is released without "
        "any restrictions, but restrictions may apply to the individual tasks it derives from "
        "(SemEval-2017 Task 4, SemEval-2018 Task 1) and to Twitter content; see the quotation "
        "below.\n",
    ]
    for name, meta in metas.items():
        sizes = meta["sample"]["sizes"]
        parts.append(
            f"## {name}\n\n"
            f"- Source: {meta['source']}\n"
            f"- Sampled from: {meta['sampled_from']}; files {', '.join(meta['source_paths'])}\n"
            f"- Licence: {meta['licence']}\n"
            f"- Citation: {meta['citation']}\n"
            f"- Sample: {sizes['train']} / {sizes['validation']} / {sizes['test']} rows "
            f"(train / validation / test), seed {meta['sample']['seed']}\n"
        )
    parts.append(
        "## MIT licence (ETHICS)\n\n"
        "ETHICS (Hendrycks et al. 2021) is MIT-licensed by its authors "
        "(github.com/hendrycks/ethics); the copyright line is that of the ETHICS authors as "
        "given in that repository's LICENSE file. The MIT permission notice:\n\n"
        "```\n" + MIT_TEXT + "```\n"
    )
    return "\n".join(parts)


def main(shared: Path = DEFAULT_SHARED, out: Path = DEFAULT_OUT) -> dict[str, dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    metas = {name: build_task(name, Path(shared), Path(out)) for name in TASKS}
    (out / "NOTICE.md").write_text(notice(metas), encoding="utf-8")
    return metas


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help="the shared/data folder of task copies (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where the task folders go (default: %(default)s)")
    args = parser.parse_args()
    for name, meta in main(args.shared, args.out).items():
        print(name, meta["sample"]["sizes"], meta["sample"]["label_counts"])
