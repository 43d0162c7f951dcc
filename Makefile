# The README's two commands: `make study` (the main job) and `make test`. Both bootstrap .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= local

.PHONY: env study test bench clean-venv

env:
	@scripts/bootstrap.sh $(VENV)

# `make study` measures THIS machine every time into results/$(STUDY)/ (gitignored); a second call resumes
# (only runs made on this host at this commit count as done). STUDY = local | convergence | compression | emulated (a preset).
study: env
	@# the report is written even when a run failed (it lists the failures); make still fails then
	$(PY) -m compare run --preset $(STUDY); rc=$$?; $(PY) -m compare report --study $(STUDY) && exit $$rc

test: env
	$(PY) -m pytest

bench: env
	$(PY) benchmarks/sync_overhead.py

clean-venv:
	rm -rf $(VENV)
