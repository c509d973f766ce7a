# Copyright: contributors to hostmesh.sidecar
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every failure the capture core reports, as one family under CaptureError.

traffic_capture and host_state catch CaptureError alone; each subclass keeps
what a person (or a result) needs: the option and value, the command and its
output, the step that failed and what could not be put back.
"""


class CaptureError(Exception):
    """A failure to report to the user."""

    def details(self) -> dict:
        """Extra keys for the module's failure result."""
        return {}


class OptionError(CaptureError):
    """A bad option value; the message names the option, the value and what is accepted."""

    def __init__(self, option, value, accepted):
        self.option = option
        self.value = value
        self.accepted = accepted
        super().__init__("%s: %r is not valid; %s" % (option, value, accepted))

    def details(self) -> dict:
        return {"option": self.option, "value": self.value}


class MissingFeature(CaptureError):
    """The host lacks a tool or kernel feature that an option's value needs."""

    def __init__(self, option, value, message):
        self.option = option
        self.value = value
        super().__init__(message)


class CommandFailed(CaptureError):
    """A command exited non-zero (or could not start)."""

    def __init__(self, argv, rc, out, err):
        self.argv = list(argv)
        self.rc = rc
        self.out = out
        self.err = err
        super().__init__("%s exited %d: %s" % (" ".join(self.argv), rc, (err or out).strip()))

    def details(self) -> dict:
        return {"cmd": self.argv, "rc": self.rc, "stdout": self.out, "stderr": self.err}


class LockHeld(CaptureError):
    """Another program held the xtables lock for longer than lock_wait."""

    def __init__(self, lock_wait, command):
        self.lock_wait = lock_wait
        self.command = command
        super().__init__(
            "lock_wait: %r seconds passed while another program held the xtables lock; "
            "raise lock_wait or retry when it is free (%s)" % (lock_wait, str(command).strip())
        )


class ReadBackMismatch(CaptureError):
    """A step applied without error but the host does not read back as planned."""

    def __init__(self, label, expected, found):
        self.label = label
        self.expected = list(expected)
        self.found = list(found)
        missing = [line for line in self.expected if line not in self.found]
        unexpected = [line for line in self.found if line not in self.expected]
        parts = ["missing %s" % line for line in missing] + ["unexpected %s" % line for line in unexpected]
        super().__init__(
            "the rules did not read back as written: %s" % ("; ".join(parts) or "the same rules in another order")
        )


class ApplyFailed(CaptureError):
    """A step failed; says which and why, and whether every step applied was put back."""

    def __init__(self, label, cause, undo_failures=()):
        self.label = label
        self.cause = cause
        self.undo_failures = list(undo_failures)  # [(step label, CaptureError)]
        message = "%s: %s" % (label, str(cause).strip())
        if self.undo_failures:
            message += "; putting back the earlier state also failed: " + "; ".join(
                "%s: %s" % (failed, str(error).strip()) for failed, error in self.undo_failures
            )
            message += "; the host may hold part of the change"
        else:
            message += "; nothing was changed (every step applied so far was put back)"
        super().__init__(message)

    def details(self) -> dict:
        return self.cause.details()
