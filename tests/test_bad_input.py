"""The bad-input catalogue (issue 5, item 13): ``pytest -m bad_input``.

Each case builds one bad input in a fresh temporary folder, runs the real CLI on it (typer's
CliRunner on ``flows.cli.app``, in this process; the ``process-`` cases run the installed
``prompt-transfer`` script with its output piped) and checks what a user sees:

(a) the exit code: 2 for bad input (1 only for a query that DuckDB rejects);
(b) the message names the file, field or row: exact substrings, on an 80-column console
    (``COLUMNS=80``), so a message that rich hard-wraps through a path fails;
(c) no traceback, neither in the CLI's output nor in what Prefect logs to the real stderr;
(d) nothing was written: the case folder (inputs, the storage root given to the run, the
    default ``./results``: the case runs in that folder) is byte-identical afterwards, so a
    storage root that did not exist still does not.

Study, task, model and prompt-file cases run under both ``validate`` and ``run``: everything
that can be known before compute is checked by both. Models are the tiny local ones of the
``tiny_models`` fixture, so nothing is downloaded; every case fails in validation, before any
training. S3 cases use a moto server in this process, a port that refuses connections, or a
port that accepts them and never answers (with short timeouts from the environment, and once
with the defaults: marked slow). ``pytest -m bad_input -rP`` prints every case's message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.flow_helpers import write_task
from tests.s3_server import moto_s3_server

pytestmark = pytest.mark.bad_input

BOTH = ("validate", "run")
SHORT_S3_TIMEOUTS = {"PROMPT_TRANSFER_S3_CONNECT_TIMEOUT": "1",
                     "PROMPT_TRANSFER_S3_READ_TIMEOUT": "1",
                     "PROMPT_TRANSFER_S3_MAX_ATTEMPTS": "1",
                     "PROMPT_TRANSFER_S3_DEADLINE": "5"}
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
          "AWS_DEFAULT_REGION": "us-east-1"}


# --- the case folder -------------------------------------------------------------------------


@dataclass
class Env:
    """One case's folder and the helpers that build bad inputs in it."""

    tmp: Path
    models: dict[str, str]
    tasks_root: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def store(self) -> Path:
        """The storage root every study names; it does not exist before the case runs."""
        return self.tmp / "store"

    @property
    def study_path(self) -> Path:
        return self.tmp / "study.yaml"

    def base(self) -> dict[str, Any]:
        """A valid study on the tiny encoder and one good task folder (outside the case dir)."""
        return {
            "name": "bad-input",
            "storage": str(self.store),
            "models": [{"kind": "encoder", "name": "tiny", "model_id": self.models["encoder"]}],
            "tasks": [{"path": str(self.tasks_root / "pos_a"), "type": "sentiment"}],
            "training": {"steps": 4, "batch_size": 8, "eval_every": 2, "n_tokens": 4,
                         "lr": 0.05},
            "evaluation": {"batch_size": 8},
        }

    def study(self, edit: Callable[[dict], Any] | None = None, **top: Any) -> Path:
        """Write study.yaml: the base study, top-level fields replaced (None drops one), then
        ``edit`` applied to the dict."""
        d = self.base()
        for k, v in top.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        if edit is not None:
            edit(d)
        self.study_path.write_text(yaml.safe_dump(d, sort_keys=False))
        return self.study_path

    def study_text(self, text: str) -> Path:
        self.study_path.write_text(text)
        return self.study_path

    def with_training(self, **kw: Any) -> Path:
        return self.study(lambda d: d["training"].update(kw))

    def with_model(self, **kw: Any) -> Path:
        return self.study(lambda d: d["models"][0].update(kw))

    def with_task(self, entry: dict[str, Any]) -> Path:
        """The base study plus one more task entry."""
        return self.study(lambda d: d["tasks"].append(entry))

    def task_folder(self, name: str = "bad_task", pair: bool = False) -> Path:
        """A good task folder in the case dir, for a case to break."""
        return write_task(self.tmp / "data", name, "nli" if pair else "sentiment", pair=pair)

    def prompt_file(self, shape: tuple[int, ...], name: str = "init.safetensors",
                    tensor: str = "prompt") -> Path:
        import torch
        from safetensors.torch import save_file

        p = self.tmp / name
        save_file({tensor: torch.zeros(*shape)}, str(p))
        return p

    def moto(self) -> str:
        """Endpoint of the session's moto server, exported with dummy credentials."""
        endpoint = self.request.getfixturevalue("moto_endpoint")
        self.s3_env(endpoint)
        return endpoint

    def s3_env(self, endpoint: str) -> None:
        for k, v in {**S3_ENV, "PROMPT_TRANSFER_S3_ENDPOINT": endpoint}.items():
            self.monkeypatch.setenv(k, v)

    def refused_endpoint(self) -> str:
        """A 127.0.0.1 port nobody listens on: connections are refused at once."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        endpoint = f"http://127.0.0.1:{port}"
        self.s3_env(endpoint)
        return endpoint

    def silent_endpoint(self, short: bool = True) -> str:
        """A 127.0.0.1 port that completes the TCP handshake and never answers (issue item 7);
        with ``short``, S3 timeouts of 1 s, one attempt and a 5 s deadline per operation."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)  # never accepted, never read: the kernel queues the connections
        self.cleanups.append(s.close)
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        self.s3_env(endpoint)
        if short:
            for k, v in SHORT_S3_TIMEOUTS.items():
                self.monkeypatch.setenv(k, v)
        return endpoint


