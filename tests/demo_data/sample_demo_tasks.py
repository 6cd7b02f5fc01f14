r"""Sample the built-in demo tasks shipped inside ``prompt_core/demo_tasks`` from real data.

This sampler lives with the tests, not in the library: the package ships only its output
(``task.json`` plus ``train/validation/test.jsonl`` per task, and ``NOTICE.md``);
``tests/test_data.py`` checks that the shipped files are exactly what it writes when the
shared data are present. Regenerate every file byte for byte with

    .venv/bin/python -m tests.demo_data.sample_demo_tasks \
        --shared ../shared/data --out prompt_core/demo_tasks

(``--shared`` is the ``shared/data`` folder of task copies; see its README.md).

The six demo tasks are small samples of public data sets that may be redistributed, chosen
so that a small model's prompt learns each of them in the demo's budget
(``docs/demo_choice.md``): TweetEval sentiment and emotion, QNLI, AG News, and two tasks
derived from them the way SST-2 derives from SST (``tweet_polarity``: TweetEval sentiment
without the neutral tweets; ``news_business_tech``: the AG News business and sci/tech articles).
Each task.json names its source, licence and citation, and NOTICE.md lists them all. The two
AG News samples are for non-commercial research use only (the terms of AG's corpus).

The rule, per task and split (train 240, validation 60, test 200 rows):

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
  drawn rows are shuffled with the same generator;
* a derived task (``labels``) keeps only the rows of those source labels, numbered in that
  order, and one ``disjoint_from`` another task skips every text pair of that task's sample
  (all its splits), so no text is in two demo tasks.
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
SIZES: tuple[tuple[str, int], ...] = (("train", 240), ("validation", 60), ("test", 200))
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
AG_LICENCE = (
    "Non-commercial research use only. AG's corpus of news articles, from which AG News is "
    "built, is, in the words of its page (http://groups.di.unipi.it/~gulli/"
    "AG_corpus_of_news_articles.html), 'provided by the academic community for research "
    "purposes in data mining ..., information retrieval ..., and any other non-commercial "
    "activity'. AG News is the Zhang, Zhao and LeCun (2015) packaging of it. "
    "These terms apply to this sample (not the project's licence): use it for research and "
    "other non-commercial purposes only; see NOTICE.md."
)
AG_CITATION = (
    "Zhang, Zhao and LeCun (2015). Character-level Convolutional Networks for Text "
    "Classification. NeurIPS 2015. AG's corpus of news articles: A. Gulli, "
    "groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html."
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
    "tweet_polarity": {
        "shared": "tweeteval_sentiment",
        "labels": ["negative", "positive"],  # neutral tweets dropped (as SST-2 from SST)
        "disjoint_from": ["tweet_sentiment"],
        "label_words": ["negative", "positive"],
        "description": "Binary sentiment (negative or positive) of English tweets: TweetEval "
                       "sentiment (SemEval-2017 Task 4) with the neutral tweets dropped, as "
                       "SST-2 is derived from SST. No tweet is also in the tweet_sentiment "
                       "sample.",
        "source": "Derived from TweetEval sentiment (SemEval-2017 Task 4, Sentiment Analysis in "
                  "Twitter), github.com/cardiffnlp/tweeteval: the negative and positive tweets "
                  "only, none of the tweets of the tweet_sentiment sample",
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
    "ag_news": {
        "shared": "ag_news",
        "label_words": ["world", "sports", "business", "technology"],
        "description": "Four-way topic of English news articles (title and description): "
                       "world, sports, business, science/technology (AG News).",
        "source": "AG News (Zhang, Zhao and LeCun 2015), built from AG's corpus of news "
                  "articles (A. Gulli, groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html)",
        "licence": AG_LICENCE,
        "citation": AG_CITATION,
    },
    "news_business_tech": {
        "shared": "ag_news",
        "labels": ["business", "sci/tech"],  # the other two topics dropped
        "disjoint_from": ["ag_news"],
        "label_words": ["business", "technology"],
        "description": "Binary topic of English news articles (title and description): "
                       "business or science/technology. AG News with the world and sports "
                       "articles dropped; no article is also in the ag_news sample.",
        "source": "Derived from AG News (Zhang, Zhao and LeCun 2015), built from AG's corpus of "
                  "news articles (A. Gulli, groups.di.unipi.it/~gulli/"
                  "AG_corpus_of_news_articles.html): the business and sci/tech articles only, "
                  "none of the articles of the ag_news sample",
        "licence": AG_LICENCE,
        "citation": AG_CITATION,
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
                 seen: set[tuple[str, str | None]],
                 labels: dict[int, int] | None = None,
                 exclude: frozenset[tuple[str, str | None]] | set = frozenset(),
                 ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Stratified sample of ``n`` rows of ``df`` (see the module docstring).

    ``labels`` (a derived task): source label -> the task's label; rows of other labels are
    skipped (after the duplicate and earlier-split checks, so ``seen`` still gets every source
    text). ``exclude``: text pairs another task's sample holds, skipped."""
    source_counts = Counter(int(x) for x in df["label"]
                            if labels is None or int(x) in labels)
    pool: dict[int, list[dict[str, Any]]] = {c: [] for c in sorted(source_counts)}
    keys: set[tuple[str, str | None]] = set()
    skipped = {"duplicate": 0, "in_earlier_split": 0, "too_long": 0}
    if labels is not None:
        skipped["other_label"] = 0
    if exclude:
        skipped["in_other_task"] = 0
    for a, b, y in zip(df["text_a"], df["text_b"], df["label"], strict=True):
        key = _key(a, b)
        if key in keys:
            skipped["duplicate"] += 1
            continue
        keys.add(key)
        if key in seen:
            skipped["in_earlier_split"] += 1
            continue
        if labels is not None and int(y) not in labels:
            skipped["other_label"] += 1
            continue
        if key in exclude:
            skipped["in_other_task"] += 1
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
    if labels is not None:
        rows = [{**r, "label": labels[r["label"]]} for r in rows]
    seen |= keys
    return rows, skipped


