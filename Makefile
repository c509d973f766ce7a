# hostmesh.sidecar — one entry point for set-up, lint, tests and the demo.
#   make demo   the main job: show the collection working end to end
#   make test   everything CI runs: deps, checks (lint, unit, compat), integration, molecule
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := .build
# The collection as Ansible expects to find it: ansible_collections/hostmesh/sidecar
COLLECTIONS := $(BUILD)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/hostmesh/sidecar
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
TARBALL := $(BUILD)/dist/hostmesh-sidecar-$(VERSION).tar.gz
APT_PACKAGES := iptables nftables iproute2 debootstrap systemd-container dnsutils shellcheck \
	openssh-client rsync curl ca-certificates python3-venv prometheus
PIP := pip install -q --disable-pip-version-check
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLLECTIONS)
export ANSIBLE_NOCOLOR := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help deps apt venv collection checks lint ruff ansible-lint sanity unit compat \
	publish changelog changelog-lint docs-lint dist ee-check galaxy-import \
	integration releases molecule test demo demo-capture clean

help:
	@echo "make demo       - run the demo (the main job)"
	@echo "make test       - install what is missing, lint, run every test"
	@echo "make changelog  - render CHANGELOG.md from changelogs/ (after adding a fragment)"

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

# The collection's own needs (requirements.txt) and the pinned lint and test
# tooling (requirements-test.txt, which includes tests/unit/requirements.txt).
venv: $(BIN)/.installed
$(BIN)/.installed: requirements.txt requirements-test.txt tests/unit/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/$(PIP) -r requirements.txt -r requirements-test.txt
	# xds-protos carries its own, older copy of the opentelemetry.proto modules
	# (no scope_spans), and whichever package pip installs last wins the files:
	# put opentelemetry-proto's back, as the OTLP test receiver needs them.
	$(BIN)/$(PIP) --no-deps --force-reinstall $$(grep '^opentelemetry-proto==' requirements-test.txt)
	$(BIN)/python -c "from opentelemetry.proto.trace.v1 import trace_pb2; trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name['scope_spans']"
	touch $@

collection:
	mkdir -p $(dir $(COLLECTION_LINK))
	ln -sfn $(CURDIR) $(COLLECTION_LINK)

lint: ruff ansible-lint sanity publish

ruff: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ansible-lint: venv collection
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint --profile production --offline

# A copy of the checkout's files (tracked, and new ones not ignored) as
# $(1)/ansible_collections/hostmesh/sidecar, for tools that need that layout
# outside any hidden directory, or a scratch tree to write in.
define copy_tree
mkdir -p $(1)/ansible_collections/hostmesh/sidecar; \
git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ $(1)/ansible_collections/hostmesh/sidecar/
endef

# ansible-test sanity with the ansible-test of the venv whose bin is $(1);
# $(2): more arguments (--test NAME ...). ansible-test must run from inside an
# ansible_collections/<ns>/<name> tree. Each ansible-core line keeps its sanity
# venvs under a home of its own (.build/ansible-test-home/<venv>), so that
# `make test` can run the lines side by side: ansible-test names those venvs by
# their pip commands, which two lines may share. Its sanity venvs bootstrap pip with a
# script it downloads from its own site, named by the pip version that
# ansible-core pins; ours (tests/sanity/pip_bootstrap.py) does the same from
# ensurepip and PyPI, put in that script's place.
define ansible_test_sanity
pip=$$($(1)/python -c "import types; from ansible_test._internal.python_requirements import get_venv_packages; \
  print(get_venv_packages(types.SimpleNamespace(version='3.11'))['pip'])"); \