@dataclass(frozen=True)
class Built:
    """What a case runs: the arguments after the command name, the substrings the message must
    contain (exactly), and optional extra checks on the outcome."""

    args: list[str]
    must: list[str]
    after: Callable[[], None] | None = None


@dataclass(frozen=True)
class Case:
    id: str
    cmd: str  # validate, run, query, tables, verify
    build: Callable[[Env], Built]
    code: int = 2
    timeout: int = 180  # pytest-timeout: a hang fails the case
    max_seconds: float | None = None  # the CLI must give up within this
    why: str = ""  # the issue item or the behaviour this pins
    process: bool = False  # run the installed script in a subprocess, not CliRunner
    slow: bool = False  # also marked slow (tens of seconds by design)
    one_line: bool = False  # the output is exactly one line, the `error:` one (issue 19)


def study_case(id_: str, build: Callable[[Env], tuple[Path, list[str]]], cmds=BOTH,
               why: str = "") -> list[Case]:
    """One case per command, on the study file ``build`` writes; the study file's path is always
    one of the substrings the message must contain."""

    def make(env: Env) -> Built:
        path, must = build(env)
        return Built([str(path)], [str(path), *must])

    return [Case(f"{id_}-{cmd}", cmd, make, why=why) for cmd in cmds]


def data_case(id_: str, build: Callable[[Env], tuple[Path, list[str]]], cmds=BOTH,
              why: str = "") -> list[Case]:
    """Like study_case, for bad data the study points at: the message names the data (``must``
    holds its path), not necessarily the study file."""

    def make(env: Env) -> Built:
        path, must = build(env)
        return Built([str(path)], must)

    return [Case(f"{id_}-{cmd}", cmd, make, why=why) for cmd in cmds]


# --- study file ------------------------------------------------------------------------------


def _missing_study(env: Env) -> tuple[Path, list[str]]:
    return env.tmp / "nope.yaml", ["does not exist"]


def _study_is_dir(env: Env) -> tuple[Path, list[str]]:
    d = env.tmp / "a_folder.yaml"
    d.mkdir()
    return d, []


def _not_yaml(env: Env) -> tuple[Path, list[str]]:
    return env.study_text("name: [unclosed\nmodels: {\n"), ["not valid YAML"]


def _top_level_list(env: Env) -> tuple[Path, list[str]]:
    return env.study_text("- name: x\n- models: []\n"), [
        "expected a mapping at the top level, got list"]


def _unknown_field(env: Env) -> tuple[Path, list[str]]:
    return env.study(colour="red"), ["colour"]


def _missing_models(env: Env) -> tuple[Path, list[str]]:
    return env.study(models=None), ["models: Field required"]


def _unknown_kind(env: Env) -> tuple[Path, list[str]]:
    return env.with_model(kind="gpt9"), ["models.0.kind: unknown backbone kind 'gpt9'"]


def _bad_model_name(env: Env) -> tuple[Path, list[str]]:
    return env.with_model(name="my model"), ["model name 'my model'"]


def _duplicate_model_names(env: Env) -> tuple[Path, list[str]]:
    def edit(d):
        d["models"].append(dict(d["models"][0]))

    return env.study(edit), ["model names must be unique", "'tiny'"]


def _duplicate_seeds(env: Env) -> tuple[Path, list[str]]:
    return env.study(seeds=[0, 0]), ["seeds must be distinct", "[0, 0]"]


def _steps_zero(env: Env) -> tuple[Path, list[str]]:
    return env.with_training(steps=0), ["training.steps"]


def _steps_true(env: Env) -> tuple[Path, list[str]]:
    return env.with_training(steps=True), ["training.steps"]


def _lr_negative(env: Env) -> tuple[Path, list[str]]:
    return env.with_training(lr=-1), ["training.lr"]


def _init_text_without_text(env: Env) -> tuple[Path, list[str]]:
    return env.with_training(init="text"), ["init: text needs init_text"]


def _init_prompt_without_file(env: Env) -> tuple[Path, list[str]]:
    return env.with_training(init="prompt"), ["init: prompt and init_prompt"]


def _unknown_init(env: Env) -> tuple[Path, list[str]]:
    return env.with_training(init="zeros"), ["training.init"]


def _yaml_alias(env: Env) -> tuple[Path, list[str]]:
    """A harmless alias: issue item 8 asks that aliases be refused (a bomb exhausts memory)."""
    d = env.base()
    text = yaml.safe_dump({**d, "models": None}, sort_keys=False).replace("models: null\n", "")
    text = text.replace("name: bad-input", "name: &n bad-input", 1)
    text += (f"models:\n- kind: encoder\n  name: *n\n"
             f"  model_id: {json.dumps(d['models'][0]['model_id'])}\n")
    return env.study_text(text), ["alias"]


def _study_name(name: str) -> Callable[[Env], tuple[Path, list[str]]]:
    def build(env: Env) -> tuple[Path, list[str]]:
        return env.study(name=name), ["name", repr(name)]

    return build


def _study_name_slash(env: Env) -> tuple[Path, list[str]]:
    return env.study(name="a/b"), ["study name 'a/b'"]


