# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Record how long each task of a playbook took (start to the next task's start).

Enabled by benchmarks/onboard_bench.py for the runs it times; it writes
[[seconds, task name], ...] as JSON to the file named by HOSTMESH_TASK_TIMES.
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_times
type: aggregate
short_description: Write each task's duration to the file in HOSTMESH_TASK_TIMES
description: Used by the onboarding benchmark to show where a run's time goes.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._rows = []
        self._current = None

    def _close(self):
        if self._current is not None:
            name, start = self._current
            self._rows.append([round(time.monotonic() - start, 3), name])
            self._current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("HOSTMESH_TASK_TIMES")
        if path:
            with open(path, "w") as handle:
                json.dump(self._rows, handle)
