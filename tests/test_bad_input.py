"""Bad input ends in one line naming the field or file and the fix, exit code 2, nothing written."""
import pickle
import re

import pytest

from conftest import tiny_config
from distill_core.cli import main


def refused(capsys, argv: list[str], match: str) -> str:
    """Run the CLI in-process; it must exit 2 with a single 'error:' line matching ``match`` and no traceback
    (progress bars of the phases it passed, e.g. loading the teacher, may stand before it)."""
    assert main(argv) == 2
    printed = capsys.readouterr().err
    err = [line for line in printed.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in printed, printed[-3000:]
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
                   r"data.prompts\[0\] is 5,000,000 characters long, more than 4,096")
    assert len(line) < 500
    line = refused(capsys, ["train", write_config(tmp_path, data__prompts=["x" * 4004])],
                   r"prompt 'x+\.\.\. \(4,006 characters\) names no digit")  # long, within bounds: not echoed
    assert len(line) < 500


# Sizes that would allocate before any check (a typo's 1e12), and values that were silently accepted.
@pytest.mark.parametrize("overrides, match", [
    ({"teacher__num_steps": 10 ** 12}, r"teacher.num_steps = 1000000000000 is too large: at most 1,000"),
    ({"student__lora_rank": 10 ** 9}, r"student.lora_rank = 1000000000 is too large: at most 4,096"),
    ({"eval__seeds": 10 ** 12}, r"eval.seeds = 1000000000000 is too large: at most 256"),
    ({"eval__fd_samples_per_prompt": 10 ** 12}, r"eval.fd_samples_per_prompt = 1000000000000 is too large"),
    ({"run__max_steps": 10 ** 15}, r"run.max_steps = 1000000000000000 is too large: at most 1,000,000,000"),
    ({"optim__student_lr": 5e-324}, r"optim.student_lr = 5e-324 must lie in \[1e-10, 10\]"),
    ({"optim__fake_lr": 50.0}, r"optim.fake_lr = 50.0 must lie in \[1e-10, 10\]"),
    ({"run__output_dir": "   "}, r"run.output_dir is empty: give the folder"),
    ({"run__output_dir": "runs/a\0b"}, r"run.output_dir contains a NUL byte; remove it"),
    ({"data__prompts": ["7", "a\0 3"]}, r"data.prompts\[1\] contains a NUL byte; remove it"),
])
def test_absurd_sizes_and_silent_values_are_refused_naming_the_field(capsys, tmp_path, overrides, match):
    refused(capsys, ["train", write_config(tmp_path, **overrides)], match)
    assert not (tmp_path / "run").exists()


def test_an_empty_output_dir_option_is_refused_not_ignored(capsys, tmp_path):
    refused(capsys, ["train", write_config(tmp_path), "--output-dir", ""], r"run.output_dir is empty")
    assert not (tmp_path / "run").exists()


def test_a_prompts_file_with_a_megabyte_line_names_the_line(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("7\n" + "3" * 1_000_000 + "\n")
    refused(capsys, ["train", write_config(tmp_path, data__prompts_file=str(prompts))],
            r"data.prompts_file .* line 2 is 1,000,000 characters long, more than 4,096")


@pytest.mark.parametrize("kind, match", [("fifo", "is not a regular file"), ("loop", "is a symlink loop"),
                                         ("dangling", "is a symlink to a missing target"),
                                         ("devnull", "is not a regular file")])
def test_a_path_that_is_not_a_file_says_what_it_is(capsys, tmp_path, kind, match):
    import os

    path = tmp_path / "prompts.txt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "gone")
    else:
        path = "/dev/null"
    refused(capsys, ["train", write_config(tmp_path, data__prompts_file=str(path))], rf"data.prompts_file .* {match}")
    refused(capsys, ["train", str(path)], rf"config file .* {match}")


def test_a_config_with_a_utf8_bom_is_read(capsys, tmp_path):
    path = write_config(tmp_path, run__max_steps=0)
    with open(path, "rb") as f:
        body = f.read()
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + body)
    refused(capsys, ["train", path], r"run.max_steps = 0 must be at least 1")  # read past the BOM to the field


