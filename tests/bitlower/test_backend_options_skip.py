"""Issue 19 item 7: options={"skip": 5} is a named ValueError, not "'int' object is not iterable"."""
import pytest

from bitlower import BackendConfig


@pytest.mark.parametrize("skip", [5, 2.5, None])
def test_skip_that_is_not_patterns_is_a_named_error(skip):
    with pytest.raises(ValueError, match="skip must be a module-path pattern"):
        BackendConfig(skip=skip)


def test_skip_patterns_still_accepted():
    assert BackendConfig(skip="blocks.0.*").skip == ("blocks.0.*",)
    assert BackendConfig(skip=["a.*", "b"]).skip == ("a.*", "b")


# Issue 13 item 5: BackendConfig nests the AttentionConfig; flat keywords and options keep working.

def test_the_attention_config_is_nested_and_flat_keys_are_views():
    from bitlower import AttentionConfig

    cfg = BackendConfig(grad_mode="stopgrad", pv_quant="int8", min_seq_len=4)
    assert cfg.attention == AttentionConfig(grad_mode="stopgrad", pv_quant="int8")
    assert (cfg.weighting, cfg.grad_mode, cfg.pv_quant, cfg.ste_clip) == ("mean_abs", "stopgrad", "int8", 1.0)
    nested = BackendConfig(attention=AttentionConfig(grad_mode="hamming"), ste_clip=2.0)
    assert nested.attention == AttentionConfig(grad_mode="hamming", ste_clip=2.0)  # flat keys override
    assert cfg.replace(weighting="none").attention == AttentionConfig("none", "stopgrad", "int8")
    assert BackendConfig.from_options({"attention": AttentionConfig(grad_mode="hamming")}).grad_mode == "hamming"
    assert BackendConfig() == BackendConfig(attention=AttentionConfig()) and hash(BackendConfig()) == hash(
        BackendConfig(attention=AttentionConfig()))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"grad_mode": "sign"}, ValueError, "grad_mode must be one of"),  # AttentionConfig's check
    ({"weighting": "token"}, ValueError, r"weighting must be one of \['mean_abs', 'none'\]"),
    ({"attention": "ste"}, TypeError, "attention must be a bitlower.AttentionConfig"),
    ({"grad_mod": "ste"}, TypeError, "unknown keyword"),
])
def test_bad_attention_settings_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        BackendConfig(**kwargs)


def test_attention_weighting_outside_the_backend_set_is_refused():
    from bitlower import AttentionConfig

    with pytest.raises(ValueError, match="weighting must be one of"):
        BackendConfig(attention=AttentionConfig(weighting="token"))
