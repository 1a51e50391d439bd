.PHONY: setup serve lint test

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/python -m engine.serve

# ruff and mypy with pyproject.toml's settings, at the versions the test extra pins
lint: setup
	.venv/bin/python -m ruff check .
	.venv/bin/python -m mypy

test: setup
	.venv/bin/python -m pytest -q
