"""Exported students carry their schedule; foreign or broken files are refused clearly."""
import pytest
import torch
from safetensors.torch import save_file

from distill_core.config import resolve
from distill_core.errors import CheckpointError, PromptError
from distill_core.export.exporters import load_student, save_student, student_info
from distill_core.export.student_file import read_student_info
from distill_core.sampling import sample_grid
from distill_core.teachers import load_teacher


@pytest.fixture(scope="module")
def teacher():
    """The digits teacher, whose prompts ("3") these tests use, as the tiny configs do."""
    from distill_core.config import Config
    cfg = Config()
    cfg.teacher.builtin = "digits"
    return load_teacher(resolve(cfg))


def test_round_trip_keeps_weights_and_schedule(tiny, tmp_path, teacher):
    cfg = resolve(tiny())
    net = teacher.make_trainable_copy()
    with torch.no_grad():
        next(net.parameters()).add_(0.01)  # a "trained" student differs from the teacher
    info = student_info(teacher, cfg, steps_trained=7)
    path = save_student(net.state_dict(), info, tmp_path / "s.safetensors")
    again = read_student_info(path)
    assert again.levels == teacher.student_levels(4) and again.levels[0] == 1.0 and again.levels[-1] == 0.0
    assert again.sigmas == again.levels  # flow models: ComfyUI's sigma is the flow time
    assert again == info and again.num_steps == 4 and again.steps_trained == 7
    loaded, _ = load_student(path, teacher)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    a = sample_grid(teacher, net, ["3"], [0, 1], info.levels)
    b = sample_grid(teacher, loaded, ["3"], [0, 1], again.levels)
    torch.testing.assert_close(a, b)


def test_a_student_shift_moves_the_students_levels_not_the_teachers(tiny, tmp_path, teacher):
    """student.shift gives the student its own flow levels (stored in the file, so ComfyUI samples them)."""
    from distill_core.schedules import FlowSchedule
    from distill_core.training.trainer import Trainer

    cfg = resolve(tiny(student__shift=0.5))
    levels = student_info(teacher, cfg, 0).levels
    assert levels == FlowSchedule(0.5).sampling_levels(4) and levels[1] == pytest.approx(0.5, abs=1e-3)
    assert levels != teacher.student_levels(4) and teacher.teacher_levels(30) == FlowSchedule(1.0).sampling_levels(30)
    trainer = Trainer(cfg)
    assert trainer.method.student_levels == levels and trainer.method.teacher_levels == teacher.teacher_levels(8)


def test_metadata_has_modelspec_keys(tiny, tmp_path, teacher):
    path = save_student(teacher.network.state_dict(), student_info(teacher, resolve(tiny()), 0), tmp_path / "s.safetensors")
    from distill_core.export.student_file import read_metadata
    meta = read_metadata(path)
    for key in ("modelspec.sai_model_spec", "modelspec.architecture", "modelspec.title", "dpdmd.levels",
                "dpdmd.sigmas", "dpdmd.anchor_step", "dpdmd.diversity_weight", "dpdmd.method"):
        assert key in meta


def test_file_without_metadata_is_refused(tmp_path, teacher):
    path = tmp_path / "plain.safetensors"
    save_file(teacher.network.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="no DP-DMD student metadata"):
        load_student(path, teacher)


def test_pickle_and_truncated_files_are_refused(tmp_path, teacher, tiny):
    pt = tmp_path / "student.pt"
    pt.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_student_info(pt)
    good = save_student(teacher.network.state_dict(), student_info(teacher, resolve(tiny()), 0), tmp_path / "g.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated|readable"):
        read_student_info(cut)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_student_info(tmp_path / "missing.safetensors")


def test_unknown_prompt_lists_what_is_accepted(teacher):
    with pytest.raises(PromptError, match="exactly one digit"):
        teacher.encode_prompts(["a cat"])
    with pytest.raises(PromptError, match="several digits"):
        teacher.encode_prompts(["3 or 4"])
    assert teacher.encode_prompts(["seven", "a handwritten 7", "7"])["class_labels"].tolist() == [7, 7, 7]


def _flip_tensor_bytes(path):
    """Same-size damage inside the tensor data (header, metadata and size intact)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + 64: start + 96] = bytes(255 - b for b in data[start + 64: start + 96])
    path.write_bytes(bytes(data))


def test_damaged_or_non_finite_students_are_refused(tmp_path, teacher, tiny, capsys):
    from safetensors.torch import load_file

    from distill_core.export.student_file import CHECKSUM, read_metadata

    info = student_info(teacher, resolve(tiny()), 0)
    good = save_student(teacher.network.state_dict(), info, tmp_path / "good.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(good.read_bytes())
    _flip_tensor_bytes(damaged)
    with pytest.raises(CheckpointError, match="damaged.safetensors does not match the checksum in its metadata"):
        load_student(damaged, teacher)

    weights = teacher.network.state_dict()
    name = sorted(weights)[3]
    weights[name] = torch.full_like(weights[name], float("inf"))  # exported from a diverged run: checksum fine
    diverged = save_student(weights, info, tmp_path / "diverged.safetensors")
    with pytest.raises(CheckpointError, match=f"diverged.safetensors holds NaN or infinite values \\(first in "
                                              f"'{name}'\\).*--step"):
        load_student(diverged, teacher)

    old = tmp_path / "old.safetensors"  # exported before students carried a checksum: loads, with a note
    meta = {k: v for k, v in read_metadata(good).items() if k != CHECKSUM}
    save_file(load_file(str(good)), str(old), metadata=meta)
    load_student(old, teacher)
    assert "old.safetensors was exported before students carried a checksum" in capsys.readouterr().err
    load_student(good, teacher)
    assert capsys.readouterr().err == ""


def test_shared_base_lora_run_exports_the_copies_runs_student(tiny, tmp_path):
    """The merged student a shared-base LoRA run writes at its end (and `dpdmd export` of its checkpoint) is the
    three-copy run's."""
    from safetensors.torch import load_file

    from distill_core.cli import main as cli
    from distill_core.training.trainer import train

    students = {}
    for mode in ("copies", "shared"):
        cfg = tiny(mode, run__max_steps=2, student__lora_rank=2, student__lora_mode=mode, optim__student_lr=1e-2)
        run = train(cfg, progress=False)
        out = tmp_path / f"{mode}.safetensors"
        assert cli(["export", str(run), "--format", "file", "--dtype", "float32", "--out", str(out)]) == 0
        students[mode] = load_file(str(run / "student.safetensors"))
        exported = load_file(str(out))
        assert all(torch.equal(students[mode][k], exported[k]) for k in exported)
    assert students["copies"].keys() == students["shared"].keys()
    assert all(torch.equal(students["copies"][k], students["shared"][k]) for k in students["copies"])
    teacher_weights = load_teacher(resolve(tiny())).network.state_dict()
    assert any(not torch.equal(students["shared"][k], teacher_weights[k].float()) for k in teacher_weights)