def test_sample_and_plan_refuse_empty_and_absurd_options(capsys, tmp_path):
    refused(capsys, ["sample", str(tmp_path / "s.safetensors"), "--prompt", "1", "--out", ""], r"--out is empty")
    refused(capsys, ["plan", "--fsdp", "1000000000"], r"--fsdp 1000000000 is too large: at most 4,096")
    refused(capsys, ["sample", str(tmp_path / "s.safetensors"), "--prompt", "1", "--seeds", "1000000000000"],
            r"--seeds 1000000000000 is too large")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A student file of the built-in teacher (its own weights: enough for argument checks)."""
    from distill_core.config import resolve
    from distill_core.export.exporters import save_student, student_info
    from distill_core.teachers import load_teacher

    cfg = resolve(tiny_config(tmp_path_factory.mktemp("student") / "run"))
    teacher = load_teacher(cfg)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    return save_student(teacher.network.state_dict(), student_info(teacher, cfg, 0), path)


@pytest.mark.parametrize("args, match", [
    (["--seeds", "0"], r"--seeds 0 must be at least 1"),
    (["--seeds", "-2"], r"--seeds -2 must be at least 1"),
    (["--first-seed", str(2 ** 64)], r"--first-seed 18446744073709551616 is too large"),
    (["--out", "{tmp}/missing/grid.png"], r"--out .*missing/grid.png': .*missing' does not exist; create it"),
    (["--out", "{tmp}/grid.xyz"], r"--out .*: '.xyz' is not an image format Pillow writes; end the name in .png"),
    (["--out", "{tmp}/grid"], r"--out .*: no extension is not an image format"),
    (["--out", "{tmp}"], r"--out .* is a folder; give an image file name"),
    (["--out", "{tmp}/afile/grid.png"], r"--out .*afile/grid.png': .*afile' is a file, not a folder"),
    (["--out", "/sys/grid.png"], r"--out '/sys/grid.png' cannot be written \(Permission denied\); give a path"),
    (["--teacher", "{tmp}/afile"], r"teacher.path .*afile' is not a safetensors file of the built-in teacher"),
])
def test_sample_arguments(capsys, tmp_path, student, args, match):
    (tmp_path / "afile").write_text("not a model")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    refused(capsys, ["sample", str(student), "--prompt", "3", "--seeds", "2", *args], match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("command", ["sample", "evaluate"])
@pytest.mark.parametrize("cut, match", [(lambda b: b[:-100], r"truncated"), (lambda b: b + b"x" * 64, r"damaged"),
                                        (lambda b: b[:30], r"not a readable safetensors file")])
def test_a_cut_or_appended_student(capsys, tmp_path, student, command, cut, match):
    bad = tmp_path / "student.safetensors"
    bad.write_bytes(cut(student.read_bytes()))
    refused(capsys, [command, str(bad), "--prompt", "3", "--out" if command == "sample" else "--seeds",
                     str(tmp_path / "g.png") if command == "sample" else "3"], match)


def test_evaluate_seeds(capsys, student):
    refused(capsys, ["evaluate", str(student), "--seeds", "1"], r"--seeds 1 must be at least 2: diversity compares")


def test_max_steps_zero_is_refused(capsys, tmp_path):
    refused(capsys, ["train", write_config(tmp_path), "--max-steps", "0"], r"run.max_steps = 0 must be at least 1")
    assert not (tmp_path / "run").exists()


def test_report_of_a_folder_that_is_no_run(capsys, tmp_path):
    refused(capsys, ["report", str(tmp_path)], r"is not a run folder \(no config.toml or status.json\)")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A two-step run of the built-in teacher with checkpoints at steps 1 and 2 (no finish)."""
    from distill_core.training.trainer import train

    return train(tiny_config(tmp_path_factory.mktemp("trained") / "run", run__max_steps=2, run__checkpoint_every=1),
                 finish=False)


@pytest.mark.parametrize("args, match", [
    (["--step", "0"], r"--step 0: .* has no checkpoint of that step; it has steps 1, 2"),
    (["--step", "7"], r"--step 7: .* has no checkpoint of that step; it has steps 1, 2"),
    (["--format", "lora", "--rank", "0"], r"--rank 0 must be at least 1"),
    (["--out", "{tmp}/afile/s.safetensors"], r"--out .*afile/s.safetensors' cannot be written \(.*\); give a path"),
    (["--out", "/sys/s.safetensors"], r"--out '/sys/s.safetensors' cannot be written \(Permission denied: .*\)"),
    (["--format", "diffusers", "--out", "/sys/d"], r"--format diffusers needs a run with a diffusers teacher"),
])
def test_export_arguments(capsys, tmp_path, run_dir, args, match):
    (tmp_path / "afile").write_text("")
    before = sorted(p.name for p in run_dir.iterdir())
    refused(capsys, ["export", str(run_dir), *[a.replace("{tmp}", str(tmp_path)) for a in args]], match)
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_batch_that_cannot_be_allocated(capsys, tmp_path):
    cfg = write_config(tmp_path, data__batch_size=2 ** 40, run__max_steps=1)
    refused(capsys, ["train", cfg, "--no-finish"], r"data.batch_size = 1099511627776 is too large: at most 4,096")
    assert not (tmp_path / "run").exists()  # refused before anything is allocated or written
    smaller = write_config(tmp_path, data__batch_size=2, run__max_steps=1)  # the same folder takes the fix
    assert main(["train", smaller, "--no-finish"]) == 0


@pytest.mark.parametrize("overrides, match", [
    ({"run__seed": 2 ** 63 - 1}, r"run.seed = 9223372036854775807 is too large"),
    ({"eval__max_prompts": 0, "eval__prompts": []}, r"eval.max_prompts = 0 must be at least 1"),
])
def test_more_fields_out_of_range(capsys, tmp_path, overrides, match):
    refused(capsys, ["train", write_config(tmp_path, **overrides)], match)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, match", [(["train", "{tmp}"], r"config file .* is a folder, not a file"),
                                         (["plan", "{tmp}"], r"config file .* is a folder, not a file"),
                                         (["sample", "{tmp}", "--prompt", "3"], r"student file .* is a folder"),
                                         (["evaluate", "{tmp}"], r"student file .* is a folder")])
def test_a_folder_given_as_a_file(capsys, tmp_path, argv, match):
    refused(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv], match)


@pytest.mark.parametrize("argv, match", [
    (["--port", "-1"], "--port: '-1' is not a TCP port"), (["--port", "99999"], "--port: '99999' is not a TCP port"),
    (["--refresh", "nan"], "--refresh: 'nan' is not a refresh interval"),
    (["--refresh", "0"], "--refresh: '0' is not a refresh interval")])
def test_ui_options_out_of_range(capsys, argv, match):
    from trainer_ui.cli import main as ui_main

    with pytest.raises(SystemExit) as exit_:
        ui_main(argv)
    assert exit_.value.code == 2 and match in capsys.readouterr().err


def test_ui_runs_dir_that_is_a_file(capsys, tmp_path):
    from trainer_ui.cli import main as ui_main

    (tmp_path / "f").write_text("x")
    assert ui_main(["--runs-dir", str(tmp_path / "f")]) == 2
    assert "--runs-dir" in capsys.readouterr().err
