"""CPU checks of the persistent Gluon forward's launch arithmetic (the kernel itself: ``test_gpu_hopper.py``)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bitlower.codegen.hopper import HopperConfig
from bitlower.codegen.hopper.launcher import persistent_programs, resident_ctas

H200 = SimpleNamespace(regs_per_multiprocessor=65536, shared_memory_per_multiprocessor=233472,
                       max_threads_per_multi_processor=2048, multi_processor_count=132)


@pytest.mark.parametrize("regs, shared, expected", [(123, 28824, 4), (128, 32912, 4), (135, 45208, 3), (153, 32912, 3),
                                                    (164, 57496, 3), (226, 28824, 2), (64, 100000, 2)])
def test_resident_ctas_by_registers_and_shared_memory(regs, shared, expected):
    """ptxas' counts of session 16's builds: 128 registers still fit four 128-thread CTAs, 135 three."""
    assert resident_ctas(regs, shared, 4, H200) == expected


def test_resident_ctas_is_at_least_one():
    assert resident_ctas(255, 230000, 4, H200) == 1


def test_persistent_programs_off_cuda_give_every_item_a_program():
    class Device:
        type = "cpu"

    assert persistent_programs(None, (), {}, 777, Device()) == 777


def test_persistent_takes_structure_a():
    with pytest.raises(ValueError, match="persistent"):
        HopperConfig(consumers=3, persistent=True)
    assert HopperConfig(*map(int, "64x64x2x0x0x0x0x1x0x1".split("x"))).persistent is True
