"""Sandbox of real systemd hosts for tests, molecule and the demo.

Each host is a copy of a cached Debian rootfs booted by systemd-nspawn with
systemd as PID 1, in its own network namespace, on a private bridge that only
the controller and the other sandbox hosts can reach.
"""
