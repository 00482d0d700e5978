"""sabench: profile and benchmark cross-layer attention sharing (baseline, CLA, SA)."""
from sabench.constants import VERSION as __version__
from sabench.plan import PlanError, SharingPlan, parse_variant, plan_for
from sabench.presets import PRESETS, ModelConfig, ModelSourceError, resolve_config


def load_model(*args, **kwargs):
    """See sabench.model.load_model (imported lazily to keep `import sabench` light)."""
    from sabench import model

    return model.load_model(*args, **kwargs)


__all__ = ["load_model", "parse_variant", "plan_for", "resolve_config", "PlanError", "ModelSourceError",
           "ModelConfig", "SharingPlan", "PRESETS", "__version__"]
