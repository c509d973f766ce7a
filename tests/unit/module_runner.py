"""Run one of the collection's modules the way Ansible does, in a fresh Python."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "plugins" / "modules"
COLLECTIONS = ROOT / ".build" / "collections"


def run_module(name: str, args: dict, workdir: Path, check_mode: bool = False) -> dict:
    """Run plugins/modules/<name>.py with a JSON args file as argv[1]; its result, plus "rc"."""
    module_args = dict(args)
    if check_mode:
        module_args["_ansible_check_mode"] = True
    args_file = workdir / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    proc = subprocess.run(
        [sys.executable, str(MODULES / (name + ".py")), str(args_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.stdout, proc.stderr
    result = json.loads(proc.stdout)
    result["rc"] = proc.returncode
    return result


def run_playbook(workdir: Path, inventory: Path, playbook: Path, *args: str, environ=None):
    """Run ansible-playbook with the collection; returns (process, {host: msg of its last debug task}).

    environ, when given, replaces the process environment Ansible starts from."""
    tree = workdir / "tree"
    env = dict(
        os.environ if environ is None else environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
        ANSIBLE_CALLBACK_TREE_DIR=str(tree),
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    shown = {}
    if tree.is_dir():
        shown = {path.name: json.loads(path.read_text()).get("msg") for path in tree.iterdir()}
    return proc, shown
