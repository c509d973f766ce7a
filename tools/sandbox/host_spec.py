"""What a sandbox host is asked to be: its name, Debian suite and profiles.

Written ``NAME[:SUITE][+PROFILE...]`` on the command line and in molecule's
create step: ``web``, ``web:trixie``, ``dns+resolved``,
``dns:bullseye+resolved``. A spec that names no suite or no profile takes
the defaults given with it (``--suite``, ``--profile``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tools.sandbox import suites

# At most 12 characters: the host's veth is "h-NAME", and a link name has at most 15.
HOST_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,10}[a-z0-9])?$")
_SPEC = re.compile(r"^(?P<name>[^:+]+)(?::(?P<suite>[^:+]+))?(?P<profiles>(?:\+[^:+]+)*)$")


class HostSpecError(ValueError):
    """A host spec that does not parse or names an unknown suite or profile."""


@dataclass(frozen=True)
class HostSpec:
    name: str
    suite: str = suites.DEFAULT_SUITE
    profiles: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}:{self.suite}" + "".join(f"+{p}" for p in self.profiles)


def parse(text: str, suite: str = suites.DEFAULT_SUITE, profiles: Sequence[str] = ()) -> HostSpec:
    """One host spec; the defaults apply where the spec names no suite or no profile."""
    match = _SPEC.match(text.strip())
    if not match or not HOST_NAME.match(match["name"]):
        raise HostSpecError(
            f"host {text!r} is invalid: write NAME[:SUITE][+PROFILE...], NAME a lowercase letter "
            f"then up to 11 lowercase letters, digits or inner dashes, SUITE one of {', '.join(suites.SUITES)}, "
            f"PROFILE one of {', '.join(suites.PROFILES)}"
        )
    own_profiles = tuple(p for p in match["profiles"].split("+") if p)
    spec = HostSpec(
        match["name"],
        match["suite"] or suite,
        tuple(sorted(set(own_profiles or profiles))),
    )
    try:
        suites.suite(spec.suite)
        suites.profiles(spec.profiles)
    except suites.UnknownSuiteError as exc:
        raise HostSpecError(f"host {text!r}: {exc}") from None
    return spec


def parse_all(
    texts: Iterable[str | HostSpec], suite: str = suites.DEFAULT_SUITE, profiles: Sequence[str] = ()
) -> list[HostSpec]:
    """Specs for one sandbox: at least one, with distinct names."""
    specs = [t if isinstance(t, HostSpec) else parse(t, suite, profiles) for t in texts]
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names):
        raise HostSpecError(f"hosts {names!r} are invalid: give 1 or more hosts with distinct names")
    return specs
