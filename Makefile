# The README's commands. Each one sets itself up on a fresh machine (hack/bootstrap.sh).
.PHONY: demo test lint bench protos

demo:            ## the main job on its embedded default: the whole loop on a bundled real trace
	./hack/bootstrap.sh
	.venv/bin/prewarm demo

test:            ## lint, types, layering and the whole test suite against real components
	./hack/test.sh

lint:
	./hack/bootstrap.sh
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports

protos:
	./hack/bootstrap.sh
	./protos/generate.sh
