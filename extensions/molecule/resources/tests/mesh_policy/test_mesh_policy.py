"""Who may call whom, and seeing every call: server allows client-a only, mesh default deny.

server offers web (http, 8080: GET and HEAD under / for client-a) and db (tcp,
9000: client-a's SPIFFE ID). client-b has a mesh certificate but no rule; prom
is not in the mesh at all. Counters are compared before and after each test's
own calls, so what ran before does not matter.
"""

from __future__ import annotations

import json
import re
import time

from sandbox_hosts import address_of

WEB, DB = 8080, 9000
CLIENT_A_ID = "spiffe://cluster.local/ns/default/sa/client-a"
CLIENT_B_ID = "spiffe://cluster.local/ns/default/sa/client-b"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
# What issue 13 asks of every access-log line.
LOG_FIELDS = (
    "start_time",
    "direction",
    "service",
    "peer_spiffe_id",
    "upstream_host",
    "response_code",
    "response_flags",
    "duration_ms",
    "bytes_received",
    "bytes_sent",
)


def http_status(host, url: str, method: str = "GET") -> str:
    return host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' -X {method} --max-time 10 {url}")


def db_call(host, server, message: str):
    return host.run(f"python3 /usr/local/lib/tcp_echo.py call {address_of(server)} {DB} {message}")


def metrics(host) -> str:
    return host.check_output("curl -sf --max-time 10 http://127.0.0.1:15020/stats/prometheus")


def sample(text: str, name: str, **labels) -> float:
    """One sample's value from Prometheus text (0 when the series is not there yet)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _sep, value = line.rpartition(" ")
        if series == name or (
            series.startswith(name + "{") and sorted(series[len(name) + 1 : -1].split(",")) == sorted(wanted.split(","))
        ):
            return float(value)
    return 0.0


def istio_requests(text: str, service: str, code: int) -> float:
    """istio_requests_total of the destination's reporter for one service and response code, all callers."""
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("istio_requests_total{")
            and 'reporter="destination"' in line
            and f'destination_service_name="{service}"' in line
            and f'response_code="{code}"' in line
        ):
            total += float(line.rpartition(" ")[2])
    return total


def access_log_lines(host, since: str) -> list[dict]:
    """The access-log lines the agent forwarded to the journal since a time."""
    out = host.check_output(f"journalctl -u hostmesh-agent.service --since '{since}' --no-pager -o cat")
    lines = []
    for line in out.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def host_time(host) -> str:
    return host.check_output("date '+%Y-%m-%d %H:%M:%S'")


def test_client_a_is_allowed_and_served(client_a, server) -> None:
    url = f"http://{address_of(server)}:{WEB}/"
    assert client_a.check_output(f"curl -sf --max-time 10 {url}") == "echo from server"
    answer = db_call(client_a, server, "hello")
    assert answer.rc == 0 and answer.stdout.strip() == "db from server: hello", answer.stdout + answer.stderr


def test_client_a_outside_its_rule_is_refused(client_a, server) -> None:
    # Its rule allows GET and HEAD only.
    assert http_status(client_a, f"http://{address_of(server)}:{WEB}/", "POST") == "403"


def test_client_b_is_refused_and_named_in_the_servers_log(client_b, server) -> None:
    since = host_time(server)
    before = server.check_output("journalctl -u db-app.service --no-pager -o cat | wc -l")
    assert http_status(client_b, f"http://{address_of(server)}:{WEB}/") == "403"
    refused = db_call(client_b, server, "let-me-in")
    assert refused.rc == 1 and "closed with no answer" in refused.stdout, refused.stdout + refused.stderr
    # The refused caller's bytes never reached the application.
    time.sleep(1)
    after = server.check_output("journalctl -u db-app.service --no-pager -o cat | wc -l")
    assert after == before
    # The agent names the refused caller in the journal ...
    journal = server.check_output(f"journalctl -u hostmesh-agent.service --since '{since}' --no-pager -o cat")
    assert re.search(rf"policy refused {re.escape(CLIENT_B_ID)} from \S+: GET / to inbound service 'web'", journal), (
        journal
    )
    assert re.search(rf"policy refused {re.escape(CLIENT_B_ID)} from \S+: .*'db'", journal), journal
    # ... and in the access log, with Envoy's reason; Envoy flushes it within a second.
    for _attempt in range(10):
        refusals = [
            line
            for line in access_log_lines(server, since)
            if line["peer_spiffe_id"] == CLIENT_B_ID and line["direction"] == "inbound"
        ]
        if {line["service"] for line in refusals} == {"web", "db"}:
            break
        time.sleep(1)
    by_service = {line["service"]: line for line in refusals}
    assert set(by_service) == {"web", "db"}, refusals
    assert by_service["web"]["response_code"] == 403
    assert by_service["web"]["response_code_details"].startswith("rbac_access_denied")
    assert by_service["db"]["connection_termination_details"].startswith("rbac_access_denied")
    assert by_service["db"]["upstream_host"] is None


