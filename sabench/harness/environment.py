"""The run's environment record: host facts, roofline calibration and GPU facts, each
captured in a child process so the sweeping process never holds a CUDA context."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def calibrate_in_subprocess(device: str, dtype: str, workdir: Path) -> dict:
    """Roofline ceilings measured in a child, so the runner never holds a CUDA context."""
    out = workdir / "calibration.json"
    code = ("import json,sys; from sabench.measure.calibrate import calibrate; from sabench.dtypes import parse_dtype;"
            f"c = calibrate({device!r}, parse_dtype({dtype!r})); json.dump(c, open({str(out)!r}, 'w'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"calibration_error": (proc.stderr.strip().splitlines() or ["unknown"])[-1]}
    return json.loads(out.read_text())


def capture_run_env(device: str, dtype: str, workdir: Path) -> dict:
    from sabench.measure.env import capture_env

    env = capture_env("cpu")  # the parent stays off the GPU; device facts come from the child below
    env["device"] = device
    cal = calibrate_in_subprocess(device, dtype, workdir)
    env.update({k: v for k, v in cal.items() if k != "calibration"})
    env["calibration"] = cal.get("calibration")
    if device.startswith("cuda"):
        code = ("import json,torch; from sabench.measure.env import capture_env; "
                f"print(json.dumps(capture_env({device!r})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode == 0:
            gpu = json.loads(proc.stdout.strip().splitlines()[-1])
            env.update({k: v for k, v in gpu.items() if v is not None})
    return env
