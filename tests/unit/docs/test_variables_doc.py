"""docs/variables.md is generated from the roles' argument specs and must match them.

After changing a role's meta/argument_specs.yml, regenerate the page with
``python3 -m tools.variables_doc``.
"""

import textwrap
from pathlib import Path

import pytest

from tools.variables_doc import COMMAND, OUTPUT, convert_markup, main, render

ROOT = Path(__file__).resolve().parents[3]

SPEC = textwrap.dedent(
    """\
    ---
    argument_specs:
      main:
        short_description: Install C(thing) safely.
        options:
          demo_state:
            description: V(present) installs; V(absent) removes O(demo_path).
            type: str
            choices: [present, absent]
            default: present
          demo_path:
            description:
              - Where it goes, for example C(/opt/a|b).
              - Used with O(demo_state=present).
            type: path
            default: ""
          demo_ports:
            description: I(Extra) ports.
            type: list
            elements: int
            default: [22, 15020]
          demo_token:
            description: A required value.
            type: str
            required: true
          demo_listen:
            description: Where it listens.
            type: dict
            default: {}
            options:
              port:
                description: Its port.
                type: int
                default: 8080
    """
)


def test_docs_variables_md_is_up_to_date():
    page = ROOT / OUTPUT
    assert page.exists(), f"{OUTPUT} is missing; generate it with `{COMMAND}`"
    assert page.read_text(encoding="utf-8") == render(ROOT), (
        f"{OUTPUT} is out of date with roles/*/meta/argument_specs.yml; regenerate it with `{COMMAND}`"
    )


def test_every_role_and_variable_is_listed():
    page = render(ROOT)
    for spec in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        assert f"## {spec.parent.parent.name}\n" in page
    assert "| `hostmesh_capture_fail_mode` | str | `closed` | `closed`, `open` |" in page
    assert "| `hostmesh_capture_inbound_ports_exclude` | list of int | `[22]` |" in page
    # The module's list follows from it and the port contract, whose keys are listed one by one.
    assert "so the default gives Istio's `[22, 15090, 15021, 15020]`" in page
    for key, port in (("outbound", 15001), ("inbound", 15006), ("status", 15020), ("prometheus", 15090)):
        assert f"| `hostmesh_ports.{key}` | int | `{port}` |" in page


@pytest.mark.parametrize(
    ("markup", "markdown"),
    [
        ("O(hostmesh_mode)", "`hostmesh_mode`"),
        ("O(hostmesh_mode=xds)", "`hostmesh_mode=xds`"),
        ("V(standalone) or V(xds)", "`standalone` or `xds`"),
        ("C(envoy --version) and I(here)", "`envoy --version` and `here`"),
        ("the module's O(hostmesh.sidecar.traffic_capture#module:mode)", "the module's `mode`"),
        ("M(hostmesh.sidecar.traffic_capture)", "`hostmesh.sidecar.traffic_capture`"),
        ("RV(rules) and E(HOME)", "`rules` and `HOME`"),
        ("B(never)", "**never**"),
        ("U(https://example.org/)", "<https://example.org/>"),
        ("L(Istio, https://istio.io/)", "[Istio](https://istio.io/)"),
        ("C(a`b)", "``a`b``"),
        ("plain (text) stays", "plain (text) stays"),
        ("SPIFFE ID (URI SAN)", "SPIFFE ID (URI SAN)"),
    ],
)
def test_markup_becomes_markdown(markup, markdown):
    assert convert_markup(markup) == markdown


def test_small_spec_renders_as_a_table(tmp_path):
    (tmp_path / "roles" / "demo" / "meta").mkdir(parents=True)
    (tmp_path / "roles" / "demo" / "meta" / "argument_specs.yml").write_text(SPEC)
    page = render(tmp_path)
    assert "## demo\n\n`hostmesh.sidecar.demo`: Install `thing` safely.\n" in page
    rows = [line for line in page.splitlines() if line.startswith("| `demo_")]
    assert rows == [
        "| `demo_state` | str | `present` | `present`, `absent` | `present` installs; `absent` removes `demo_path`. |",
        '| `demo_path` | path | `""` |  | Where it goes, for example `/opt/a\\|b`. Used with `demo_state=present`. |',
        "| `demo_ports` | list of int | `[22, 15020]` |  | `Extra` ports. |",
        "| `demo_token` | str | required |  | A required value. |",
        "| `demo_listen` | dict | `{}` |  | Where it listens. |",
        "| `demo_listen.port` | int | `8080` |  | Its port. |",
    ]


def test_check_fails_naming_the_file_until_it_is_written(tmp_path, capsys):
    (tmp_path / "roles" / "demo" / "meta").mkdir(parents=True)
    (tmp_path / "roles" / "demo" / "meta" / "argument_specs.yml").write_text(SPEC)
    (tmp_path / "docs").mkdir()

    assert main(["--check"], root=tmp_path) == 1
    assert str(OUTPUT) in capsys.readouterr().err
    assert not (tmp_path / OUTPUT).exists()

    assert main([], root=tmp_path) == 0
    assert main(["--check"], root=tmp_path) == 0

    (tmp_path / OUTPUT).write_text("# edited by hand\n")
    assert main(["--check"], root=tmp_path) == 1
    assert str(OUTPUT) in capsys.readouterr().err
