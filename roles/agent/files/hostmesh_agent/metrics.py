"""The agent's own metrics (``hostmesh_agent_*``) in Prometheus text format."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AgentMetrics:
    started_at: float
    restarts: int = 0
    hot_restarts: int = 0
    epoch: int = 0
    ready: bool = False
    config_reloads: int = 0
    errors: int = 0
    envoy_starts: int = 0

    def render(self, now: float) -> str:
        rows = [
            (
                "restarts_total",
                "counter",
                "Envoy restarts after it exited unexpectedly.",
                self.restarts,
            ),
            (
                "hot_restarts_total",
                "counter",
                "Hot restarts (new epoch, sockets handed over).",
                self.hot_restarts,
            ),
            ("epoch", "gauge", "Restart epoch of the Envoy now serving.", self.epoch),
            ("ready", "gauge", "1 when /healthz/ready answers 200.", int(self.ready)),
            (
                "uptime_seconds",
                "gauge",
                "Seconds since the agent started.",
                round(now - self.started_at, 3),
            ),
            (
                "config_reloads_total",
                "counter",
                "Config changes applied without a restart.",
                self.config_reloads,
            ),
            (
                "errors_total",
                "counter",
                "Errors: rejected config reloads, failed starts, Envoys never ready.",
                self.errors,
            ),
            (
                "envoy_starts_total",
                "counter",
                "Envoy processes started, of any kind.",
                self.envoy_starts,
            ),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            full = f"hostmesh_agent_{name}"
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}", f"{full} {value}"]
        return "\n".join(lines) + "\n"