def sample_task(name: str, info: dict[str, Any], shared: Path,
                sizes: tuple[tuple[str, int], ...] = SIZES,
                tasks: dict[str, dict[str, Any]] | None = None,
                ) -> tuple[dict[str, Any], list[str], dict[str, list[dict[str, Any]]],
                           dict[str, dict[str, int]]]:
    """One task's sample: (the shared copy's task.json, the task's label names, rows per split,
    skipped counts per split). ``info["labels"]`` (a derived task) keeps only those source
    labels, in that order; ``info["disjoint_from"]`` names tasks of ``tasks`` (default
    :data:`TASKS`) whose sampled text pairs (every split, same ``sizes``) it must not hold."""
    tasks = TASKS if tasks is None else tasks
    src_dir = shared / info["shared"]
    meta = json.loads((src_dir / "task.json").read_text(encoding="utf-8"))
    names = meta["label_names"]
    labels = None
    if info.get("labels") is not None:
        labels = {names.index(lab): i for i, lab in enumerate(info["labels"])}
        names = list(info["labels"])
    exclude: set[tuple[str, str | None]] = set()
    for other in info.get("disjoint_from", []):
        _, _, other_rows, _ = sample_task(other, tasks[other], shared, sizes, tasks)
        exclude |= {_key(r["text_a"], r["text_b"]) for rs in other_rows.values() for r in rs}
    seen: set[tuple[str, str | None]] = set()
    rows: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, dict[str, int]] = {}
    for split, n in sizes:
        df = pd.read_parquet(src_dir / f"{split}.parquet")
        rng = random.Random(f"{SEED}/{name}/{split}")
        rows[split], skipped[split] = sample_split(df, n, rng, seen, labels, frozenset(exclude))
    return meta, names, rows, skipped


