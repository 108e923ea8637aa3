# batchsent: every target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: a plain `pip install torch` would pull a multi-GB CUDA build.
# On a GPU machine, run: make TORCH_SPEC=torch score ...
TORCH_SPEC ?= torch==2.13.0

INPUT ?= data/sample/reviews.csv
COLUMN ?= text
OUTPUT ?=
MODEL ?=
OVERWRITE ?=
SCORE_ARGS = $(INPUT) --column $(COLUMN) $(if $(OUTPUT),--output $(OUTPUT)) $(if $(MODEL),--model $(MODEL)) $(if $(OVERWRITE),--overwrite)

.DEFAULT_GOAL := help
.PHONY: help score report info test test-fast check test-avx2 bench bench-startup bench-ct2 bench-openvino bench-onnx-variants bench-tune bench-ray bench-ray-cache bench-model-key bench-cache bench-storage bench-zero-shot bench-models bench-e2e bench-avx2 bench-sweep bench-memory bench-gpu bench-report clean

help: ## List the targets
	@echo "Usage: make <target> [VAR=value]"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-13s %s\n", $$1, $$2}'
	@echo "Variables: INPUT=$(INPUT) COLUMN=$(COLUMN) OUTPUT=<input>.scored.<suffix> MODEL=<hub id or dir> OVERWRITE=1"

# The runtime only: what `make score` and `make report` need.
$(BIN)/batchsent: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	@touch $@

# The test and benchmark extras on top (pytest, the tokenizer fixture, ONNX Runtime, Ray).
TEST_DEPS := $(VENV)/.test-deps
$(TEST_DEPS): $(BIN)/batchsent
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

score: $(BIN)/batchsent ## Score INPUT (default: the shipped sample) into OUTPUT
	$(BIN)/batchsent score $(SCORE_ARGS)

report: $(BIN)/batchsent ## HTML report of the scored INPUT (REPORT=<scored stem>.report.html, BY=column, GOLD=column)
	$(BIN)/batchsent report $(if $(OUTPUT),$(OUTPUT),$(basename $(INPUT)).scored$(suffix $(INPUT))) $(if $(REPORT),-o $(REPORT)) $(if $(BY),--by $(BY)) $(if $(GOLD),--gold $(GOLD))

info: $(BIN)/batchsent ## This machine's CPU features, builds, GPUs and the variants it can run
	$(BIN)/batchsent info

test: $(TEST_DEPS) ## Run the test suite
	$(BIN)/python -m pytest -q

test-fast: $(TEST_DEPS) ## The suite less clusters, real models and whole-process runs (marked slow): a few minutes
	$(BIN)/python -m pytest -q -m "not slow"

# The lint, format and type gate (pinned tools: their rules change between versions).
CHECK_DEPS := $(VENV)/.check-deps
$(CHECK_DEPS): $(TEST_DEPS)
	$(BIN)/pip install --quiet -e ".[test,check]"
	@touch $@

check: $(CHECK_DEPS) ## Lint (ruff), format (ruff format --check) and types (mypy) of the package, tests and benchmarks
	$(BIN)/ruff check batchsent tests benchmarks
	$(BIN)/ruff format --check batchsent tests benchmarks
	$(BIN)/mypy

# An AVX2-only CPU as far as batchsent and its libraries can tell, on an x86 CPU with more:
# batchsent's CPU flags, and torch's, oneDNN's, MKL's and fbgemm's kernels limited to AVX2.
AS_AVX2 := BATCHSENT_CPU_FLAGS="fpu sse4_2 avx avx2 fma f16c" ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
	MKL_ENABLE_INSTRUCTIONS=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2

test-avx2: $(TEST_DEPS) ## Run the test suite as an AVX2-only CPU would (x86 with AVX2 or more)
	$(AS_AVX2) $(BIN)/python -m pytest -q

# The benchmarks' optional anchor (CTranslate2) on top of the test extras.
BENCH_DEPS := $(VENV)/.bench-deps
$(BENCH_DEPS): $(TEST_DEPS)
	$(BIN)/pip install --quiet -e ".[test,ctranslate2]"
	@touch $@

bench: $(BENCH_DEPS) ## Throughput vs the transformers pipeline, the CTranslate2 anchor, then bench-cache, -storage, -zero-shot and -models (benchmarks/results/)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ctranslate2_anchor.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/cache.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/storage.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/zero_shot.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/models.py

