# Two commands do all set-up: `make demo` runs the offline demo DAG, `make test` the tests.
TARGET ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv demo test lint fast-test dvc-yaml bench clean system-packages

$(VENV)/.installed-$(TARGET): pyproject.toml envs/$(TARGET).txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r envs/$(TARGET).txt
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed-$(TARGET)

# Every family's demo targets and tables come from the family registry (fresnel.registry).
demo: venv
	$(VENV)/bin/snakemake --profile $(TARGET) $$($(VENV)/bin/fresnel demo-targets)
	@$(VENV)/bin/fresnel demo-tables

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/fresnel lint-workflow

# The Slurm and SSH tests start real daemons from Debian's packages (tests/slurm_cluster.py,
# tests/sshd_server.py); as root, `make test` installs the missing ones.
SYSTEM_PACKAGES := slurm-wlm slurmdbd munge mariadb-server openssh-server

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "the Slurm and SSH tests need: sudo apt-get install $$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# One pytest worker per core, plus one: the end-to-end modules wait on subprocesses, Slurm
# and DVC, and with one worker per core 14% of the CPU time went idle (2-core VM). Modules
# with end-to-end runs start first, each module on one worker; torch threads are split
# between the workers (tests/conftest.py).
test: lint system-packages
	$(VENV)/bin/fresnel dvc-yaml --check
	$(VENV)/bin/pytest -q -n $$(( $$(nproc) + 1 )) --dist loadfile

fast-test: venv
	$(VENV)/bin/pytest -q -m "not slow"

dvc-yaml: venv
	$(VENV)/bin/fresnel dvc-yaml

bench: venv
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf .snakemake data results models logs