def _empty_tasks(env: Env) -> tuple[Path, list[str]]:
    return env.study(tasks=[]), ["tasks"]


def _two_sources(env: Env) -> tuple[Path, list[str]]:
    entry = {"path": str(env.tasks_root / "pos_b"), "builtin": "tweet_sentiment"}
    return env.with_task(entry), ["tasks.1", "exactly one of path, builtin, catalogue, hf",
                                  "got path, builtin"]


def _empty_seeds(env: Env) -> tuple[Path, list[str]]:
    return env.study(seeds=[]), ["seeds"]


def _workers_zero(env: Env) -> tuple[Path, list[str]]:
    return env.study(runner={"max_workers": 0}), ["runner.max_workers"]


def _bad_eval_split(env: Env) -> tuple[Path, list[str]]:
    return env.study(evaluation={"split": "dev"}), ["evaluation.split"]


def _tpt_score_at_step_past_steps(env: Env) -> tuple[Path, list[str]]:
    def edit(d: dict) -> None:
        d["stages"] = ["tpt"]
        d["tasks"].append({"path": str(env.tasks_root / "pos_b"), "type": "sentiment"})
        d["tpt"] = {"top_k": 1, "score_at_step": 9}
    return env.study(edit), ["tpt.score_at_step 9", "beyond the 4 training steps"]


def _tpt_target_only_itself(env: Env) -> tuple[Path, list[str]]:
    def edit(d: dict) -> None:
        d["stages"] = ["tpt"]
        d["tasks"].append({"path": str(env.tasks_root / "pos_b"), "type": "sentiment"})
        d["tpt"] = {"targets": ["pos_a"], "sources": [{"task": "pos_a"}]}
    return env.study(edit), ["tpt: target 'pos_a'", "no source but itself"]


def _indicator_window_past_layers(env: Env) -> tuple[Path, list[str]]:
    def edit(d: dict) -> None:
        d["stages"] = ["cross_task", "indicators"]
        d["indicators"] = {"window": 3}  # the tiny encoder has 2 layers
    return env.study(edit), ["indicators.window 3", "exceeds the 2 FFN layers", "(tiny)"]


STUDY_CASES = [
    *study_case("study-missing-file", _missing_study),
    *study_case("study-is-a-folder", _study_is_dir),
    *study_case("study-not-yaml", _not_yaml),
    *study_case("study-top-level-list", _top_level_list),
    *study_case("study-unknown-field", _unknown_field),
    *study_case("study-no-models", _missing_models),
    *study_case("model-unknown-kind", _unknown_kind),
    *study_case("model-bad-name", _bad_model_name),
    *study_case("model-duplicate-names", _duplicate_model_names),
    *study_case("seeds-duplicate", _duplicate_seeds),
    *study_case("seeds-empty", _empty_seeds),
    *study_case("training-steps-0", _steps_zero),
    *study_case("training-steps-true", _steps_true, why="item 11: no bools for numbers"),
    *study_case("training-lr-negative", _lr_negative),
    *study_case("training-init-text-no-text", _init_text_without_text),
    *study_case("training-init-prompt-no-file", _init_prompt_without_file),
    *study_case("training-init-unknown", _unknown_init),
    *study_case("evaluation-split-unknown", _bad_eval_split),
    *study_case("runner-workers-0", _workers_zero),
    *study_case("yaml-alias", _yaml_alias, why="item 8: refuse aliases"),
    *study_case("study-name-dotdot", _study_name(".."), why="item 11"),
    *study_case("study-name-dot", _study_name("."), why="item 11"),
    *study_case("study-name-slash", _study_name_slash),
    *study_case("tasks-empty", _empty_tasks),
    *study_case("task-two-sources", _two_sources),
    *study_case("tpt-score-at-step-past-steps", _tpt_score_at_step_past_steps,
                why="method fidelity, item 8"),
    *study_case("tpt-target-only-itself", _tpt_target_only_itself,
                why="method fidelity, item 8"),
    *study_case("indicators-window-past-layers", _indicator_window_past_layers,
                why="method fidelity, item 8"),
]


# --- task data -------------------------------------------------------------------------------


def _task_missing_folder(env: Env) -> tuple[Path, list[str]]:
    folder = env.tmp / "no_such_task"
    return env.with_task({"path": str(folder)}), [str(folder), "does not exist"]


