"""Waiting for something a background process or server will do, with a deadline and a clear failure."""

import time


def wait_for(fn, timeout, what, interval=0.25, proc=None, log=None):
    """fn()'s first truthy value within timeout seconds; otherwise AssertionError naming `what`.

    With `proc` (a subprocess.Popen), a process that exits stops the wait early: fn() gets one last look.
    With `log` (a file the process writes), the failure shows its last lines.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            v = fn()
            if v:
                return v
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}{_tail(log)}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{_tail(log)}")


def _tail(log, lines=30):
    if log is None:
        return ""
    try:
        text = open(log, errors="replace").read().splitlines()[-lines:]
    except OSError:
        return ""
    return "\n" + "\n".join(text)
