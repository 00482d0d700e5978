"""The parent's end of the NVML sampler's helper process (`_nvml_probe.py`): starting it,
JSON lines over its pipes with bounded waits, and describing its death.

Every command carries an id that the reply echoes, so a late reply can never be taken for the
answer to a later command. Nothing here knows NVML: nvml.NvmlSampler says what to ask.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from typing import Optional

from sabench.measure.nvml_readings import NvmlUnavailable, why_unavailable

PROBE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nvml_probe.py")
READY_TIMEOUT_S = 30.0  # nvmlInit can take seconds on a host without persistence mode


@functools.lru_cache(maxsize=None)
def _sched_getcpu():
    """libc's sched_getcpu (Linux), or None."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).sched_getcpu
        fn.restype, fn.argtypes = ctypes.c_int, []
        return fn
    except Exception:  # not Linux
        return None


def current_cpu() -> Optional[int]:
    """The CPU the calling thread runs on now (Linux), else None."""
    fn = _sched_getcpu()
    cpu = fn() if fn is not None else -1
    return cpu if cpu >= 0 else None


class Probe:
    """The parent's end of one helper process: JSON lines over its stdin/stdout.

    Every command carries an id that the reply echoes, so a late reply can never be
    taken for the answer to a later command. Reads are bounded by timeouts; when one
    gets no answer, `failure` says why.
    """

    def __init__(self, argv: list):
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends: only ask for it
        # from the main thread (EOF on the pipe and the parent-pid check cover the rest).
        if threading.current_thread() is threading.main_thread():
            argv = argv + ["--pdeathsig"]
        root = os.path.dirname(os.path.dirname(os.path.dirname(PROBE_PATH)))  # holds `sabench`
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + paths))
        self._buf = b""
        self._next_id = 1
        self.failure: Optional[str] = None
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, env=env, close_fds=True, bufsize=0)
        except Exception as e:
            self._stderr.close()
            raise NvmlUnavailable(f"cannot start the NVML sampler process ({why_unavailable(e)})") from e
        ready = self._read_reply(0, READY_TIMEOUT_S)
        if ready is None or not ready.get("ok"):
            why = self.failure if ready is None else ready.get("error")
            self.kill()
            raise NvmlUnavailable(str(why))
        self.ready = ready

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, cmd: dict, timeout: float) -> Optional[dict]:
        rid, self._next_id = self._next_id, self._next_id + 1
        try:
            self.proc.stdin.write(json.dumps(dict(cmd, id=rid)).encode() + b"\n")
        except (OSError, ValueError) as e:  # BrokenPipeError: it is gone
            self.failure = f"cannot write to it ({why_unavailable(e)}); {self.describe_death()}"
            return None
        return self._read_reply(rid, timeout)

    def _read_reply(self, rid: int, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue  # not ours (the helper sends stray output to stderr, but be lenient)
                    if isinstance(msg, dict) and msg.get("id") == rid:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    self.failure = f"no answer within {timeout:.1f} s (stuck in an NVML call?); killed it"
                    return None
                try:
                    if not sel.select(left):
                        continue
                    data = os.read(self.proc.stdout.fileno(), 65536)
                except OSError as e:
                    self.failure = f"cannot read from it ({why_unavailable(e)})"
                    return None
                if not data:  # EOF: it died
                    with contextlib.suppress(Exception):
                        self.proc.wait(timeout=1.0)
                    self.failure = self.describe_death()
                    return None
                self._buf += data

    def describe_death(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            what = "it is still running"
        elif rc < 0:
            try:
                what = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                what = f"killed by signal {-rc}"
        else:
            what = f"exit code {rc}"
        try:  # the tail of its stderr; pread: the helper shares the file's offset, which must not move
            fd = self._stderr.fileno()
            tail = os.pread(fd, 400, max(0, os.fstat(fd).st_size - 400))
            tail = tail.decode(errors="replace").strip().replace("\n", " | ")
        except Exception:
            tail = ""
        return what + (f"; stderr: {tail}" if tail else "")

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=1.0)
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            with contextlib.suppress(Exception):
                f.close()

    def close(self, timeout: float = 1.0) -> None:
        """Ask it to quit (and close its stdin: EOF ends it too), then kill if it lingers."""
        with contextlib.suppress(Exception):  # a forked copy of the parent may hold the pipe: no EOF
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=timeout)
        self.kill()
