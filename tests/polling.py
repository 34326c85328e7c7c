"""Waiting for something a background process or server will do, with a deadline and a clear failure."""

import time


def wait_for(fn, timeout, what, interval=0.25):
    """fn()'s first truthy value within timeout seconds; otherwise AssertionError naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
