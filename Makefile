# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv when missing (torch==2.13.0 first: a plain `torch` would pull a
# multi-GB CUDA build) and is quick when it already exists.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gantry-installed
PROTOS := $(wildcard protos/gantry/v1/*.proto)

.PHONY: venv test lint typecheck pytest demo protos clean system-tools node-client netbed test-faults

# Programs the suite drives for real, as PROGRAM:DEBIAN-PACKAGE: tmux (the console through
# a real pty), OpenSSH's sshd and ssh-keygen (`gantry up` through a real SSH server) and
# Chromium (the load tester's HTML reports, opened in a real headless browser), Node.js
# and npm (the inference contract's Node client, tests/clients/node) and iproute2 (the
# namespaced test bed of tests/netbed).
# sshd is named by its path: /usr/sbin is not on every PATH. Installed with Debian's apt
# (one update) only when missing.
SYSTEM_TOOLS := tmux:tmux /usr/sbin/sshd:openssh-server ssh-keygen:openssh-client \
	chromium:chromium node:nodejs npm:npm ip:iproute2 bridge:iproute2 ss:iproute2 nft:nftables

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy console agent tests bench

system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
		command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq$$missing; \
	fi

NODE_CLIENT := tests/clients/node
# The Node client of the inference contract (tests/test_serve_contract_node.py): its
# packages, pinned by package-lock.json, installed once.
$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund

node-client: system-tools $(NODE_CLIENT)/node_modules/.package-lock.json

pytest: venv system-tools node-client
	$(VENV)/bin/pytest -q

# mypy (about 40 s of one core) runs beside pytest, whose processes leave a core idle
# much of the time; its output follows pytest's, and either failing fails the target.
test: lint node-client system-tools
	@$(MAKE) --no-print-directory typecheck > .typecheck.log 2>&1 & typecheck=$$!; \
	$(MAKE) --no-print-directory pytest; code=$$?; \
	wait $$typecheck || code=1; cat .typecheck.log; rm -f .typecheck.log; exit $$code

# The slow fault scenarios of the namespaced test bed (root; minutes): slow and lossy links
# under a real DeepSpeed job. bench/faults.py runs them too, with the figures.
test-faults: venv system-tools
	$(VENV)/bin/pytest -q -m slow_scenario tests/test_fault_slow_link.py tests/test_fault_lossy_link.py

# A 3-host namespaced test bed to try by hand (root; `python -m tests.netbed N` for N
# hosts): Ctrl-C tears it down.
netbed: venv system-tools
	$(PY) -m tests.netbed

demo: venv
	$(VENV)/bin/python -m console.demo

protos: venv
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos $(PROTOS)

clean:
	rm -rf $(VENV) .gantry .mypy_cache .ruff_cache .pytest_cache