home=$(CURDIR)/$(BUILD)/ansible-test-home/$(notdir $(patsubst %/bin,%,$(1))); \
bootstrap=$$home/.ansible/test/cache/get_pip_$${pip//./_}.py; \
mkdir -p $$(dirname $$bootstrap); cmp -s tests/sanity/pip_bootstrap.py $$bootstrap || cp tests/sanity/pip_bootstrap.py $$bootstrap; \
tree=$$(mktemp -d); trap 'rm -rf "$$tree"' EXIT; \
$(call copy_tree,$$tree); \
cd $$tree/ansible_collections/hostmesh/sidecar && \
  HOME=$$home PIP_CACHE_DIR=$(HOME)/.cache/pip PATH=$(CURDIR)/$(1):$$PATH \
  $(CURDIR)/$(1)/ansible-test sanity --local --python 3.11 --requirements --color no $(2)
endef

sanity: venv
	$(call ansible_test_sanity,$(BIN),)

# Unit tests need only the virtualenv: no root, no Debian packages.
unit: venv collection
	$(BIN)/pytest -q tests/unit

# --- Older ansible-core releases -------------------------------------------
# meta/runtime.yml claims ansible-core 2.16 and later; `make sanity` and
# `make unit` run on the newest (requirements-test.txt), and `make compat` on
# each older line, in a cached venv each with the collection's requirements,
# the unit tests' and that ansible-core. Sanity on 2.16 (the oldest line,
# whose APIs and ansible-test rules differ most) runs every test; on 2.17 and
# 2.18 the tests that load the collection's code and docs with that core.
COMPAT_CORES := 2.16.19 2.17.14 2.18.19
COMPAT_LINES := $(basename $(COMPAT_CORES))
COMPAT_FULL_SANITY := 2.16
COMPAT_SANITY_TESTS := compile import validate-modules ansible-doc yamllint
COMPAT_TARGETS := $(addprefix compat-,$(COMPAT_LINES))
.PHONY: $(COMPAT_TARGETS) $(addprefix compat-unit-,$(COMPAT_LINES)) $(addprefix compat-sanity-,$(COMPAT_LINES))

compat: $(COMPAT_TARGETS)

$(BUILD)/venv-core-%/.installed: requirements.txt tests/unit/requirements.txt
	test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	$(@D)/bin/$(PIP) -r requirements.txt -r tests/unit/requirements.txt "ansible-core==$(filter $*.%,$(COMPAT_CORES))"
	touch $@

# compat-2.16 runs both; `make -k compat` goes on past a failure to show them all.
$(COMPAT_TARGETS): compat-%: compat-unit-% compat-sanity-%

$(addprefix compat-unit-,$(COMPAT_LINES)): compat-unit-%: $(BUILD)/venv-core-%/.installed collection
	$(BUILD)/venv-core-$*/bin/pytest -q -p no:cacheprovider tests/unit

$(addprefix compat-sanity-,$(COMPAT_LINES)): compat-sanity-%: $(BUILD)/venv-core-%/.installed
	$(call ansible_test_sanity,$(BUILD)/venv-core-$*/bin,$(if $(filter $*,$(COMPAT_FULL_SANITY)),,$(addprefix --test ,$(COMPAT_SANITY_TESTS))))

# --- What a published collection is checked with ---------------------------
publish: changelog-lint docs-lint ee-check galaxy-import

# CHANGELOG.md is rendered from changelogs/changelog.yaml (the releases) and
# changelogs/fragments/ (changes not released yet, shown under galaxy.yml's
# version): antsibull-changelog releases them in a scratch copy, so the
# checkout's fragments stay where they are until the real release.
define render_changelog
tree=$$(mktemp -d); trap 'rm -rf "$$tree"' EXIT; \
$(call copy_tree,$$tree); \
src=$$tree/ansible_collections/hostmesh/sidecar; \
( cd $$src && export PATH=$(CURDIR)/$(BIN):$$PATH ANSIBLE_COLLECTIONS_PATH=$$tree; \
  if ls changelogs/fragments/*.y*ml >/dev/null 2>&1; then \
    $(CURDIR)/$(BIN)/antsibull-changelog release --version $(VERSION) >/dev/null; \
  else \
    $(CURDIR)/$(BIN)/antsibull-changelog generate >/dev/null; \
  fi ); \
cp $$src/CHANGELOG.md $(1)
endef

changelog: venv
	$(call render_changelog,CHANGELOG.md)

changelog-lint: venv
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
	mkdir -p $(BUILD)
	$(call render_changelog,$(BUILD)/CHANGELOG.md)
	diff -u CHANGELOG.md $(BUILD)/CHANGELOG.md || { echo "CHANGELOG.md is not what changelogs/ give: run make changelog"; exit 1; }

# The plugins' and roles' documentation as docs.ansible.com would render it.
docs-lint: venv collection
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/antsibull-docs lint-collection-docs --plugin-docs \
	  --validate-collection-refs dependent $(COLLECTION_LINK)

# The tarball users install, built as README says; it must not carry the
# development environment or the checkout-only harness (galaxy.yml build_ignore).
dist: venv
	rm -rf $(dir $(TARBALL))
	$(BIN)/ansible-galaxy collection build --output-path $(dir $(TARBALL))
	tar -tzf $(TARBALL) > $(BUILD)/dist/files.txt
	! grep -E '(^|/)(\.venv|\.build|__pycache__|\.hostmesh-ca)(/|$$)|\.pyc$$|^(extensions/molecule|tests/integration|tools/sandbox|\.ci)/' $(BUILD)/dist/files.txt

# An execution environment gets exactly the controller's Python requirements
# from the installed collection, and no system packages.
EE_PYTHON := jmespath  \# from collection hostmesh.sidecar
ee-check: dist
	rm -rf $(BUILD)/ee && mkdir -p $(BUILD)/ee
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/$(BUILD)/ee/collections \
	  $(BIN)/ansible-galaxy collection install --offline --no-deps -p $(BUILD)/ee/collections $(TARBALL)
	$(BIN)/ansible-builder introspect --sanitize $(BUILD)/ee/collections \
	  --write-pip $(BUILD)/ee/python.txt --write-bindep $(BUILD)/ee/system.txt
	diff -u <(echo "$(EE_PYTHON)") $(BUILD)/ee/python.txt
	! test -s $(BUILD)/ee/system.txt

# Galaxy's own importer, in a venv of its own (its pins differ from ours), on
# the tarball: no error and no warning.
GALAXY_IMPORTER_VENV := $(BUILD)/venv-galaxy-importer
$(GALAXY_IMPORTER_VENV)/.installed: tests/publish/requirements-galaxy-importer.txt
	test -x $(GALAXY_IMPORTER_VENV)/bin/python || $(PYTHON) -m venv $(GALAXY_IMPORTER_VENV)
	$(GALAXY_IMPORTER_VENV)/bin/$(PIP) -r $<
	touch $@

galaxy-import: dist $(GALAXY_IMPORTER_VENV)/.installed
	rm -rf $(BUILD)/galaxy-import && mkdir -p $(BUILD)/galaxy-import
	cd $(BUILD)/galaxy-import && \
	  PATH=$(CURDIR)/$(GALAXY_IMPORTER_VENV)/bin:$$PATH GALAXY_IMPORTER_CONFIG=$(CURDIR)/tests/publish/galaxy-importer.cfg \
	  $(CURDIR)/$(GALAXY_IMPORTER_VENV)/bin/python -m galaxy_importer.main $(CURDIR)/$(TARBALL) 2>&1 | tee import.log
	! grep -E '^(WARNING|ERROR)' $(BUILD)/galaxy-import/import.log

# --- Tests that need root ----------------------------------------------------
integration: deps
	$(BIN)/pytest -q --durations=20 tests/integration --ignore=tests/integration/releases

# The capture module's packet tests inside one sandbox host per Debian release,
# with that release's own Python, iptables and nft (about 10 to 17 minutes):
# kept out of `make test` for CI's time; run it when the capture rules change.
releases: deps
	$(BIN)/pytest -q tests/integration/releases

# Scenarios run on sandbox hosts (tools/sandbox); the rootfs is built once per run.
# Left out of make test: reboot and offboard (platforms reboots and offboards a
# host of each release; run them with MOLECULE_SCENARIOS="reboot offboard").
MOLECULE_SCENARIOS ?= capture capture_over_ssh tproxy default mesh_tproxy xds fail_mode platforms mesh_policy capture_heal mesh_resilience rolling_upgrade
molecule: deps
	$(BIN)/python -m tools.sandbox.molecule_suite $(MOLECULE_SCENARIOS)

# The checks that need no root and no hosts are one CPU each (ansible-test,
# pytest): they run two at a time, each one's output printed whole when it ends,
# the longest first.
checks: compat-sanity-2.16 sanity compat-unit-2.16 unit ansible-lint publish lint compat

test: deps
	$(MAKE) -j2 --output-sync=target checks
	$(MAKE) integration
	$(MAKE) molecule

demo: deps
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python demo/run_demo.py

# The capture module alone, on a pair of network namespaces (no VMs).
demo-capture: deps
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python demo/capture_demo.py

clean:
	rm -rf $(BUILD)
