"""Fixtures of the runtime tests."""
import pytest


def _assert_fallbacks_match(config, fallbacks: dict) -> None:
    """No fallback, except for bilinear weighting (two sign planes): the kernels refuse it and the call is counted."""
    if config.attention.weighting == "bilinear":
        assert fallbacks and all("bilinear" in r or "sign plane" in r for r in fallbacks), fallbacks
    else:
        assert not fallbacks, fallbacks


@pytest.fixture
def assert_fallbacks_match():
    """``assert_fallbacks_match(binarize_config, dict(counters["fallback"]))``."""
    return _assert_fallbacks_match
