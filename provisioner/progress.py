"""What the run is doing, per host, while it runs; and a summary when it ends.

    with Progress() as progress:                  # a live table on a terminal
        actions.up(cluster, progress=progress)    # phases call progress.phase(...)
    # on exit: the summary table (per host ok/changed/failed, per phase seconds)

Fed from two sides:
  - ansible-runner events through `event(e)` (the runner passes every event);
  - the paramiko side through `step(host, phase, text)` and `done(host, changed)`.

On a terminal the table redraws in place. Elsewhere (CI logs, pipes) it prints one line each
time a host finishes a task or step, never one per event. Known secret values (`add_secrets`)
are replaced by ******** in everything it shows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .runner import task_message

REDACTED = "********"
HIDDEN_EVENTS = ("verbose", "playbook_on_start", "playbook_on_play_start",
                 "playbook_on_include", "playbook_on_no_hosts_matched", "debug", "warning")


@dataclass
class HostLine:
    name: str
    phase: str = ""
    task: str = ""
    status: str = "waiting"
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    messages: list[str] = field(default_factory=list)


class Progress:
    """Live per-host table (TTY) or transition lines (no TTY); see the module docstring."""

    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.console = console or Console()
        self.live_mode = self.console.is_terminal if live is None else live
        self.hosts: dict[str, HostLine] = {}
        self.phase_times: dict[str, list[float]] = {}   # phase -> [start, end]
        self.current_phase = ""
        self._secrets: list[str] = []
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._t0 = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.console.print(self.summary())

    def start(self) -> None:
        if self.live_mode and self._live is None:
            self._live = Live(get_renderable=self._table, console=self.console,
                              refresh_per_second=4, transient=True)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- secrets ---------------------------------------------------------------------------------
    def add_secrets(self, values) -> None:
        with self._lock:
            new = {str(v) for v in values if v is not None and len(str(v)) >= 4}
            self._secrets = sorted(set(self._secrets) | new, key=len, reverse=True)

    def _clean(self, text) -> str:
        text = str(text)
        for s in self._secrets:
            text = text.replace(s, REDACTED)
        return text

    # -- inputs ----------------------------------------------------------------------------------
    def phase(self, name: str, hosts=()) -> None:
        """A phase starts on `hosts` (called once per phase by the action, again by the runner)."""
        with self._lock:
            now = time.monotonic()
            if name not in self.phase_times:
                self.phase_times[name] = [now, now]
            if self.current_phase and self.current_phase != name:
                self.phase_times[self.current_phase][1] = max(
                    self.phase_times[self.current_phase][1], now)
            self.current_phase = name
            for h in hosts:
                line = self._host(h)
                if line.phase != name:
                    line.phase, line.task, line.status = name, "", "waiting"

    def warn(self, text: str) -> None:
        """A line that must be seen (a preflight warning), above the live table."""
        with self._lock:
            from rich.markup import escape

            self.console.print(f"[yellow]warning:[/yellow] {escape(self._clean(text))}",
                               highlight=False)

    def step(self, host: str, phase: str, text: str) -> None:
        """A paramiko-side step starts on `host` (push files, probe...)."""
        with self._lock:
            if phase and phase not in self.phase_times:
                self.phase(phase)
            line = self._host(host)
            line.phase, line.task, line.status = phase or line.phase, self._clean(text), "running"
            self._touch(line.phase)

    def done(self, host: str, changed: bool = False, failed: str | None = None) -> None:
        """The current paramiko-side step on `host` finished."""
        with self._lock:
            line = self._host(host)
            if failed:
                self._result(line, "failed", self._clean(failed))
            else:
                self._result(line, "changed" if changed else "ok")

    def event(self, e: dict) -> None:
        """Consume one ansible-runner event."""
        kind = e.get("event", "")
        if kind in HIDDEN_EVENTS:
            return
        data = e.get("event_data", {}) or {}
        with self._lock:
            if kind == "playbook_on_task_start":
                task = self._clean(data.get("task", ""))
                for line in self.hosts.values():
                    if line.phase == self.current_phase and line.status not in ("failed", "unreachable"):
                        line.task, line.status = task, "running"
                self._touch(self.current_phase)
                return
            host = data.get("host")
            if not host or not kind.startswith("runner_on_"):
                return
            line = self._host(host)
            line.task = self._clean(data.get("task", line.task))
            if kind == "runner_on_start":
                line.status = "running"
            elif kind == "runner_on_ok":
                self._result(line, "changed" if (data.get("res") or {}).get("changed") else "ok")
            elif kind == "runner_on_failed":
                if data.get("ignore_errors"):
                    self._result(line, "ok")
                else:
                    self._result(line, "failed", self._message(data.get("res")))
            elif kind == "runner_on_unreachable":
                self._result(line, "unreachable", self._message(data.get("res")))
            elif kind == "runner_on_skipped":
                line.skipped += 1
                line.status = "skipped"

    # -- bookkeeping -----------------------------------------------------------------------------
    def _host(self, name: str) -> HostLine:
        if name not in self.hosts:
            self.hosts[name] = HostLine(name, phase=self.current_phase)
        return self.hosts[name]

    def _touch(self, phase: str) -> None:
        if phase in self.phase_times:
            self.phase_times[phase][1] = time.monotonic()

    def _message(self, res) -> str:
        return self._clean(task_message(res or {}))[:200]

    def _result(self, line: HostLine, status: str, message: str = "") -> None:
        line.status = status
        if status == "ok":
            line.ok += 1
        elif status == "changed":
            line.ok += 1
            line.changed += 1
        elif status == "failed":
            line.failed += 1
        elif status == "unreachable":
            line.unreachable += 1
        if message:
            line.messages.append(message)
        self._touch(line.phase)
        if not self.live_mode:
            self._print_line(line, message)

    def _print_line(self, line: HostLine, message: str) -> None:
        elapsed = time.monotonic() - self._t0
        text = f"[{elapsed:7.1f}s] {line.name:<12} {line.phase:<14} {line.status:<11} {line.task}"
        if message:
            text += f": {message}"
        self.console.print(Text(text), soft_wrap=True, highlight=False)

    # -- rendering -------------------------------------------------------------------------------
    def _table(self) -> Table:
        with self._lock:
            t = Table(title=f"phase: {self.current_phase or '-'}", expand=False)
            for col in ("host", "phase", "status", "task", "ok", "changed", "failed"):
                t.add_column(col, justify="right" if col in ("ok", "changed", "failed") else "left")
            for line in self.hosts.values():
                style = {"failed": "red", "unreachable": "red", "changed": "yellow",
                         "ok": "green"}.get(line.status, "")
                t.add_row(line.name, line.phase, Text(line.status, style=style),
                          Text(line.task[:60]), str(line.ok), str(line.changed),
                          str(line.failed + line.unreachable))
            return t

    def summary(self) -> Group:
        """Per host counts and per phase seconds."""
        with self._lock:
            hosts = Table(title="hosts")
            for col in ("host", "ok", "changed", "failed", "unreachable", "last message"):
                hosts.add_column(col)
            for line in self.hosts.values():
                hosts.add_row(line.name, str(line.ok), str(line.changed), str(line.failed),
                              str(line.unreachable), Text(line.messages[-1] if line.messages else ""))
            phases = Table(title="phases")
            phases.add_column("phase")
            phases.add_column("seconds", justify="right")
            for name, (start, end) in self.phase_times.items():
                phases.add_row(name, f"{end - start:.1f}")
            return Group(hosts, phases)