def _jsonl(rows: list[dict[str, Any]]) -> str:
    lines = (json.dumps(r, ensure_ascii=False) for r in rows)
    # U+2028/9 are line breaks to some readers: keep them escaped so one row is one line
    return "".join(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n"
                   for line in lines)


def build_task(name: str, shared: Path, out: Path) -> dict[str, Any]:
    info = TASKS[name]
    meta, label_names, rows_by_split, skipped_all = sample_task(name, info, shared)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    balance: dict[str, dict[str, int]] = {}
    for split, rows in rows_by_split.items():
        (folder / f"{split}.jsonl").write_text(_jsonl(rows), encoding="utf-8")
        sizes[split] = len(rows)
        counts = Counter(r["label"] for r in rows)
        balance[split] = {label_names[c]: counts.get(c, 0) for c in range(len(label_names))}
    commit = meta["source_commit"]
    task_json = {
        "name": name,
        "type": meta["type"],
        "label_names": label_names,
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
    if info.get("labels") or info.get("disjoint_from"):
        kept = info.get("labels") or meta["label_names"]
        others = ", ".join(info.get("disjoint_from", []))
        task_json["derivation"] = (
            f"Derived from shared/data/{info['shared']} the way SST-2 is derived from SST: only "
            f"its {' and '.join(kept)} rows (labels renumbered 0..{len(kept) - 1} in that "
            f"order) and none of the text pairs of the {others} demo sample (any split), so the "
            "two samples share no text; then the same sampling rule as every demo task.")
        task_json["notes"] += (f" Derived task: {len(kept)} of the shared copy's "
                               f"{len(meta['label_names'])} labels, disjoint from {others}.")
    (folder / "task.json").write_text(json.dumps(task_json, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return task_json


def notice(metas: dict[str, dict[str, Any]]) -> str:
    """NOTICE.md: every task's source, licence and citation, and how derived tasks were made."""
    def names(shared: str) -> str:
        return ", ".join(f"`{n}`" for n, info in TASKS.items()
                         if n in metas and info["shared"] == shared)

    derived = [n for n in metas if "derivation" in metas[n]]
    parts = [
        "# Built-in demo tasks: sources, licences, citations\n",
        "The folders next to this file are small samples (a few hundred rows each) of public "
        "data sets, made by `tests/demo_data/sample_demo_tasks.py` from the project's "
        "`shared/data` copies; each `task.json` repeats its entry below and records the "
        "sampling rule. Texts are as in the source (not edited, not truncated). The project's "
        "own licence does **not** apply to these data: each sample keeps the licence or terms "
        "of the data set it was drawn from.\n",
        f"- **TweetEval** ({names('tweeteval_sentiment')}, {names('tweeteval_emotion')}): "
        "TweetEval is released without any restrictions, but restrictions may apply to the "
        "individual tasks it derives from (SemEval-2017 Task 4, SemEval-2018 Task 1) and to "
        "Twitter content; see the quotation below.\n"
        f"- **AG's corpus of news articles, non-commercial research use only** "
        f"({names('ag_news')}): AG News (Zhang, Zhao and LeCun 2015) is built from AG's corpus, "
        "which its page (http://groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html) "
        "says is 'provided by the academic community for research purposes in data mining ..., "
        "information retrieval ..., and any other non-commercial activity'. These terms apply "
        "to these two samples: use them for research and other non-commercial purposes only. "
        "They are not under the project's licence nor an open licence.\n"
        f"- **CC BY-SA 4.0** ({names('qnli')}): the sample is adapted (sampled) from the original "
        "data set and is distributed under the same licence, CC BY-SA 4.0 "
        "(https://creativecommons.org/licenses/by-sa/4.0/). Attribution as below; changes "
        "made: a stratified random subset of rows was selected and stored as JSON lines, "
        "labels mapped to 0..K-1 as in `label_names`.\n",
        "**Derived tasks**, made the way SST-2 is made from SST (each `task.json`'s "
        "`derivation`):\n\n" + "".join(f"- `{n}`: {metas[n]['derivation']}\n" for n in derived),
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
