"""--preset: named sampler settings under the explicit sampler flags, over the config's `sampling`."""
from absl import flags

from upgpt_jax.cli_flags import define_sampler_flags, sampler_overrides
from upgpt_jax.config_base import released_config
from upgpt_jax.sampling import SamplingSettings


def settings(*args: str) -> SamplingSettings:
    """What sample.py / eval.py would sample a released-config model with for these flags."""
    values = flags.FlagValues()
    define_sampler_flags(values)
    values(["sample.py", *args])
    return SamplingSettings.from_config(released_config().sampling, **sampler_overrides(values))


def test_released_preset_is_the_original_sampling():
    """UPGPT's log_images: DDIMSampler with ddim_steps=200, ddim_eta=1, and no guidance; its edits
    by the edited conditions alone (the app's mix_style), so the whole person is redrawn."""
    released = settings("--preset=released")
    assert (released.method, released.num_steps, released.eta) == ("ddim", 200, 1.0)
    assert dict(released.guidance) == {"pose": 1.0, "style": 1.0, "text": 1.0}
    assert released.edit_region == "whole"
    assert settings().edit_region == "inferred" and settings("--edit_region=whole").edit_region == "whole"


def test_flags_override_the_preset_and_no_preset_is_the_fast_config_default():
    overridden = settings("--preset=released", "--num_steps=20", "--guidance=pose=1,style=1,text=2")
    assert (overridden.method, overridden.num_steps, overridden.eta) == ("ddim", 20, 1.0)
    assert dict(overridden.guidance)["text"] == 2.0
    default = settings()
    assert (default.method, default.num_steps, default.eta) == ("ddim", 50, 0.0)
