"""sabench: profile and benchmark cross-layer attention sharing (baseline, CLA, SA)."""
from sabench.constants import VERSION as __version__  # noqa: E402
from sabench.plan import PlanError, SharingPlan, parse_variant, plan_for  # noqa: E402
from sabench.presets import PRESETS, ModelConfig, ModelSourceError, resolve_config  # noqa: E402


def load_model(*args, **kwargs):
    """See sabench.model.load_model (imported lazily to keep `import sabench` light)."""
    from sabench.model import load_model as _load

    return _load(*args, **kwargs)


__all__ = ["load_model", "parse_variant", "plan_for", "resolve_config", "PlanError", "ModelSourceError",
           "ModelConfig", "SharingPlan", "PRESETS", "__version__"]
