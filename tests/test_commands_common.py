"""engine.commands.common: seed and grid lists as people type them, and the device resolver."""

import pytest

from engine.commands import common
from engine.errors import UserError


@pytest.mark.parametrize("text,expected", [
    ("0,3,5-8", [0, 3, 5, 6, 7, 8]),
    ("85", [85]),
    (" 1 , 2 ,3", [1, 2, 3]),
    ("4-4", [4]),
    ("10-12,2", [10, 11, 12, 2]),
    ("4294967295", [2 ** 32 - 1]),
])
def test_parse_seeds(text, expected):
    assert common.parse_seeds(text) == expected


@pytest.mark.parametrize("text", ["", "a", "1,,2", "5-3", "-1", "1.5", "3-", "1-2-3", "4294967296", "0-100000000"])
def test_parse_seeds_rejects_bad_text(text):
    with pytest.raises(UserError) as e:
        common.parse_seeds(text)
    assert "\n" not in str(e.value)


def test_parse_grid():
    assert common.parse_grid("4x2") == (4, 2)
    assert common.parse_grid("1X3") == (1, 3)
    for bad in ("4", "0x2", "axb", "4x", "200x200"):
        with pytest.raises(UserError):
            common.parse_grid(bad)


def test_one_device_resolver_with_one_set_of_messages():
    import torch

    assert common.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert common.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^--device 'tpu' is not a device: use auto, cpu, cuda or cuda:N$"):
        common.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="torch sees no CUDA GPU here: use --device cpu"):
            common.resolve_device("cuda")
