# One command per job; each sets up .venv first (a fresh machine needs only python3 and make).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: setup demo serve test lint test-hapi bench bench-smoke clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)  ## evaluate the six bundled demo patients
	$(BIN)/eligibility demo

serve: $(STAMP)  ## the HTTP API on http://127.0.0.1:8000 (demo store unless ELIGIBILITY_FHIR_BASE_URL is set)
	$(BIN)/eligibility serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## lint + the fast suite (no Java, no network)
	$(BIN)/pytest -q

test-hapi: $(STAMP)  ## integration suite against a real local HAPI FHIR server (Java 17 + Maven)
	deploy/hapi/run-tests

bench: $(STAMP)  ## benchmarks; tables in bench-results/
	$(BIN)/eligibility bench

bench-smoke: $(STAMP)
	$(BIN)/eligibility bench --smoke

clean:
	rm -rf $(VENV) bench-results .pytest_cache .ruff_cache