def test_a_caller_without_a_mesh_certificate_is_refused(prom, server) -> None:
    # prom is not in the mesh: its plain text never passes web's TLS handshake.
    result = prom.run(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 http://{address_of(server)}:{WEB}/")
    assert result.rc != 0 and result.stdout.strip() in ("000", ""), result.stdout + result.stderr
    # db's TLS listener may answer plain text with a TLS alert; the application hears nothing.
    before = server.check_output("journalctl -u db-app.service --no-pager -o cat | wc -l")
    result = prom.run(f"python3 /usr/local/lib/tcp_echo.py call {address_of(server)} {DB} plain")
    assert "db from" not in result.stdout, result.stdout
    time.sleep(1)
    assert server.check_output("journalctl -u db-app.service --no-pager -o cat | wc -l") == before


def test_access_log_lines_carry_every_field(client_a, server) -> None:
    since = host_time(server)
    client_a.check_output(f"curl -sf --max-time 10 http://{address_of(server)}:{WEB}/")
    assert db_call(client_a, server, "logged").rc == 0
    for _attempt in range(10):
        lines = [line for line in access_log_lines(server, since) if line["peer_spiffe_id"] == CLIENT_A_ID]
        if {line["service"] for line in lines} >= {"web", "db"}:
            break
        time.sleep(1)
    by_service = {line["service"]: line for line in lines}
    assert set(by_service) >= {"web", "db"}, lines
    for service, line in by_service.items():
        missing = [field for field in LOG_FIELDS if field not in line]
        assert not missing, (service, line)
        assert line["direction"] == "inbound"
        assert line["upstream_host"].endswith(f":{WEB if service == 'web' else DB}"), line
    assert by_service["web"]["response_code"] == 200
    assert by_service["web"]["bytes_sent"] == len("echo from server\n")
    assert by_service["db"]["bytes_received"] == len("logged\n")
    assert by_service["db"]["bytes_sent"] == len("db from server: logged\n")


def test_client_a_logs_its_own_calls_to_a_file(client_a, server) -> None:
    client_a.check_output(f"curl -sf --max-time 10 http://{address_of(server)}:{WEB}/")
    log = client_a.file("/var/log/hostmesh/access.log")
    for _attempt in range(10):
        if log.exists and SERVER_ID in log.content_string:
            break
        time.sleep(1)
    assert log.user == "hostmesh-proxy"
    lines = [json.loads(line) for line in log.content_string.splitlines()]
    outbound = [line for line in lines if line["direction"] == "outbound" and line["service"] == "web"]
    assert outbound and outbound[-1]["peer_spiffe_id"] == SERVER_ID, lines[-3:]


def test_policy_counters_equal_what_the_clients_did(client_a, client_b, server) -> None:
    allowed_calls, denied_calls = 3, 2
    # Access-log lines of earlier tests reach the istio_* counts within a second.
    time.sleep(2)
    before = metrics(server)
    url = f"http://{address_of(server)}:{WEB}/"
    for index in range(allowed_calls):
        client_a.check_output(f"curl -sf --max-time 10 {url}")
        assert db_call(client_a, server, f"a{index}").rc == 0
    for index in range(denied_calls):
        assert http_status(client_b, url) == "403"
        assert db_call(client_b, server, f"b{index}").rc == 1
    after = metrics(server)
    for service in ("web", "db"):
        allowed = sample(after, "hostmesh_rbac_allowed_total", service=service) - sample(
            before, "hostmesh_rbac_allowed_total", service=service
        )
        denied = sample(after, "hostmesh_rbac_denied_total", service=service) - sample(
            before, "hostmesh_rbac_denied_total", service=service
        )
        assert (allowed, denied) == (allowed_calls, denied_calls), service
    # The Istio-named request counts follow the access log (flushed within a second).
    for _attempt in range(10):
        after = metrics(server)
        served = istio_requests(after, "web", 200) - istio_requests(before, "web", 200)
        refused = istio_requests(after, "web", 403) - istio_requests(before, "web", 403)
        if (served, refused) == (allowed_calls, denied_calls):
            break
        time.sleep(1)
    assert (served, refused) == (allowed_calls, denied_calls)
