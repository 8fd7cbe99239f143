# The two commands a new user needs (see README):
#   make demo   installs everything and runs the main job
#   make test   installs everything, lints (ruff), type-checks (mypy) and runs the test suite (CI runs this)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(PY) $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/metanode demo

test: $(STAMP)
	$(BIN)/ruff check node tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 -n 2 --dist loadgroup

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
