.PHONY: setup serve test

setup:
	./scripts/setup.sh

serve: setup
	.venv/bin/python -m engine.serve

test: setup
	.venv/bin/python -m pytest -q
