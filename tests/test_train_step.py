"""One training step on the built-in teacher: its fake updates, the method options reaching the losses, and
the options recorded in the run config and the exported student."""
import pytest
import torch

from distill_core.config import load_config
from distill_core.export.exporters import export
from distill_core.export.student_file import read_student_info
from distill_core.training.trainer import Trainer, train


def optimizer_steps(opt) -> set[int]:
    return {int(s["step"]) for s in opt.state_dict()["state"].values()}


def test_each_step_runs_method_fake_updates_fake_steps(tiny):
    trainer = Trainer(tiny(method__fake_updates=3, run__max_steps=2, run__checkpoint_every=0), progress=False)
    trainer.fit()
    assert optimizer_steps(trainer.opt_s) == {2}
    assert optimizer_steps(trainer.opt_f) == {6}  # 3 fake-score steps before each of the 2 student steps


def fake_score_levels(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The levels the fake score is shown in one fake update (its own t) and one student update (DMD's re-noise)."""
    seen = []
    predict = trainer.teacher.predict

    def recording(net, x, levels, cond):
        if net is trainer.fake:
            seen.append(levels.double())
        return predict(net, x, levels, cond)

    trainer.teacher.predict = recording
    trainer.fake_update()
    trainer.student_update()
    return seen[0], seen[1]


def test_shift_options_reach_the_fake_score_and_the_renoising(tiny):
    """Same seed, same draws u: shifted runs see SD3's shift 3 u / (1 + 2 u), unshifted ones u itself (DMD2)."""
    runs = {}
    for choice in ("shifted", "unshifted"):
        cfg = tiny(choice, teacher__shift=3.0, method__renoise_shift=choice, method__fake_t_shift=choice)
        runs[choice] = fake_score_levels(Trainer(cfg, progress=False))
    for shifted, u in zip(runs["shifted"], runs["unshifted"]):
        assert not torch.allclose(shifted, u)
        torch.testing.assert_close(shifted, 3 * u / (1 + 2 * u), atol=1e-6, rtol=1e-6)
    renoise = runs["unshifted"][1]
    assert 0.02 <= float(renoise.min()) and float(renoise.max()) <= 0.98  # method.renoise_min / max
    assert len(set(renoise.tolist())) == len(renoise)  # per sample


@pytest.mark.parametrize("options", [
    {"method__anchor_step": 8, "method__renoise_shift": "unshifted", "method__fake_t_shift": "unshifted"},
    {"method__refine": "decoupled_dmd"},
    {},
])
def test_options_are_recorded_in_the_run_config_and_the_student(tiny, options):
    """k = N (= teacher.num_steps 8, the anchor is the teacher's full sample) trains like any k."""
    cfg = tiny(run__max_steps=1, **options)
    run = train(cfg, progress=False, finish=False)
    recorded = load_config(run / "config.toml")
    info = read_student_info(export(run)[0])
    expected = {"anchor_step": 3, "renoise_shift": "shifted", "fake_t_shift": "shifted", "refine": "dmd",
                **{k.split("__")[1]: v for k, v in options.items()}}
    for name, value in expected.items():
        assert getattr(recorded.method, name) == value == getattr(info, name)
    assert recorded.teacher.timestep_spacing == info.teacher_timestep_spacing == "trailing"


def test_an_ema_run_samples_and_exports_the_ema_weights(tiny):
    """student.ema_decay > 0: the finish's export and `dpdmd export` of a checkpoint both hold the EMA's weights."""
    from safetensors.torch import load_file

    trainer = Trainer(tiny(student__ema_decay=0.5, run__max_steps=2, run__checkpoint_every=0), progress=False)
    trainer.fit()
    raw, ema = trainer.acc.unwrap_model(trainer.student).state_dict(), trainer.ema.model.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # two steps at decay 0.5 leave them apart
    assert trainer.sampling_student() is trainer.ema.model
    exported = load_file(str(export(trainer.run.root)[0]))
    for state in (trainer.student_state_dict(), exported):
        assert state.keys() == ema.keys() and all(torch.equal(state[k], ema[k]) for k in ema)


@pytest.mark.parametrize("method", ["dpdmd", "decoupled_dmd"])
def test_the_fake_score_is_never_guided(tiny, method):
    """CFG belongs to the teacher alone (DMD's real score): the fake score sees only the prompts' own labels.
    Decoupled-DMD asks the teacher for the unconditional prediction on its own (the CA term)."""
    trainer = Trainer(tiny(teacher__guidance_scale=4.0, run__max_steps=1, run__checkpoint_every=0,
                           method__name=method), progress=False)
    null = int(trainer.teacher.null_condition()["class_labels"][0])
    labels = {"fake": [], "teacher": []}
    call = trainer.teacher.call_network

    def recording(net, x, levels, cond):
        who = "fake" if net is trainer.fake else "teacher" if net is trainer.teacher.network else None
        if who:
            labels[who].append(cond["class_labels"].flatten().tolist())
        return call(net, x, levels, cond)

    trainer.teacher.call_network = recording
    trainer.train_step()
    assert len(labels["fake"]) == 3  # two fake updates and the student update's DMD term
    assert all(len(ls) == 8 and null not in ls for ls in labels["fake"])  # batch 8, no unconditional half
    assert any(null in ls for ls in labels["teacher"])  # the teacher is guided: its calls hold the null label
    alone = [ls for ls in labels["teacher"] if set(ls) == {null}]  # an unconditional batch by itself
    assert len(alone) == (1 if method == "decoupled_dmd" else 0)
