PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast quickstart bench clean mutation server ui-check

# uv (from PyPI into the venv) installs in parallel: ~20 s instead of pip's ~2.5 min on this
# project's machine with warm caches (README); pip stays the fallback.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv && $(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]' \
		|| $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Two pytest workers (pytest-xdist), one test file each at a time (module fixtures stay in one
# process); --durations lists the slowest tests so CI's wall time can be followed.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# The development lane: everything but the tests that train models or start servers.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Mutation testing (mutmut 3, config in setup.cfg [mutmut]) of the rules that hold the study's
# protocol and the verdicts, against those rules' tests only. Long: not part of `make test`; see
# reports/benchmarks/mutation.md. Narrow it with e.g. MUTANTS='medfake.training.verdict.*'.
MUTANTS ?= 'medfake.training.metrics.*' 'medfake.training.verdict.*' \
	'medfake.data.build.x__ctgan_candidates__*' 'medfake.data.build.x_select_slices__*' \
	'medfake.data.build.x__lidc_random__*' 'medfake.data.build.x__lidc_matched_z__*' \
	'medfake.data.build.x__without_shared_patients__*' 'medfake.data.build.x__scan_problems__*' \
	'medfake.data.splits.*' \
	'medfake.study.ranking.x_rank_models__*' 'medfake.study.select.x_repeat_jobs__*' \
	'medfake.study.statistics.x_aggregate__*' \
	'medfake.registry.promote.x_compare__*' 'medfake.registry.promote.x_metric_direction__*' \
	'medfake.registry.promote.x_setup_digest__*' 'medfake.registry.promote.x_group_candidates__*' \
	'medfake.registry.promote.x_default_floor__*' 'medfake.registry.promote.x_above_floor__*' \
	'medfake.registry.promote.x*Group*' \
	$(foreach f,to_input default_radius _numbers truth_from_manifest peaks _distance pointing_game \
	  disc_energy disc_share _ranks spearman score_slices shuffled_chance randomisation_spearman \
	  localisation_metrics occlusion_patch _sample,'medfake.training.localisation.x_$(f)__*') \
	'medfake.inference.evaluate.x_check_fits__*' 'medfake.inference.evaluate.x_seen_scan_share__*'
MUTATION_JOBS ?= 2

mutation: $(STAMP)
	nice -n 15 $(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	@echo "module status count (every mutant of the mutated files; 'not checked' = outside MUTANTS):"
	@$(BIN)/mutmut results --all true | awk -F': ' 'NF == 2 { m = $$1; gsub(/ /, "", m); sub(/\.[^.]*$$/, "", m); n[m "  " $$2]++ } END { for (k in n) print k, n[k] }' | sort

# The main job on the embedded default (synthetic phantom): synth → preprocess → train.
quickstart: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/mlflow run . -e train -P model=xception --env-manager local --experiment-name medfake-quickstart

# The team tracking server (README "Team tracking server"): PostgreSQL + mlflow server, until Ctrl-C.
SERVER_ARGS ?=
server: $(STAMP)
	$(BIN)/medfake server $(SERVER_ARGS)

# The MLflow UI in headless Chromium (Debian's chromium + chromium-driver) on a tiny store; writes
# the screenshots reports/ui/runs.png and reports/ui/run.png (make test runs the same test into tmp).
ui-check: $(STAMP)
	MEDFAKE_UI_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/core/test_ui_browser.py

clean:
	rm -rf $(VENV) mlruns mlflow.db optuna.journal data .medfake
