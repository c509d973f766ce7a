# hostmesh.sidecar — one entry point for set-up, lint, tests and the demo.
#   make demo   the main job: show the collection working end to end
#   make test   everything CI runs: deps, lint, unit, integration, molecule
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := .build
# The collection as Ansible expects to find it: ansible_collections/hostmesh/sidecar
COLLECTIONS := $(BUILD)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/hostmesh/sidecar
APT_PACKAGES := iptables nftables iproute2 debootstrap systemd-container dnsutils \
	openssh-client rsync curl ca-certificates python3-venv
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLLECTIONS)
export ANSIBLE_NOCOLOR := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help deps apt venv collection lint ruff ansible-lint sanity unit integration molecule test demo demo-capture clean

help:
	@echo "make demo   - run the demo (the main job)"
	@echo "make test   - install what is missing, lint, run every test"

deps: apt venv collection

# Debian packages the tests need on the machine that runs them (root only).
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(BIN)/.installed
$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

collection:
	mkdir -p $(dir $(COLLECTION_LINK))
	ln -sfn $(CURDIR) $(COLLECTION_LINK)

lint: ruff ansible-lint sanity

ruff: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ansible-lint: venv collection
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint --profile production --offline

# ansible-test must run from inside an ansible_collections/<ns>/<name> tree
# (outside any hidden directory). Its sanity venvs bootstrap pip with a script
# it downloads from its own site; ours does the same from ensurepip and PyPI.
ANSIBLE_TEST_PIP := $(HOME)/.ansible/test/cache/get_pip_24_2.py
sanity: venv
	mkdir -p $(dir $(ANSIBLE_TEST_PIP))
	cmp -s tests/sanity/pip_bootstrap.py $(ANSIBLE_TEST_PIP) || cp tests/sanity/pip_bootstrap.py $(ANSIBLE_TEST_PIP)
	tree=$$(mktemp -d); trap 'rm -rf "$$tree"' EXIT; \
	dest=$$tree/ansible_collections/hostmesh/sidecar; mkdir -p $$dest; \
	git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ $$dest/; \
	cd $$dest && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/ansible-test sanity --local --python 3.11 --requirements --color no

# Unit tests need only the virtualenv: no root, no Debian packages.
unit: venv collection
	$(BIN)/pytest -q tests/unit

integration: deps
	$(BIN)/pytest -q tests/integration

# Scenarios run on sandbox hosts (tools/sandbox); the rootfs is built once per run.
MOLECULE_SCENARIOS ?= capture capture_over_ssh tproxy default mesh_tproxy reboot offboard xds fail_mode
molecule: deps
	$(BIN)/python -m tools.sandbox.molecule_suite $(MOLECULE_SCENARIOS)

test: deps lint unit integration molecule

demo: deps
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python demo/run_demo.py

# The capture module alone, on a pair of network namespaces (no VMs).
demo-capture: deps
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python demo/capture_demo.py

clean:
	rm -rf $(BUILD)
