# torchrec-mdr: `make run` (main job on the default synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := data/synthetic-v2
RUN := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup run test lint typecheck test-gpu bench-loader clean

setup: $(STAMP)

# CPU install: a metadata-only `fbgemm-gpu` wheel pulls `fbgemm-gpu-cpu`, so torchrec never
# downloads the CUDA build. Re-runs only when the install inputs change (so an existing .venv picks up a
# new pin or dev tool, e.g. mypy, at its next `make setup`).
$(STAMP): pyproject.toml install/constraints-cpu.txt install/build_fbgemm_shim.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python install/build_fbgemm_shim.py $(VENV)/shim-wheels
	$(BIN)/python -m pip install --quiet --find-links $(VENV)/shim-wheels \
		-c install/constraints-cpu.txt -e '.[dev]'
	$(BIN)/python -c "import fbgemm_gpu, torchrec, torchmetrics, torchx, pyarrow, mypy"
	touch $(STAMP)

# The main job: the default planted-effect synthetic data (generated if missing), its spec and one
# epoch read through the reader; then ADS (DIN backbone) and DIN trained with DMP +
# TrainPipelineSparseDist, and their per-domain AUCs side by side with the oracle AUC and AUC Imp.
run: setup
	$(BIN)/mdr demo --data $(DATA)
	$(BIN)/mdr train --config configs/quickstart.toml --set data.path=$(DATA) \
		--set 'model.ads.domain_features=[user_activity]' --out $(RUN)-ads
	$(BIN)/mdr train --config configs/quickstart.toml --set data.path=$(DATA) --set model.name=din --out $(RUN)-din
	$(BIN)/mdr compare --runs $(RUN)-ads $(RUN)-din

test: setup
	$(BIN)/python -m pytest -q tests

# The GPU check (never run by CI): tests/gpu on a CUDA machine, in a .venv installed with the CUDA
# builds (README, Install: GPU) -- not `make setup`, which installs the CPU kernels.
# Lint (CI runs it after the tests): pycodestyle, pyflakes and bugbear at line length 120.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Type check (CI runs it after lint): mypy at the level [tool.mypy] in pyproject.toml sets.
typecheck: setup
	$(BIN)/mypy torchrec_mdr data_prep dlrm_style

test-gpu:
	$(BIN)/python -m pytest -q --gpu tests/gpu

bench-loader: setup
	$(BIN)/mdr bench loader --data data/bench-loader

clean:
	rm -rf $(VENV) data/synthetic-v2 data/bench-loader
