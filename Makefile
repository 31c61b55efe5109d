# Two commands do all set-up: `make demo` runs the offline demo DAG, `make test` the tests.
TARGET ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv demo test lint fast-test dvc-yaml bench clean

$(VENV)/.installed-$(TARGET): pyproject.toml envs/$(TARGET).txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r envs/$(TARGET).txt
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed-$(TARGET)

DEMO_TARGETS := results/decoder_exp2.onnx results/decoder_exp2_eval \
	results/pbr_student.mlpackage results/pbr_student.onnx results/pbr_eval

demo: venv
	$(VENV)/bin/snakemake --profile $(TARGET) $(DEMO_TARGETS)
	@cat results/decoder_exp2_eval/table.md results/pbr_eval/table.md

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/fresnel lint-workflow

test: lint
	$(VENV)/bin/fresnel dvc-yaml --check
	$(VENV)/bin/pytest -q

fast-test: venv
	$(VENV)/bin/pytest -q -m "not slow"

dvc-yaml: venv
	$(VENV)/bin/fresnel dvc-yaml

bench: venv
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf .snakemake data results models logs