def _task_json_missing(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    (folder / "task.json").unlink()
    return env.with_task({"path": str(folder)}), [str(folder), "task.json is missing"]


def _task_json_not_json(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    (folder / "task.json").write_text('{"name": "bad_task", ')
    return env.with_task({"path": str(folder)}), [str(folder / "task.json"), "not valid JSON"]


def _task_json_no_label_names(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    (folder / "task.json").write_text(json.dumps({"name": "bad_task", "type": "sentiment"}))
    return env.with_task({"path": str(folder)}), [str(folder / "task.json"),
                                                  "missing field 'label_names'"]


def _task_json_meta(meta: dict[str, Any], *must: str) -> Callable[[Env], tuple[Path, list[str]]]:
    def build(env: Env) -> tuple[Path, list[str]]:
        folder = env.task_folder()
        (folder / "task.json").write_text(json.dumps({"type": "sentiment", **meta}))
        return env.with_task({"path": str(folder)}), [str(folder / "task.json"), *must]

    return build


def _label_out_of_range(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    rows = [{"text_a": f"row {i}", "text_b": None, "label": 7 if i == 3 else i % 2}
            for i in range(6)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return env.with_task({"path": str(folder)}), [str(folder), "split 'test'",
                                                  "outside 0..1", "row 3"]


def _empty_text_a(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    rows = [{"text_a": "" if i == 2 else f"row {i}", "text_b": None, "label": i % 2}
            for i in range(6)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return env.with_task({"path": str(folder)}), [str(folder), "split 'train'",
                                                  "empty text_a", "row 2"]


def _missing_split(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    (folder / "validation.jsonl").unlink()
    return env.with_task({"path": str(folder)}), [
        str(folder), "no validation.parquet or validation.jsonl"]


def _split_not_jsonl(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    (folder / "train.jsonl").write_text('{"text_a": "x", "label": 0}\n{not json\n')
    return env.with_task({"path": str(folder)}), [str(folder / "train.jsonl"), "cannot read"]


def _parquet_missing_column(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder()
    (folder / "train.jsonl").unlink()
    pd.DataFrame({"text_a": ["good", "bad"], "text_b": [None, None]}).to_parquet(
        folder / "train.parquet", index=False)
    return env.with_task({"path": str(folder)}), [str(folder), "split 'train'",
                                                  "missing column(s) ['label']"]


def _duplicate_task_names(env: Env) -> tuple[Path, list[str]]:
    folder = env.task_folder("copy_of_a")
    (folder / "task.json").write_text(json.dumps(
        {"name": "pos_a", "type": "sentiment", "label_names": ["negative", "positive"]}))
    return env.with_task({"path": str(folder)}), ["tasks.0", "tasks.1", "'pos_a'"]


def _duplicate_task_entries(env: Env) -> tuple[Path, list[str]]:
    return env.study(lambda d: d["tasks"].append(dict(d["tasks"][0]))), [
        "tasks.0", "tasks.1", "'pos_a'"]


def _unknown_builtin(env: Env) -> tuple[Path, list[str]]:
    return env.with_task({"builtin": "no_such_task"}), ["no built-in task 'no_such_task'"]


def _unknown_catalogue(env: Env) -> tuple[Path, list[str]]:
    return env.with_task({"catalogue": "no_such_task"}), ["no catalogue task 'no_such_task'"]


def _label_words_count(env: Env) -> tuple[Path, list[str]]:
    entry = {"path": str(env.tasks_root / "pos_b"), "label_words": ["only"]}
    return env.with_task(entry), ["pos_b", "1 label_words for 2 label_names"]


def _hf_parquet_missing_column(env: Env) -> tuple[Path, list[str]]:
    env.request.getfixturevalue("hf_cache")
    files = {}
    for split in ("train", "validation", "test"):
        p = env.tmp / f"hf-{split}.parquet"
        pd.DataFrame({"sentence": ["good film", "bad film"], "label": [1, 0]}).to_parquet(
            p, index=False)
        files[split] = str(p)
    entry = {"hf": {"path": "parquet", "data_files": files, "text_a": "text",
                    "label_names": ["negative", "positive"]}}
    return env.with_task(entry), ["parquet", "no column(s) ['text']"]


TASK_CASES = [
    *data_case("task-folder-missing", _task_missing_folder),
    *data_case("task-json-missing", _task_json_missing),
    *data_case("task-json-not-json", _task_json_not_json),
    *data_case("task-json-no-label-names", _task_json_no_label_names),
    *data_case("task-json-label-names-string",
               _task_json_meta({"name": "bad_task", "label_names": "negative,positive"},
                               "label_names"), why="item 11"),
    *data_case("task-json-name-dotdot",
               _task_json_meta({"name": "..", "label_names": ["negative", "positive"]}, "'..'"),
               why="item 11: trained twice, then failed on a storage key"),
    *data_case("task-json-name-slash",
               _task_json_meta({"name": "a/b", "label_names": ["negative", "positive"]},
                               "'a/b'"), why="item 11"),
    *data_case("task-label-out-of-range", _label_out_of_range),
    *data_case("task-empty-text-a", _empty_text_a),
    *data_case("task-split-file-missing", _missing_split),
    *data_case("task-split-not-jsonl", _split_not_jsonl),
    *data_case("task-parquet-missing-column", _parquet_missing_column),
    *data_case("tasks-duplicate-names", _duplicate_task_names,
               why="item 11: was exit 1 after validate said ok"),
    *data_case("tasks-duplicate-entries", _duplicate_task_entries, why="item 11"),
    *data_case("task-unknown-builtin", _unknown_builtin),
    *data_case("task-unknown-catalogue", _unknown_catalogue),
    *data_case("task-label-words-count", _label_words_count),
    *data_case("task-hf-parquet-missing-column", _hf_parquet_missing_column),
]


# --- models ----------------------------------------------------------------------------------


def _model_path_missing(env: Env) -> tuple[Path, list[str]]:
    missing = env.tmp / "no-such-model"
    return env.with_model(model_id=str(missing)), [str(missing), "models.0.model_id"]


def _encoder_unknown_option(env: Env) -> tuple[Path, list[str]]:
    return env.with_model(options={"colour": "red"}), ["models.0.options", "colour"]


def _mlm_takes_no_options(env: Env) -> tuple[Path, list[str]]:
    return env.with_model(kind="mlm", model_id=env.models["mlm"],
                          options={"temperature": 0.1}), ["models.0.options", "temperature"]


MODEL_CASES = [
    *study_case("model-id-path-missing", _model_path_missing,
                why="item 11: was a hub repo-id error, retried"),
    *study_case("model-option-unknown-encoder", _encoder_unknown_option, why="item 8"),
    *study_case("model-option-unknown-mlm", _mlm_takes_no_options, why="item 8"),
]


# --- prompt files (training.init: prompt) ----------------------------------------------------


def _init_prompt(make: Callable[[Env], Path], *must: str) -> Callable[[Env], tuple[Path, list]]:
    def build(env: Env) -> tuple[Path, list[str]]:
        p = make(env)
        return env.with_training(init="prompt", init_prompt=str(p)), [
            "training.init_prompt", str(p), *must]

    return build


def _bytes_file(env: Env) -> Path:
    p = env.tmp / "init.safetensors"
    p.write_bytes(b"this is not a prompt")
    return p


PROMPT_CASES = [
    *data_case("prompt-file-missing",
               _init_prompt(lambda env: env.tmp / "absent.safetensors")),
    *data_case("prompt-file-not-safetensors",
               _init_prompt(_bytes_file, "not a valid safetensors file")),
    *data_case("prompt-file-wrong-hidden-size",
               _init_prompt(lambda env: env.prompt_file((4, 16)), "(4, 16)", "(4, 32)"),
               why="item 11: name the file"),
    *data_case("prompt-file-wrong-n-tokens",
               _init_prompt(lambda env: env.prompt_file((3, 32)), "(3, 32)", "(4, 32)")),
    *data_case("prompt-file-no-prompt-tensor",
               _init_prompt(lambda env: env.prompt_file((4, 32), tensor="weights"),
                            "no tensor named 'prompt'")),
    *data_case("prompt-file-1d",
               _init_prompt(lambda env: env.prompt_file((32,)), "2-d tensor")),
]


# --- storage ---------------------------------------------------------------------------------


def _run_on(storage: Callable[[Env], str], *must: str,
            after: Callable[[Env], Callable[[], None]] | None = None) -> Callable[[Env], Built]:
    """``run study.yaml --storage URI`` on a valid study (whose own storage is env.store)."""

    def build(env: Env) -> Built:
        uri = storage(env)
        path = env.study()
        return Built([str(path), "--storage", uri], [uri, *must],
                     after(env) if after else None)

    return build


def _read_on(sql: str | None, storage: Callable[[Env], str], *must: str,
             extra: tuple[str, ...] = (), names_root: bool | None = None
             ) -> Callable[[Env], Built]:
    """``query SQL --storage URI`` (or ``tables``/``verify --storage URI`` when sql is None).
    The message must name the root when ``names_root`` (default: when no ``must`` is given)."""

    def build(env: Env) -> Built:
        uri = storage(env)
        head = [] if sql is None else [sql]
        root = not must if names_root is None else names_root
        return Built([*head, "--storage", uri, *extra], [uri] * root + list(must))

    return build


def _a_file(env: Env) -> str:
    env.store.write_text("I am a file, not a folder\n")
    return str(env.store)


def _under_a_file(env: Env) -> str:
    (env.tmp / "plain.txt").write_text("a file\n")
    return str(env.tmp / "plain.txt" / "store")


def _absent(env: Env) -> str:
    return str(env.tmp / "no-such-root")


def _existing_root(env: Env) -> str:
    """A root that holds tables (an empty tables/ folder: no study has written rows yet)."""
    (env.store / "tables").mkdir(parents=True)
    return str(env.store)


def _empty_root(env: Env) -> str:
    env.store.mkdir()
    return str(env.store)


def _bucket_absent(env: Env) -> Callable[[], None]:
    def check() -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=os.environ["PROMPT_TRANSFER_S3_ENDPOINT"])
        assert "no-such-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    return check


def _moto_unknown_bucket(env: Env) -> str:
    env.moto()
    return "s3://no-such-bucket/prefix"


def _refused(env: Env) -> str:
    env.refused_endpoint()
    return "s3://pt-bucket/prefix"


def _silent(env: Env) -> str:
    env.silent_endpoint()
    return "s3://pt-bucket/prefix"


def _silent_defaults(env: Env) -> str:
    env.silent_endpoint(short=False)
    return "s3://pt-bucket/prefix"


def _endpoint() -> str:
    return os.environ["PROMPT_TRANSFER_S3_ENDPOINT"]


def _must_endpoint(build: Callable[[Env], Built]) -> Callable[[Env], Built]:
    """The message must name the endpoint (known only once the case has started one)."""

    def wrapped(env: Env) -> Built:
        b = build(env)
        return Built(b.args, [*b.must, _endpoint()], b.after)

    return wrapped


def _query_default_root(env: Env) -> Built:
    return Built(["select 1"], [str(env.tmp / "results")])


def _tables_default_root(env: Env) -> Built:
    return Built([], [str(env.tmp / "results")])


STORAGE_CASES = [
    Case("storage-root-is-a-file-run", "run", _run_on(_a_file)),
    Case("storage-root-under-a-file-run", "run", _run_on(_under_a_file, "not a directory")),
    Case("storage-root-s3-no-bucket-run", "run", _run_on(lambda env: "s3://", "no bucket")),
    Case("storage-root-missing-query", "query",
         _read_on("select 1", _absent, "does not exist", names_root=True), why="item 11"),
    Case("storage-root-missing-tables", "tables",
         _read_on(None, _absent, "does not exist", names_root=True), why="item 11"),
    Case("storage-root-missing-verify", "verify",
         _read_on(None, _absent, "does not exist", names_root=True), why="item 10"),
    Case("storage-root-without-tables-query", "query",
         _read_on("select 1", _empty_root, "tables", names_root=True)),
    Case("storage-default-root-missing-query", "query", _query_default_root, why="item 11"),
    Case("storage-default-root-missing-tables", "tables", _tables_default_root, why="item 11"),
    Case("s3-unknown-bucket-run", "run",
         _must_endpoint(_run_on(_moto_unknown_bucket, "no-such-bucket", "does not exist",
                                after=_bucket_absent))),
    Case("s3-unknown-bucket-query", "query",
         _must_endpoint(_read_on("select 1", _moto_unknown_bucket, "no-such-bucket",
                                 "does not exist"))),
    Case("s3-unknown-bucket-tables", "tables",
         _must_endpoint(_read_on(None, _moto_unknown_bucket, "no-such-bucket",
                                 "does not exist")),
         why="item 12: was a 544-line traceback"),
    Case("s3-refused-endpoint-run", "run", _must_endpoint(_run_on(_refused)), max_seconds=35,
         why="item 7: the probe's overall deadline is 30 s"),
    Case("s3-refused-endpoint-query", "query",
         _must_endpoint(_read_on("select 1", _refused, "s3://pt-bucket/prefix"))),
    Case("s3-silent-endpoint-run", "run", _must_endpoint(_run_on(_silent)), timeout=90,
         max_seconds=20, why="item 7: no output for 15 minutes before the fix"),
    Case("s3-silent-endpoint-default-timeouts-run", "run",
         _must_endpoint(_run_on(_silent_defaults)), timeout=150, max_seconds=60, slow=True,
         why="item 7: the default probe deadline (20 s), no settings"),
    Case("s3-silent-endpoint-query", "query",
         _must_endpoint(_read_on("select 1", _silent, "s3://pt-bucket/prefix")), timeout=90,
         max_seconds=20, why="item 7: query hung before the fix"),
    Case("s3-silent-endpoint-tables", "tables",
         _must_endpoint(_read_on(None, _silent, "s3://pt-bucket/prefix")), timeout=90,
         max_seconds=20, why="item 7"),
]


# --- query -----------------------------------------------------------------------------------

def _refused_sql(sql: Callable[[Env], str], kind: str, *must: str) -> Callable[[Env], Built]:
    """``query SQL --storage <a root with tables>``: refused as ``<KIND> refused (...)``, the
    message naming the root; ``sql`` may name paths in the case folder."""

    def build(env: Env) -> Built:
        root = _existing_root(env)
        return Built([sql(env), "--storage", root],
                     [f"error: {kind} refused (", "query is read-only", root, *must])

    return build


def _other_root(env: Env) -> str:
    """Another root with a part file, in the case folder: query must not read it."""
    part = env.tmp / "other" / "tables" / "runs" / "study=s" / "part-x.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1")
    return str(env.tmp / "other" / "tables" / "runs" / "**" / "*.parquet")


QUERY_CASES = [
    Case("query-bad-sql", "query",
         _read_on("select * from no_such_table", _existing_root, "query failed",
                  "no_such_table"), code=1),
    Case("query-unknown-format", "query",
         _read_on("select 1", _existing_root, "--format", "'xml'", extra=("--format", "xml"))),
    Case("query-empty-sql", "query", _read_on("", _existing_root, "the SQL is empty"),
         one_line=True, why="issue 19 A: was an AttributeError"),
    Case("query-copy-to-a-file", "query",
         _refused_sql(lambda env: f"COPY (select 1) TO '{env.store}/x.csv'", "COPY",
                  "it writes or reads files"), one_line=True,
         why="issue 19 A: COPY overwrote a prompt's .json sidecar"),
    Case("query-copy-a-part-into-runs", "query",
         _refused_sql(lambda env: f"COPY (select * from runs) TO '{env.store}/tables/runs/"
                  "part-evil.parquet' (FORMAT parquet)", "COPY"), one_line=True,
         why="issue 19 A: a part-evil.parquet poisoned the runs table"),
    Case("query-read-csv-outside", "query",
         _refused_sql(lambda env: "select * from read_csv('/etc/passwd', sep=':')", "SELECT",
                  "/etc/passwd"), one_line=True, why="issue 19 A: printed a local file"),
    Case("query-read-text-outside", "query",
         _refused_sql(lambda env: "select * from read_text('/etc/hostname')", "SELECT",
                  "/etc/hostname"), one_line=True, why="issue 19 A"),
    Case("query-read-parquet-other-root", "query",
         _refused_sql(lambda env: f"select * from read_parquet('{_other_root(env)}')", "SELECT"),
         one_line=True, why="issue 19 A: read another root"),
    Case("query-attach", "query",
         _refused_sql(lambda env: f"ATTACH '{env.tmp}/evil.duckdb' AS evil", "ATTACH"),
         one_line=True, why="issue 19 A: ATTACH wrote a database file"),
    Case("query-export-database", "query",
         _refused_sql(lambda env: f"EXPORT DATABASE '{env.tmp}/exported'", "EXPORT"),
         one_line=True, why="issue 19 A: EXPORT DATABASE wrote files"),
    Case("query-install-extension", "query",
         _refused_sql(lambda env: "INSTALL httpfs", "INSTALL", "from the network"), one_line=True,
         why="issue 19 A: INSTALL httpfs tried the network"),
    Case("query-set-unlocks", "query",
         _refused_sql(lambda env: "SET enable_external_access = true", "SET"), one_line=True,
         why="issue 19 A: the lock cannot be undone"),
]


# --- PEFT adapters and derived models: the files they write (--out) ----------------------------


class _Pickled:
    """A pickled object that creates a file when unpickled: a refused adapter never runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _stored_prompt(env: Env) -> Path:
    import torch

    from prompt_core.prompts import save_prompt_file

    p = env.tmp / "p.safetensors"
    save_prompt_file(p, torch.zeros(4, 32), {"model_id": env.models["encoder"],
                                             "backbone_kind": "encoder"})
    return p


def _adapter(env: Env) -> Path:
    """A valid PEFT prompt-tuning adapter folder in the case folder."""
    import torch

    from prompt_core.peft_io import export_peft

    return export_peft(torch.zeros(4, 32), env.tmp / "adapter", backbone_kind="encoder",
                       base_model_name_or_path=env.models["encoder"])


def _a_plain_file(env: Env) -> Path:
    (env.tmp / "plain.txt").write_text("a file\n")
    return env.tmp / "plain.txt"


def _export_out_under_a_file(env: Env) -> Built:
    out = _a_plain_file(env) / "adapter"
    return Built([str(_stored_prompt(env)), "--out", str(out)],
                 [f"--out {out}", "not a folder"])


def _export_into_a_full_folder(env: Env) -> Built:
    folder = _adapter(env)
    return Built([str(_stored_prompt(env)), "--out", str(folder)],
                 [str(folder), "not empty", "--force"])


def _import_out_under_a_file(env: Env) -> Built:
    out = _a_plain_file(env) / "p.safetensors"
    return Built([str(_adapter(env)), "--out", str(out)], [f"--out {out}", "not a folder"])


def _import_pickle_adapter(env: Env) -> Built:
    import torch

    folder = _adapter(env)
    (folder / "adapter_model.safetensors").unlink()
    marker = env.tmp / "code-ran"
    torch.save({"prompt_embeddings": _Pickled(marker)}, folder / "adapter_model.bin")
    return Built([str(folder), "--out", str(env.tmp / "p.safetensors")],
                 [str(folder / "adapter_model.bin"), "refused", "adapter_model.safetensors"],
                 after=lambda: _no_torch_advice_and_no_code(marker))


def _no_torch_advice_and_no_code(marker: Path) -> None:
    assert not marker.exists(), "the pickle's code ran"


def _derive_out_under_a_file(env: Env) -> Built:
    out = _a_plain_file(env) / "model"
    return Built(["layer-drop", "--keep", "3", "--out", str(out)],
                 [f"--out {out}", "not a folder"])


FILE_CASES = [
    Case("export-peft-out-under-a-file", "export-peft", _export_out_under_a_file,
         one_line=True, why="issue 19 B: was exit 1 with a raw errno"),
    Case("export-peft-out-not-empty", "export-peft", _export_into_a_full_folder,
         one_line=True, why="issue 19 B: said overwrite=True, the flag is --force"),
    Case("import-peft-out-under-a-file", "import-peft", _import_out_under_a_file,
         one_line=True, why="issue 19 B: was exit 1 with a raw errno"),
    Case("import-peft-pickle-adapter", "import-peft", _import_pickle_adapter, one_line=True,
         why="issue 19 B: repeated torch's advice to load with weights_only=False"),
    Case("derive-model-out-under-a-file", "derive-model", _derive_out_under_a_file,
         one_line=True, why="issue 19 B: was exit 1 with a raw errno"),
]



# --- the installed script, in its own process (no CliRunner, stderr a pipe) -----------------


def _in_process(ids: list[str]) -> list[Case]:
    by_id = {c.id: c for c in [*STUDY_CASES, *TASK_CASES, *PROMPT_CASES, *STORAGE_CASES]}
    return [replace(by_id[i], id=f"process-{i}", process=True, timeout=240) for i in ids]


PROCESS_CASES = _in_process(["task-label-out-of-range-run", "prompt-file-wrong-hidden-size-run",
                             "s3-unknown-bucket-tables"])

CASES = [*STUDY_CASES, *TASK_CASES, *MODEL_CASES, *PROMPT_CASES, *STORAGE_CASES, *QUERY_CASES,
         *FILE_CASES, *PROCESS_CASES]


# --- fixtures and the one test ---------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server in this process. Its request log (werkzeug, INFO, from the server's
    threads) is kept off the root logger's handlers: those are the CLI's, not the server's."""
    log = logging.getLogger("werkzeug")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with moto_s3_server() as endpoint:
            yield endpoint
    finally:
        log.setLevel(level)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> Iterator[Path]:
    """The datasets cache outside every case folder (a cache is not the run's output)."""
    import datasets

    cache = tmp_path_factory.mktemp("hf-cache")
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = cache
    yield cache
    datasets.config.HF_DATASETS_CACHE = old


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root: 'dir' for folders, a content hash for files."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "other"
    return out


def _explain_missing(output: str, must: list[str]) -> str:
    missing = [s for s in must if s not in output]
    unwrapped = output.replace("\n", "")
    wrapped = [s for s in missing if s in unwrapped or s in " ".join(output.split())]
    note = f" ({wrapped} found only after joining wrapped lines)" if wrapped else ""
    return f"message lacks {missing}{note}"


@dataclass
class Outcome:
    """What the user saw: exit code, the CLI's output, anything else on the real stdout/stderr
    (Prefect's console handlers), the exception that escaped the CLI (in-process only)."""

    code: int
    output: str
    other: str
    seconds: float
    escaped: BaseException | None = None


def invoke_in_process(args: list[str], capfd) -> Outcome:
    from typer.testing import CliRunner

    from flows.cli import app

    capfd.readouterr()
    t0 = time.monotonic()
    res = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    seconds = time.monotonic() - t0
    cap = capfd.readouterr()
    escaped = res.exception if not isinstance(res.exception, SystemExit) else None
    return Outcome(res.exit_code, res.output, cap.out + cap.err, seconds, escaped)


def invoke_process(args: list[str], timeout: float) -> Outcome:
    """The installed ``prompt-transfer`` script, stdout and stderr piped (as under nohup or CI)."""
    script = Path(sys.executable).parent / "prompt-transfer"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    t0 = time.monotonic()
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "COLUMNS": "80"})
    return Outcome(p.returncode, p.stdout + p.stderr, "", time.monotonic() - t0)


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.timeout(c.timeout)]
                 + [pytest.mark.slow] * c.slow) for c in CASES])
def test_bad_input(case: Case, tiny_models, tasks_root, tmp_path, monkeypatch, request, capfd):
    if case.cmd == "run" and not case.process:
        request.getfixturevalue("prefect_harness")
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    monkeypatch.chdir(case_dir)  # the default root ./results would land here
    for k in ("PROMPT_TRANSFER_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    env = Env(case_dir, tiny_models, tasks_root, request, monkeypatch)
    try:
        built = case.build(env)
        before = snapshot(case_dir)
        args = [case.cmd, *built.args]
        got = (invoke_process(args, case.timeout - 10) if case.process
               else invoke_in_process(args, capfd))
    finally:
        for fn in env.cleanups:
            fn()
    shown = (f"exit {got.code} after {got.seconds:.1f} s; output:\n{got.output}\n"
             f"--- real stdout/stderr:\n{got.other}")

    print(f"{case.cmd} {' '.join(built.args)}\n{shown}")  # see every message: pytest -rP
    # every check runs, so a failure lists all that is wrong with the case
    problems = []
    # (c) no traceback: not raised through the CLI, not printed by it, not logged by Prefect
    if got.escaped is not None:
        import traceback

        problems.append(f"uncaught {type(got.escaped).__name__} (a user sees a traceback): "
                        f"{got.escaped}")
        shown += "\n--- the uncaught exception:\n" + "".join(
            traceback.format_exception(got.escaped))
    if "Traceback" in got.output or "Traceback" in got.other:
        problems.append("a traceback was printed")
    # (a) exit code, in time
    if got.code != case.code:
        problems.append(f"exit {got.code}, expected {case.code}")
    if case.max_seconds is not None and got.seconds > case.max_seconds:
        problems.append(f"took {got.seconds:.0f} s, more than {case.max_seconds:g} s")
    # (b) the message names the file, field or row (and is the only line, where asked)
    if not all(s in got.output for s in built.must):
        problems.append(_explain_missing(got.output, built.must))
    lines = [ln for ln in got.output.splitlines() if ln.strip()]
    if case.one_line and (len(lines) != 1 or not lines[0].startswith("error: ")):
        problems.append(f"not one `error:` line but {len(lines)} line(s)")
    if "weights_only" in got.output or "safe_globals" in got.output:
        problems.append("the message repeats torch's advice (weights_only, safe_globals)")
    # (d) nothing written
    after = snapshot(case_dir)
    if after != before:
        problems.append(
            f"the case folder changed: new {sorted(set(after) - set(before))}, changed "
            f"{sorted(k for k in before if k in after and after[k] != before[k])}, removed "
            f"{sorted(set(before) - set(after))}")
    if built.after is not None:
        try:
            built.after()
        except AssertionError as e:
            problems.append(f"written: {e}")
    if problems:
        why = f" [{case.why}]" if case.why else ""
        pytest.fail("; ".join(problems) + why + "\n" + shown, pytrace=False)


def test_catalogue_size():
    """Issue 5 asks for at least 30 cases; count distinct bad inputs, not commands."""
    inputs = {c.id.rsplit("-", 1)[0] if c.cmd in BOTH and c.id.endswith(f"-{c.cmd}") else c.id
              for c in CASES if not c.process}
    assert len(inputs) >= 35 and len({c.id for c in CASES}) == len(CASES)
