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
