# One command per job; each sets up .venv first (a fresh machine needs only python3 and make).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

PORT ?= 8000
PIDFILE := $(VENV)/serve.pid
.PHONY: setup demo serve serve-bg stop test lint test-hapi test-browser test-ops test-synthea bench bench-smoke docs typecheck deploy-tools clean

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

serve-bg: $(STAMP)  ## the HTTP API in the background; returns once /healthz answers (log: .venv/serve.log)
	@if [ -f $(PIDFILE) ] && kill -0 "$$(cat $(PIDFILE))" 2>/dev/null; then \
		echo "already running (pid $$(cat $(PIDFILE))); make stop first"; exit 0; fi; \
	if deploy/wait-healthy http://127.0.0.1:$(PORT)/healthz 0.5 2>/dev/null; then \
		echo "error: something already answers on port $(PORT); try make serve-bg PORT=8001"; exit 1; fi; \
	nohup $(BIN)/eligibility serve --port $(PORT) > $(VENV)/serve.log 2>&1 & echo $$! > $(PIDFILE); \
	if ! deploy/wait-healthy http://127.0.0.1:$(PORT)/healthz 60; then \
		kill "$$(cat $(PIDFILE))" 2>/dev/null; rm -f $(PIDFILE); tail -5 $(VENV)/serve.log; exit 1; fi; \
	echo "serving on http://127.0.0.1:$(PORT) (pid $$(cat $(PIDFILE))); stop with: make stop"

stop:  ## stop the server started by make serve-bg
	@if [ -f $(PIDFILE) ]; then kill "$$(cat $(PIDFILE))" 2>/dev/null || true; rm -f $(PIDFILE); echo stopped; \
	else echo "not running (no $(PIDFILE))"; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## lint + the fast suite (no Java, no network)
	$(BIN)/pytest -q

test-hapi: $(STAMP)  ## integration suite against a real local HAPI FHIR server (Java 17 + Maven)
	deploy/hapi/run-tests

test-ops: $(STAMP)  ## state store, rate limits, replay: real redis-server and uvicorn worker processes
	deploy/redis/run-tests

SYNTHEA_OUT ?= $(HOME)/.cache/cart-eligibility/synthea-population
# DAPA-CKD: 200 adults aged 40-85 (stock modules: CKD, diabetes, hypertension), seed 2; resource
# types no criterion reads are left out to keep generation and screening short.
SYNTHEA_CKD_OUT ?= $(HOME)/.cache/cart-eligibility/synthea-ckd
SYNTHEA_CKD_PATIENTS ?= 200
SYNTHEA_CKD_SKIP ?= Claim,ExplanationOfBenefit,Provenance,DocumentReference,DiagnosticReport,ImagingStudy,SupplyDelivery,Device,CareTeam,CarePlan
# Simulated up to a fixed day: with the seed, the same population on every run (simulated up to
# "now", a later run can move the one qualifying UACR out of its window and the checks drift).
SYNTHEA_CKD_DATE ?= 2026-12-01
test-synthea: $(STAMP)  ## screen Synthea populations: B-ALL (40, custom module), DAPA-CKD (200); Java 17 + Maven
	deploy/synthea/generate $(SYNTHEA_OUT) 40 1
	SYNTHEA_NDJSON=$(SYNTHEA_OUT)/fhir $(BIN)/pytest -q tests/integration/test_screening_synthea.py
	SYNTHEA_LOCAL_MODULES=0 SYNTHEA_EXCLUDED_RESOURCES=$(SYNTHEA_CKD_SKIP) \
		SYNTHEA_REFERENCE_DATE=$(subst -,,$(SYNTHEA_CKD_DATE)) \
		deploy/synthea/generate $(SYNTHEA_CKD_OUT) $(SYNTHEA_CKD_PATIENTS) 2 40-85
	SYNTHEA_CKD_NDJSON=$(SYNTHEA_CKD_OUT)/fhir SYNTHEA_CKD_REPORT=$(SYNTHEA_CKD_OUT)/dapa-summary.json \
		SYNTHEA_CKD_AS_OF=$(SYNTHEA_CKD_DATE) \
		$(BIN)/pytest -q -s tests/integration/test_screening_synthea_dapa.py

test-browser: $(STAMP)  ## the web app in headless Chromium (Debian's chromium; installs it if missing)
	deploy/browser/setup
	$(BIN)/pytest -q -m "browser and not hapi"

# Tools for tests/test_deploy.py (skipped with a reason without them): compose-go, Compose's own
# loader, and kustomize. Needs Go (modules from the Go module proxy); CI runs this before make test.
KUSTOMIZE_VERSION ?= v5.5.0
deploy-tools: $(STAMP)  ## build the Compose and kustomize checkers into .venv/bin (needs Go)
	cd deploy/tools/compose-config && go build -o $(abspath $(BIN))/compose-config .
	GOBIN=$(abspath $(BIN)) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

bench: $(STAMP)  ## benchmarks; tables in bench-results/
	$(BIN)/python -m benchmarks

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke

DOCS_STAMP := $(VENV)/.docs-$(shell sha1sum pyproject.toml | cut -c1-12)
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)  ## the manual: reference tables generated from the code, mkdocs --strict into site/
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet

TYPECHECK_STAMP := $(VENV)/.typecheck-$(shell sha1sum pyproject.toml | cut -c1-12)
$(TYPECHECK_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[typecheck]"
	touch $(TYPECHECK_STAMP)

typecheck: $(TYPECHECK_STAMP)  ## mypy on service/ (config in pyproject.toml); CI needs zero errors
	$(BIN)/mypy

clean:
	rm -rf $(VENV) bench-results site .pytest_cache .ruff_cache .mypy_cache
