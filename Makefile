# The lead platform. `make run` brings the whole system up; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
INFRA = eval "$$(deploy/local/infra.sh)"

.PHONY: help run test lint bench infra deploy-check

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

run: ## Run all eight services and the console locally (installs/starts Postgres and NATS when missing)
	@deploy/local/run.sh

test: ## Run every test against real Postgres and NATS (and the Python tools of tests/requirements.txt)
	@eval "$$(deploy/local/infra.sh --test-venv)"; cargo build --workspace --all-targets && \
	if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi
	@tests/browser/run.sh

lint: ## Check formatting, run clippy with warnings denied, and check dependencies against deny.toml
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	@cargo deny --version >/dev/null 2>&1 || cargo install --locked cargo-deny
	cargo deny --log-level error check bans licenses sources

bench: ## Run the benchmarks and print figures for BENCHMARKS.md
	@$(INFRA); cargo build --release -p leads-tests --bin bench -p leads --bin leads && \
	LEADS_BIN="$${CARGO_TARGET_DIR:-target}/release/leads" "$${CARGO_TARGET_DIR:-target}/release/bench" $(BENCH_ARGS)

infra: ## Only make sure Postgres and NATS are up, and print their URLs
	@deploy/local/infra.sh

deploy-check: ## Check the Dockerfile, compose file, Kubernetes manifests, secrets, alerts and dashboard offline, closed by default
	@deploy/check.sh
