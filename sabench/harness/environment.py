"""The run's environment record: host facts, roofline calibration and GPU facts, each
captured in a child process so the sweeping process never holds a CUDA context."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional


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


GOVERNOR = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"


def busy_warning(load1: Optional[float] = None, cores: Optional[int] = None) -> Optional[str]:
    """One line when the machine's 1-minute load average exceeds the cores this run may use
    (the other work will show in the timings), else None. Arguments default to the machine's."""
    try:
        load1 = os.getloadavg()[0] if load1 is None else load1
        cores = len(os.sched_getaffinity(0)) if cores is None else cores
    except (OSError, AttributeError):
        return None
    if load1 <= cores:
        return None
    return (f"sabench: warning: the 1-minute load average is {load1:.1f} on the {cores} core(s) this run "
            f"may use: other work will slow some steps; rounds keep the verdicts honest, but the "
            f"intervals widen (each round's fastest step is what ratios and the gate use)")


def run_conditions(device: str, when: str, gpus=None, nvml=None) -> dict:
    """What explains noise, read now (`when`: "before" or "after" the measurements): the load
    average, the CPU frequency governor where readable, and on CUDA the GPU's clocks, throttle
    reasons and other processes (NVML, read without a CUDA context). `gpus`: the GPUs of a
    `--devices` run, or the suite's one (physical NVML indices or UUIDs, as CUDA_VISIBLE_DEVICES
    names them; default: the index of `device`): `gpu_<when>` is the first's readings and, with
    several, `gpus_<when>` holds every one's by GPU. Never raises; a
    reading that cannot be had is absent or says why."""
    out: dict = {}
    try:
        out[f"load_avg_{when}"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        pass
    try:
        out["cpu_governor"] = Path(GOVERNOR).read_text().strip()
    except OSError:
        pass
    if not device.startswith("cuda"):
        return out
    gpus = [str(g) for g in gpus] if gpus else [device.partition(":")[2] or "0"]
    by_gpu = {g: _conditions_or_why(g, nvml) for g in gpus}
    out[f"gpu_{when}"] = by_gpu[gpus[0]]
    if len(gpus) > 1:
        out[f"gpus_{when}"] = by_gpu
    return out


def _conditions_or_why(gpu: str, nvml) -> dict:
    from sabench.measure.nvml_readings import gpu_conditions, why_unavailable  # (sabench.measure imports torch)

    try:
        return gpu_conditions(gpu, nvml)
    except Exception as e:  # NVML missing or failing must not cost the run
        return {"unavailable": why_unavailable(e)[:200]}
