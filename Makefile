# The README's commands: `make demo`, `make test` and the fast lane `make check`; each sets up all it needs.
# Any Python 3.10 to 3.13 (docs/operations.md, "Pythons"): make demo PYTHON=python3.13 builds
# .venv-python3.13 beside the default interpreter's .venv.
PYTHON ?= python3
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN := $(VENV)/bin
EXTRAS ?= training,build,client,review,bench,dev
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo
DEMO_REPO ?= model_repository/demo
DEMO_HTTP ?= 18000
DEMO_GRPC ?= 18001
DEMO_METRICS ?= 18002
DEMO_EPOCHS ?= 8
DEMO_SIZE ?= 128
REVIEW_PORT ?= 18765
REVIEW_FCR ?= 0.05

.PHONY: setup python-check cluster-tools demo review-demo test check lint fix bench-accuracy bench-throughput bench-transport bench-soak bench-line-metrics smoke-gpu clean

setup: python-check $(VENV)/.installed

# In the first second: an interpreter that cannot run the project, or a VENV of another version.
python-check:
	@bash .ci/python-check.sh '$(PYTHON)' '$(VENV)' >/dev/null

# The last step installs the embedded tritonserver's wheel without its numpy<2 pin: for 3.13,
# where numpy 1 has no wheels (its binary needs no numpy); below 3.13 the serve extra has it.
$(VENV)/.installed: pyproject.toml
	py=$$(bash .ci/python-check.sh '$(PYTHON)' '$(VENV)') && bash .ci/system-deps.sh "$$py" && \
	  { test -x $(BIN)/python || bash .ci/disk-check.sh 7 . "the virtualenv (torch's CUDA build)"; } && \
	  { test -x $(BIN)/python || "$$py" -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/pip install --quiet --no-deps 'nvidia-pytriton==0.7.0'
	touch $@

# Main job on the embedded default: synthetic production-line data, train and evaluate, build the
# Triton model repository (CPU target), verify it in the real tritonserver, serve it, score the
# test images with dcam-client (scores, decisions, heatmaps), the line status from Triton's metrics,
# and AUROC from the client's own output.
# --teacher auto: ImageNet weights where cached or downloadable, else the shipped license-clean
# formula teacher; it says which and why, and the run's manifest records it.
demo: setup
	$(BIN)/dcam-data synth $(DEMO_DATA) --size $(DEMO_SIZE) --n-train 40 --seed 0 --force
	$(BIN)/dcam-train --data $(DEMO_DATA) --out $(DEMO_RUN) --teacher auto \
	  --image-size $(DEMO_SIZE) --epochs $(DEMO_EPOCHS) --force
	$(BIN)/dcam-build engines $(DEMO_RUN) --out $(DEMO_REPO) --force
	$(BIN)/dcam-build verify $(DEMO_REPO)
	$(BIN)/dcam-serve $(DEMO_REPO) --http-port $(DEMO_HTTP) --grpc-port $(DEMO_GRPC) \
	  --metrics-port $(DEMO_METRICS) & pid=$$!; \
	$(BIN)/dcam-client score --dir $(DEMO_DATA) --recursive --glob '*/test/*/*' \
	  --url 127.0.0.1:$(DEMO_GRPC) --output $(DEMO_RUN)/scores.jsonl --category-from-path \
	  --heatmaps $(DEMO_RUN)/heatmaps --force; status=$$?; \
	[ $$status -eq 0 ] && $(BIN)/dcam-client status \
	  --metrics-url http://127.0.0.1:$(DEMO_METRICS)/metrics; \
	kill -TERM $$pid; wait $$pid; \
	[ $$status -eq 0 ] && $(BIN)/dcam-client auroc $(DEMO_RUN)/scores.jsonl

# The review station on the demo's run (docs/review.md), each step a command a person could type:
# serve the demo's repository (it polls for new versions), open the station, label its queue from
# the demo's folder truth (a script standing in for the operator), fit and apply per-product
# thresholds for a $(REVIEW_FCR) false-call rate as a new calibration version, score again with
# no restart, and print the served TPR/FPR beside the old ones.
review-demo: setup
	test -f $(DEMO_RUN)/scores.jsonl || $(MAKE) demo
	$(BIN)/dcam-serve $(DEMO_REPO) --http-port $(DEMO_HTTP) --grpc-port $(DEMO_GRPC) \
	  --metrics-port $(DEMO_METRICS) --poll-secs 1 & spid=$$!; \
	$(BIN)/dcam-review open $(DEMO_RUN)/scores.jsonl --heatmaps $(DEMO_RUN)/heatmaps \
	  --repository $(DEMO_REPO) --port $(REVIEW_PORT) & rpid=$$!; \
	$(BIN)/python -m dcam.review.truth http://127.0.0.1:$(REVIEW_PORT) && \
	$(BIN)/dcam-review apply $(DEMO_RUN)/scores.jsonl --repository $(DEMO_REPO) --operator demo \
	  --false-call-rate $(REVIEW_FCR) --yes --server 127.0.0.1:$(DEMO_GRPC) && \
	$(BIN)/dcam-client score --dir $(DEMO_DATA) --recursive --glob '*/test/*/*' \
	  --url 127.0.0.1:$(DEMO_GRPC) --output $(DEMO_RUN)/scores-reviewed.jsonl \
	  --category-from-path --force; status=$$?; \
	kill -TERM $$rpid $$spid; wait $$spid; \
	[ $$status -eq 0 ] && echo "before review:" && $(BIN)/dcam-client auroc $(DEMO_RUN)/scores.jsonl && \
	  echo "after review:" && $(BIN)/dcam-client auroc $(DEMO_RUN)/scores-reviewed.jsonl

# The tools that check deploy/ as cluster operators do: checkov in its own virtualenv and the
# CRD validators from npm (tests/test_checkov.py, tests/test_crd_schemas.py). Where they cannot
# be installed those tests skip, saying so; under CI (CI=true) that fails the run instead.
cluster-tools:
	bash .ci/checkov.sh || [ "$${CI:-}" != true ]
	bash .ci/crd-schemas.sh || [ "$${CI:-}" != true ]

# A run writes up to 1.3 GiB under $TMPDIR, removed when every test passes (pyproject.toml).
test: setup cluster-tools
	bash .ci/disk-check.sh 3 "$${TMPDIR:-/tmp}" "the test run"
	$(BIN)/python -m pytest

# The fast lane: ruff and the tests that need no server and no training (tests/conftest.py marks
# those using a trained run or a built repository `training`); `make test` runs them all.
check: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && \
	  $(BIN)/python -m pytest -q -m "not triton and not slow and not training" -p no:cacheprovider

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fix: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench-accuracy: setup
	$(BIN)/python benchmarks/accuracy.py

bench-throughput: setup
	$(BIN)/python benchmarks/throughput.py

bench-transport: setup
	$(BIN)/python benchmarks/client_transport.py

bench-soak: setup
	$(BIN)/python benchmarks/soak.py

bench-line-metrics: setup
	$(BIN)/python benchmarks/line_metrics_cost.py
	$(BIN)/python benchmarks/drift_study.py

smoke-gpu: setup
	$(BIN)/python benchmarks/gpu_check.py --device cpu --smoke --out "$${TMPDIR:-/tmp}/gpu_check_smoke.json"

clean:
	rm -rf runs data .pytest_cache
