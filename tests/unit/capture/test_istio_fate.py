"""traffic_capture decides packets as Istio does: case by case with Istio's own test cases, by fate.

Each case of Istio's capture tests (istio_cases/cases/) names the options that
express it and carries the fate Istio's rules give every packet of the grid
(recorded by tools/istio_fate_record.py). Here our module's rules for the same
options go through the same evaluator, and every fate must equal Istio's, except
where istio_cases/differences.yaml lists the packet: deliberate differences, and
pending ones, the module's to-do list. The list is exact, by count: a new
difference fails, and so does a pending one that starts to agree, so the list
shrinks as the module is fixed.
"""

import functools

import pytest
from module_rules import module_option_names, module_rules
from packet_fate import PolicyRoute, decide, parse_fate, parse_rules
from packet_fate.cases import load_cases, load_differences, load_host, load_unreached
from packet_fate.netfilter import rule_at, rule_keys

CASES = {case.name: case for case in load_cases()}
HOST = load_host()
DIFFERENCES = load_differences()
UNREACHED = load_unreached()
FAMILIES = ("ipv4", "ipv6")


@functools.cache
def our_rules(name):
    """Our module's rules for a case: ({family: Ruleset}, the host with our policy routing)."""
    case = CASES[name]
    rulesets, routes = {}, []
    for family in FAMILIES:
        text, ip_rules = module_rules(case.options, family, case.nameservers, HOST.group_id)
        rulesets[family] = parse_rules(text)
        routes += [PolicyRoute(family, fwmark, table) for fwmark, table in ip_rules]
    return rulesets, HOST.with_policy_routes(routes)


@functools.cache
def our_decisions(name):
    rulesets, host = our_rules(name)
    return {packet.text: decide(rulesets, host, packet) for packet in CASES[name].packets}


def differing(name):
    """[(packet text, Istio's fate, our decision)] where the two disagree, in grid order."""
    case = CASES[name]
    decisions = our_decisions(name)
    return [
        (packet.text, case.istio_fates[packet.text], decisions[packet.text])
        for packet in case.packets
        if str(decisions[packet.text].fate) != case.istio_fates[packet.text]
    ]


def explain(name):
    """Differing packets attributed to the first entry covering each: ({entry index: [...]}, [unexplained])."""
    explained, unexplained = {}, []
    for text, istio, decision in differing(name):
        ours = str(decision.fate)
        for index, entry in enumerate(DIFFERENCES):
            if entry.covers(name, text, istio, ours):
                explained.setdefault(index, []).append(text)
                break
        else:
            unexplained.append((text, istio, decision))
    return explained, unexplained


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_fates_cover_the_grid_exactly(name):
    case = CASES[name]
    assert case.istio_fates is not None, "%s: no fates recorded; run tools/istio_fate_record.py" % name
    texts = [packet.text for packet in case.packets]
    assert sorted(case.istio_fates) == sorted(texts), (
        "%s: the grid and the recorded fates differ; re-run tools/istio_fate_record.py" % name
    )
    for fate in case.istio_fates.values():
        parse_fate(fate)  # canonical, readable fates only


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_options_exist_and_planned_ones_do_not_yet(name):
    case = CASES[name]
    known = module_option_names()
    assert not set(case.options) - known, "%s: options the module does not have: %s" % (
        name,
        sorted(set(case.options) - known),
    )
    arrived = sorted(set(case.planned_options) & known)
    assert not arrived, (
        "%s: the module has %s now: move it from planned_options to options, and update "
        "differences.yaml with what the comparison then shows" % (name, arrived)
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_fates_match_istio_except_as_listed(name):
    explained, unexplained = explain(name)
    problems = []
    for text, istio, decision in unexplained:
        problems.append(
            "%s\n    Istio: %s\n    ours:  %s\n    our rules on the way:\n%s"
            % (text, istio, decision.fate, decision.explain().replace("\n  ", "\n      ").replace("  ", "      ", 1))
        )
    for index, entry in enumerate(DIFFERENCES):
        listed = entry.cases.get(name)
        found = explained.get(index, [])
        if listed is None or listed == len(found):
            continue
        if len(found) < listed and entry.kind == "pending":
            change = "fewer than listed: the module now agrees with Istio on some; lower the count (0: drop the case)"
        elif len(found) < listed:
            change = "fewer than listed: a deliberate difference disappeared; find out why"
        else:
            change = "more than listed: a new difference (a regression?) falls under this entry"
        problems.append(
            "%s explains %d packet(s) here, differences.yaml says %d (%s): %s"
            % (entry.label(), len(found), listed, change, found)
        )
    assert not problems, "%s: decided otherwise than Istio, unlike differences.yaml says:\n%s" % (
        name,
        "\n".join(problems),
    )


def test_difference_entries_name_real_cases_and_planned_options():
    for entry in DIFFERENCES:
        for name, count in entry.cases.items():
            assert name in CASES, "%s names no case %r" % (entry.label(), name)
            assert isinstance(count, int) and count > 0, "%s: %s needs a positive count" % (entry.label(), name)
            if entry.option:
                assert entry.option in CASES[name].planned_options, "%s: case %s does not plan %s" % (
                    entry.label(),
                    name,
                    entry.option,
                )
        assert entry.kind == "pending" or entry.option is None, "a deliberate difference waits for no option"


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_grid_reaches_every_rule_of_ours(name):
    """A rule of ours no grid packet matches is a rule this comparison does not check."""
    rulesets, _host = our_rules(name)
    decisions = our_decisions(name)
    hit = {(packet.family, key) for packet in CASES[name].packets for key in decisions[packet.text].hits}
    explained, missed = {}, []
    for family in FAMILIES:
        for key in rule_keys(rulesets[family]):
            if (family, key) in hit:
                continue
            rule = "%s %s %s: %s" % (family, *key[:2], rule_at(rulesets[family], key).text)
            index = next((i for i, entry in enumerate(UNREACHED) if entry.covers(name, rule)), None)
            if index is None:
                missed.append(rule)
            else:
                explained.setdefault(index, []).append(rule)
    problems = ["no grid packet matches " + rule for rule in missed]
    for index, entry in enumerate(UNREACHED):
        found, listed = explained.get(index, []), entry.cases.get(name)
        if listed is not None and listed != len(found):
            problems.append(
                "%s explains %d rule(s) here, differences.yaml says %d: %s" % (entry.label(), len(found), listed, found)
            )
    assert not problems, "%s:\n  %s" % (name, "\n  ".join(problems))


def test_unreached_entries_name_real_cases():
    for entry in UNREACHED:
        for name, count in entry.cases.items():
            assert name in CASES and isinstance(count, int) and count > 0, "%s: %s: %r" % (entry.label(), name, count)