OPENVINO_DEPS := $(VENV)/.openvino-deps
$(OPENVINO_DEPS): $(TEST_DEPS)
	$(BIN)/pip install --quiet -e ".[test,openvino]"
	@touch $@

bench-openvino: $(OPENVINO_DEPS) ## OpenVINO float32 and NNCF int8 vs batchsent's float32 and ONNX variants: same batches, rows/s, agreement, share of the CPU's GEMM peak
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/openvino_anchor.py $(BENCH_ARGS)

bench-ct2: $(BENCH_DEPS) ## CTranslate2 float32/int8 vs batchsent's float32, int8 and tuned fast: same batches, model time
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ctranslate2_anchor.py $(BENCH_ARGS)

bench-onnx-variants: $(TEST_DEPS) ## What --backend onnx runs (attention fused, int8 per channel) against the plain export it replaced, each against torch float32: rows/s and agreement
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/onnx_variants.py $(BENCH_ARGS)

bench-tune: $(TEST_DEPS) ## batchsent tune on MiniLM (../shared) and the DistilBERT shape: every variant, rows/s and agreement
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/tune.py $(BENCH_ARGS)

bench-ray: $(TEST_DEPS) ## The Ray engine (1 and 2 workers) against the local engine: 60,000 short rows, whole processes
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ray_scale.py $(BENCH_ARGS)

bench-ray-cache: $(TEST_DEPS) ## The shared cache of --engine ray alone: adding 1,000,000 entries, looking blocks up cold and warm (folder and moto S3)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/shared_cache.py --s3 $(BENCH_ARGS)

bench-model-key: $(TEST_DEPS) ## Keying a model folder by content: first hash and remembered hash of the DistilBERT-sized folder
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/model_key.py $(BENCH_ARGS)

bench-cache: $(TEST_DEPS) ## --cache: second nights with 1% and 0% new rows, peak RSS with a 10M-entry cache
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/cache.py $(BENCH_ARGS)

bench-storage: $(TEST_DEPS) ## A 1 GiB CSV from local disk vs a loopback S3 server; per-file cost of folder runs
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/storage.py $(BENCH_ARGS)

bench-zero-shot: $(TEST_DEPS) ## --labels: the Classifier vs the zero-shot pipeline, 5 labels, review mix
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/zero_shot.py $(BENCH_ARGS)

bench-models: $(TEST_DEPS) ## 2 and 3 models sharing a tokenizer: one pass vs one run per model, whole processes
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/models.py $(BENCH_ARGS)

bench-sweep: $(TEST_DEPS) ## Rows/s per token budget, to pick the default
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py --sweep 512,1024,2048,4096,8192,16384 --out benchmarks/results/sweep.json

bench-memory: $(TEST_DEPS) ## Peak RSS of scoring 100k and 1M short rows
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/memory.py $(BENCH_ARGS)

bench-gpu: $(TEST_DEPS) ## On a CUDA GPU: whole-process runs on 50k rows at fp16/fp32, GPU busy %, agreement, budgets, several models
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/e2e.py --device cuda --dtype float16 --rows 50000 --threads 8 --out benchmarks/results/e2e-gpu-fp16.json
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/e2e.py --device cuda --dtype float32 --rows 50000 --threads 8 --out benchmarks/results/e2e-gpu-fp32.json
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/gpu.py $(BENCH_ARGS)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/models.py --device cuda --rows 20000 --counts 2,3 --threads 8 --out benchmarks/results/models-gpu.json

bench-e2e: $(TEST_DEPS) ## Whole processes, CSV in and out: batchsent vs the pipeline at bs=1, 32 and 32 sorted, 10 and 400 rows
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/e2e.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/tables.py

bench-startup: $(TEST_DEPS) ## Where a 10-row run's time goes: imports, tokenizer, weights, first batch, write
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/startup.py $(BENCH_ARGS)

bench-avx2: $(TEST_DEPS) ## make bench as an AVX2-only CPU, on an AVX-512 one (see AS_AVX2)
	$(AS_AVX2) HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py --out benchmarks/results/bench-avx2.json $(BENCH_ARGS)

bench-report: $(TEST_DEPS) ## Peak RSS of reporting 1M and 10M scored rows
	$(BIN)/python benchmarks/report_memory.py $(BENCH_ARGS)

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
