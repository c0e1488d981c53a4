"""The collapse guard (training/collapse.py) on a DMD run that collapses, and its count by hand."""
import json

from distill_core.config import Config, resolve
from distill_core.training.collapse import CollapseGuard, advice
from distill_core.training.trainer import Trainer

SHAPES = ["a red square", "a green circle", "a blue triangle"]


def test_two_low_evaluations_in_a_row_warn_and_a_good_one_resets():
    guard = CollapseGuard(0.6, teacher_diversity=1.0)
    assert [guard.observe(d) for d in (0.5, 0.7, 0.5, 0.59, 0.3, 0.61, 0.2)] == [
        False, False, False, True, True, False, False]


def test_advice_follows_the_method():
    cfg = Config()
    cfg.optim.student_lr, cfg.optim.fake_lr = 1e-3, 5e-4
    for name, words in (("dmd", "method.name = 'dpdmd'"), ("decoupled_dmd", "method.name = 'dpdmd'"),
                        ("no_detach", "the detach"), ("dpdmd", "method.diversity_weight")):
        cfg.method.name = name
        text = advice(resolve(cfg))  # what a run calls it with: resolved
        assert words in text and "optim.fake_lr 0.0005 vs optim.student_lr 0.001" in text


def test_a_collapsing_dmd_run_warns_and_stops_with_a_checkpoint(tiny, capsys):
    """DMD at a student lr of 1e-2 and a fake score 100x slower loses most of the teacher's diversity within two
    steps (measured: teacher 0.93; student 0.91 at step 0, 0.10 at 2, 0.23 at 4): the guard warns at step 4, the
    second low evaluation, and eval.collapse_stop stops the run there with a checkpoint."""
    cfg = tiny("collapse", teacher__builtin="shapes", method__name="dmd", run__max_steps=8, run__checkpoint_every=0,
               optim__student_lr=1e-2, optim__fake_lr=1e-4, data__batch_size=8, method__fake_updates=1,
               data__prompts=SHAPES, eval__prompts=SHAPES, eval__seeds=4, eval__diversity_every=2,
               eval__collapse_fraction=0.6, eval__collapse_stop=True)
    trainer = Trainer(cfg, progress=False)
    assert trainer.fit() == "stopped" and trainer.step == 4
    run = trainer.run
    events = run.read_events()
    teacher = [e["diversity"] for e in events if e["event"] == "teacher_eval"]
    evals = [(e["step"], e["diversity"]) for e in events if e["event"] == "eval"]
    assert len(teacher) == 1 and [s for s, _ in evals] == [0, 2, 4]
    assert evals[0][1] > 0.6 * teacher[0] > max(evals[1][1], evals[2][1])
    warned, = [e for e in events if e["event"] == "collapse_warning"]
    assert warned["step"] == 4 and "method.name = 'dpdmd'" in warned["advice"]
    assert warned["message"] in capsys.readouterr().err
    status = json.loads(run.status_path.read_text())
    assert status["state"] == "stopped" and "collapse guard" in status["message"]
    assert (run.checkpoints / "step_00000004").is_dir()

    from trainer_ui import runs  # the Monitor marks it on the diversity plot and shows the line
    view = runs.view(run.root)
    assert (4, warned["diversity"], "collapse warning") in view.diversity
    assert (0, teacher[0], "teacher") in view.diversity
