"""Bad input ends in one line naming the field or file and the fix, exit code 2, nothing written."""
import pickle
import re

import pytest

from conftest import tiny_config
from distill_core.cli import main


def refused(capsys, argv: list[str], match: str) -> str:
    """Run the CLI in-process; it must exit 2 with a single 'error:' line matching ``match``."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(match, err[0]), err[0]
    return err[0]


def write_config(tmp_path, **overrides) -> str:
    cfg = tiny_config(tmp_path / "run", **overrides)
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    return str(path)


@pytest.mark.parametrize("content", [b"hello\n", pickle.dumps({"a": 1})])
def test_a_builtin_teacher_path_that_is_not_its_weights(capsys, tmp_path, content):
    (tmp_path / "weights").write_bytes(content)
    cfg = write_config(tmp_path, teacher__path=str(tmp_path / "weights"))
    refused(capsys, ["train", cfg], r"teacher.path .* is not a safetensors file of the built-in teacher")
    assert not (tmp_path / "run" / "status.json").exists()
