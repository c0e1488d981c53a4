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


@pytest.mark.parametrize("field, value", [("optim__student_lr", float("nan")), ("optim__fake_lr", float("inf")),
                                          ("teacher__guidance_scale", float("nan")),
                                          ("method__diversity_weight", float("nan")),
                                          ("student__ema_decay", float("-inf"))])
def test_a_float_field_that_is_not_finite(capsys, tmp_path, field, value):
    cfg = write_config(tmp_path, **{field: value})
    refused(capsys, ["train", cfg], rf"{field.replace('__', '.')} = -?(nan|inf) must be a finite number")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, match", [
    ({"eval__grid_prompts": 0, "eval__grid_seeds": 0}, r"eval.grid_prompts = 0 must be at least 1"),
    ({"eval__grid_seeds": 0}, r"eval.grid_seeds = 0 must be at least 1"),
    ({"run__keep_checkpoints": 0}, r"run.keep_checkpoints = 0 must be at least 1"),
    ({"teacher__resolution": 64}, r"teacher.resolution = 64 applies to sd3 / sdxl teachers.*remove the field"),
])
def test_a_field_out_of_range(capsys, tmp_path, overrides, match):
    refused(capsys, ["train", write_config(tmp_path, **overrides)], match)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, match", [
    (b"\xff\xfe7\n", r"data.prompts_file .* is not UTF-8 text \(byte 0xff at offset 0\)"),
    (b"", r"data.prompts_file .* holds no prompts"),
    (b"\n# only a comment\n  \n", r"data.prompts_file .* holds no prompts"),
    (None, r"data.prompts_file .* is a folder, not a file"),
])
def test_a_prompts_file_without_prompts(capsys, tmp_path, content, match):
    prompts = tmp_path / "prompts.txt"
    prompts.mkdir() if content is None else prompts.write_bytes(content)
    refused(capsys, ["train", write_config(tmp_path, data__prompts_file=str(prompts))], match)
    assert not (tmp_path / "run").exists()


def test_a_config_that_is_not_utf8(capsys, tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes('[run]\noutput_dir = "caf\u00e9"\n'.encode("latin-1"))
    refused(capsys, ["train", str(path)], r"config file .* is not UTF-8 text \(byte 0xe9 at offset \d+\); save it as")


def test_a_huge_value_is_not_echoed_whole(capsys, tmp_path):
    line = refused(capsys, ["train", write_config(tmp_path, data__prompts=["x" * 5_000_000])],
                   r"prompt 'x+\.\.\. \(5,000,002 characters\) names no digit")
    assert len(line) < 400
