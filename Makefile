# Two entry points (README): `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on local disk; any other spec may pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhfkit demo $(ARGS)

# pytest exits 5 when it collected no tests: that fails, with the reason said.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --durations=20 $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check rlhfkit tests benchmarks
	$(BIN)/ruff format --check rlhfkit tests benchmarks

clean:
	rm -rf $(VENV) runs
