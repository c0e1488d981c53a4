"""The DP-DMD training loop: two networks, two optimisers, two time scales, on accelerate.

    dpdmd train CONFIG                                   # one process
    accelerate launch -m distill_core.train CONFIG      # several GPUs or machines

One *step* is ``method.fake_updates`` fake-score updates on fresh detached
student samples, then one student update (DMD on the steps after the detach,
plus lambda times the diversity loss on the first step). All randomness comes
from generators saved in every checkpoint, so a resumed run equals an
uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import Config, load_config, resolve
from .errors import ConfigError, RunRefused, TrainingDiverged
from .lora import merged_state_dict
from .method import dmd_term, diversity_loss, fake_score_loss, student_rollout, teacher_anchor, velocity_target
from .runfolder import RunFolder
from .teachers import load_teacher
from .teachers.base import cond_to
from .train_state import is_sharded, load_network_state, load_optimizer_state, network_state, optimizer_state

# Fields that may change when a run is resumed; any other difference means another run.
RESUMABLE_CHANGES = {"run.max_steps", "run.checkpoint_every", "run.keep_checkpoints", "run.log_every", "run.device",
                     "run.output_dir"}  # a moved or copied run folder resumes where it now is


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available())
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device = 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    try:
        return Accelerator(mixed_precision=cfg.run.mixed_precision, cpu=cpu)
    except ValueError:  # an earlier Accelerator in this process had other settings
        AcceleratorState._reset_state(True)
        return Accelerator(mixed_precision=cfg.run.mixed_precision, cpu=cpu)


def config_differences(a: Config, b: Config) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k] and not s == "eval"
            and f"{s}.{k}" not in RESUMABLE_CHANGES]


class Trainer:
    """Owns the networks, optimisers, generators and run folder of one run."""

    def __init__(self, cfg: Config, *, progress: bool = True, restart: bool = False) -> None:
        self.cfg = resolve(cfg)
        self.restart = restart  # start over from step 0, deleting the folder's checkpoints
        self.acc = make_accelerator(self.cfg)
        self.main = self.acc.is_main_process
        self.run = RunFolder(Path(self.cfg.run.output_dir))
        self.progress = progress and self.main
        self._stop = threading.Event()

        c = self.cfg
        self.teacher = load_teacher(c, self.acc.device)
        sched = self.teacher.schedule
        target = c.method.anchor_target
        if target == "auto":
            target = "velocity" if sched.prediction_type == "flow" else "x0"
        if target == "velocity" and sched.prediction_type != "flow":  # resolve() catches the known families
            raise ConfigError("method.anchor_target = 'velocity' needs a flow teacher; use 'x0' (Appendix C) "
                              f"for the {sched.prediction_type} teacher")
        self.anchor_target = target
        self.student_levels = self.teacher.student_levels(c.student.num_steps)
        self.teacher_levels = self.teacher.teacher_levels(c.teacher.num_steps)

        # prompts first: the text encoders come and go before the trainable copies take their memory
        self.bank = self.teacher.prompt_bank(c.data.prompts)
        student = self.teacher.make_trainable_copy()
        fake = self.teacher.make_trainable_copy()
        if c.student.lora_rank:
            from .lora import add_lora, base_dtype
            student, fake = (add_lora(net, c.student.lora_rank, self.teacher.family, base_dtype(c), c.run.seed)
                             for net in (student, fake))
        if c.student.gradient_checkpointing:
            for net in (student, fake):
                if hasattr(net, "enable_gradient_checkpointing"):
                    net.enable_gradient_checkpointing()
        o = c.optim

        def adamw(net, lr):
            return torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr,
                                     betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)

        self.student, self.fake, self.opt_s, self.opt_f = self.acc.prepare(
            student, fake, adamw(student, o.student_lr), adamw(fake, o.fake_lr))
        self.sharded = is_sharded(self.acc)
        self.ema = None
        if c.student.ema_decay:
            if self.sharded:
                raise ConfigError("student.ema_decay is not available under FSDP (each process holds a shard); "
                                  "set it to 0 or train with DDP")
            import copy
            self.ema = copy.deepcopy(self.acc.unwrap_model(self.student)).requires_grad_(False).eval()
        rank = self.acc.process_index
        self.generators = {"data": torch.Generator(), "noise": torch.Generator()}
        self._seed_generators(rank, 0)
        self.step = 0

    # ---- randomness ------------------------------------------------------------------------
    def _seed_generators(self, rank: int, step: int) -> None:
        base = self.cfg.run.seed * 1_000_003 + rank * 7_919 + step
        self.generators["data"].manual_seed(base * 2 + 1)
        self.generators["noise"].manual_seed(base * 2 + 2)

    def _batch(self) -> tuple[dict, dict, torch.Tensor]:
        b = self.cfg.data.batch_size
        idx = torch.randint(0, len(self.bank), (b,), generator=self.generators["data"])
        dev = self.acc.device
        cond, null = cond_to(self.bank.get(idx), dev), cond_to(self.bank.null(b), dev)
        z = torch.randn((b, *self.teacher.latent_shape()), generator=self.generators["noise"]).to(dev)
        return cond, null, z

    # ---- predictors ----------------------------------------------------------------------------
    def _pred(self, net, cond):
        return lambda x, lv: self.teacher.predict(net, x, lv, cond)

    def _real(self, cond, null):
        w = self.cfg.teacher.guidance_scale
        return lambda x, lv: self.teacher.predict_cfg(self.teacher.network, x, lv, cond, null, w)

    def _lr_scale(self) -> float:
        w = self.cfg.optim.warmup_steps
        return min(1.0, (self.step + 1) / w) if w else 1.0

    # ---- the two updates -------------------------------------------------------------------------
    def fake_update(self) -> float:
        """Flow-matching (or epsilon) loss of the fake score on fresh detached student samples."""
        cond, _, z = self._batch()
        with self.acc.autocast():
            with torch.no_grad():
                from .method import ddim_sample
                x0 = ddim_sample(self._pred(self.student, cond), self.teacher.schedule, z, self.student_levels)
            loss = fake_score_loss(self._pred(self.fake, cond), self.teacher.schedule, x0, self.generators["noise"])
        self._check(loss, "fake-score")
        self.acc.backward(loss)
        self.acc.clip_grad_norm_(self.fake.parameters(), self.cfg.optim.grad_clip)
        self.opt_f.step()
        self.opt_f.zero_grad(set_to_none=True)
        return loss.item()

    def student_update(self) -> dict:
        """Eq. 8: L_DMD on the steps after the detach + lambda * L_div on the first step."""
        c, sched = self.cfg, self.teacher.schedule
        cond, null, z = self._batch()
        real = self._real(cond, null)
        lam = c.lam
        pick = None
        if c.method.backprop == "one_step":
            pick = int(torch.randint(1, c.student.num_steps, (1,), generator=self.generators["data"]))
        with self.acc.autocast():
            if lam > 0:
                x_tk, t_k = teacher_anchor(real, sched, z, self.teacher_levels, c.method.anchor_step)
            roll = student_rollout(self._pred(self.student, cond), sched, z, self.student_levels,
                                   detach_first=c.detach_first, backprop=c.method.backprop, pick=pick)
            dmd = dmd_term(roll.x0, sched, real, self._pred(self.fake, cond), self.generators["noise"],
                           low=c.method.renoise_min, high=c.method.renoise_max,
                           per_sample=c.method.renoise_per == "sample", normalizer=c.method.dmd_normalizer)
            div = torch.zeros((), device=z.device)
            if lam > 0:
                if self.anchor_target == "velocity":
                    div = diversity_loss(roll.first_pred, velocity_target(z, x_tk, t_k, self.student_levels[0]))
                else:
                    with torch.no_grad():
                        lv = torch.full((z.shape[0],), t_k)
                        x0_star = sched.to_x0(x_tk, lv, real(x_tk, lv))
                    div = diversity_loss(roll.first_x0, x0_star)
            loss = dmd.loss + lam * div
        self._check(loss, "student")
        self.acc.backward(loss)
        self.acc.clip_grad_norm_(self.student.parameters(), c.optim.grad_clip)
        self.opt_s.step()
        self.opt_s.zero_grad(set_to_none=True)
        if self.ema is not None:
            self._update_ema()
        return {"loss": loss.item(), "loss_dmd": dmd.loss.item(), "loss_div": div.item(), "dmd_grad": dmd.grad_norm}

    @torch.no_grad()
    def _update_ema(self) -> None:
        keep = self.cfg.student.ema_decay
        for avg, p in zip(self.ema.parameters(), self.acc.unwrap_model(self.student).parameters()):
            if p.requires_grad:
                avg.lerp_(p.detach().to(avg.dtype), 1.0 - keep)

    def sampling_student(self) -> torch.nn.Module:
        """The network that is sampled, evaluated and exported: the EMA when there is one."""
        return self.ema if self.ema is not None else self.acc.unwrap_model(self.student)

    def _check(self, loss: torch.Tensor, which: str) -> None:
        if not torch.isfinite(loss):
            last = ckpt.latest(self.run.checkpoints)
            where = f"the last good checkpoint is {last.name}" if last else "no checkpoint was written yet"
            msg = (f"the {which} loss became {loss.item()} at step {self.step + 1}; {where} and is kept. "
                   "Lower optim.student_lr / optim.fake_lr or use run.mixed_precision = 'no'.")
            raise TrainingDiverged(msg)

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        acc = self.acc
        tmp = ckpt.staging_dir(self.run.checkpoints, self.step)
        acc.wait_for_everyone()
        states = {"student": network_state(acc, self.student), "fake": network_state(acc, self.fake),
                  "optim_student": optimizer_state(self.student, self.opt_s),
                  "optim_fake": optimizer_state(self.fake, self.opt_f)}  # collectives: every rank takes part
        if self.ema is not None:
            states["ema"] = network_state(acc, self.ema)
        if self.main:
            for name, sd in states.items():
                tensors, meta = ckpt.optimizer_tensors(sd) if name.startswith("optim") else (sd, None)
                ckpt.save_tensors(tmp / f"{name}.safetensors", tensors, meta)
        ckpt.save_tensors(tmp / f"rng_rank{acc.process_index}.safetensors", ckpt.rng_tensors(self.generators))
        acc.wait_for_everyone()
        if self.main:
            state = {"step": self.step, "world_size": acc.num_processes, "config": self.cfg.to_dict()}
            final = ckpt.finalize(self.run.checkpoints, self.step, state, self.cfg.run.keep_checkpoints)
            self.run.append_event("checkpoint", step=self.step, path=str(final.relative_to(self.run.root)))
        acc.wait_for_everyone()

    def load_checkpoint(self, folder: Path) -> None:
        acc = self.acc
        state = ckpt.read_state(folder)
        from safetensors.torch import load_file
        for net, opt, name in ((self.student, self.opt_s, "student"), (self.fake, self.opt_f, "fake")):
            load_network_state(acc, net, load_file(str(folder / f"{name}.safetensors")))
            load_optimizer_state(net, opt, ckpt.optimizer_state_from(folder / f"optim_{name}.safetensors"))
        if self.ema is not None:
            ema = folder / "ema.safetensors"
            if not ema.exists():
                raise ConfigError(f"{folder.name} has no EMA weights: the run was started with student.ema_decay = 0; "
                                  "keep it at 0 to resume this run")
            load_network_state(acc, self.ema, load_file(str(ema)))
        self.step = int(state["step"])
        rng = folder / f"rng_rank{acc.process_index}.safetensors"
        if rng.exists() and state.get("world_size") == acc.num_processes:
            ckpt.restore_rng(rng, self.generators)
        else:  # a different number of processes: continue, deterministically but not bit-exactly
            self._seed_generators(acc.process_index, self.step)
            if self.main:
                print(f"note: {folder.name} was written by {state.get('world_size')} processes, resuming on "
                      f"{acc.num_processes}; training continues but is not bit-identical to an unbroken run")

    def try_resume(self) -> bool:
        """Resume from the newest complete checkpoint of this run folder, if there is one."""
        if self.run.config_path.exists():
            old = resolve(load_config(self.run.config_path))
            diff = config_differences(old, self.cfg)
            if diff:
                raise RunRefused(f"run.output_dir {str(self.run.root)!r} already holds a run with another config "
                                 f"(differs in {', '.join(diff)}); choose a new run.output_dir, or delete that "
                                 "folder to start over")
        if self.restart:
            if self.main:
                ckpt.discard(self.run.checkpoints)
            return False
        last = ckpt.resume_point(self.run.checkpoints, report=partial(print, file=sys.stderr) if self.main else None)
        if last is None:
            return False
        self.load_checkpoint(last)
        return True

    # ---- the loop --------------------------------------------------------------------------------------
    @contextmanager
    def _signals(self):
        """SIGINT / SIGTERM ask for a graceful stop (finish the step, checkpoint, exit)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._stop.is_set():  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._stop.set()
            if self.main:
                print("\nstopping after this step (a checkpoint will be written); press Ctrl-C again to abort",
                      file=sys.stderr)

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def request_stop(self) -> None:
        self._stop.set()

    def _broadcast_flag(self, flag: bool) -> bool:
        """Agree on a control decision across processes (any rank asking wins)."""
        if self.acc.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(t, reduction="sum").item() > 0)

    def fit(self) -> str:
        """Train to run.max_steps (resuming if possible); returns 'finished' or 'stopped'."""
        with self.run.locked() if self.main else nullcontext():  # RunRefused if another process trains here
            return self._fit()

    def _fit(self) -> str:
        from tqdm import tqdm

        from .evaluate import load_extractor
        from .snapshots import Snapshots

        c, run = self.cfg, self.run
        if self.main:
            run.create()
        self.acc.wait_for_everyone()
        resumed = self.try_resume()
        if self.main:
            from .runfolder import atomic_write_text
            atomic_write_text(run.config_path, c.to_toml())
            import os
            run.write_status("running", pid=os.getpid(), host=os.uname().nodename, step=self.step,
                             max_steps=c.run.max_steps, message="", processes=self.acc.num_processes)
            if resumed:
                run.append_event("resume", step=self.step)
            else:
                run.append_event("start", step=0, teacher=self.teacher.describe(), method=c.method.name,
                                 student_levels=self.student_levels, anchor_level=self.teacher_levels[c.method.anchor_step])
        snaps = None
        if self.main:
            extractor = load_extractor(c.eval.features) if c.eval.features else None
            snaps = Snapshots(c, self.teacher, extractor, self.acc.device)
            if not (run.samples / "teacher.png").exists():
                snaps.teacher_grid(run.samples / "teacher.png")
                run.append_event("grid", step=0, who="teacher", path="samples/teacher.png")
            if not resumed:
                self._snapshot(snaps, grid=True, metrics=bool(c.eval.every))
        state = "finished"
        bar = tqdm(total=c.run.max_steps, initial=self.step, desc="distilling", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        with self._signals():
            while self.step < c.run.max_steps:
                if self._broadcast_flag(self._stop.is_set() or (self.main and run.take_request("stop"))):
                    state = "stopped"
                    break
                t0 = time.perf_counter()
                for group in (self.opt_s, self.opt_f):
                    for g in group.param_groups:
                        g["lr"] = g.setdefault("initial_lr", g["lr"]) * self._lr_scale()
                fake_losses = [self.fake_update() for _ in range(c.method.fake_updates)]
                logs = self.student_update()
                self.step += 1
                dt = time.perf_counter() - t0
                logs.update(loss_fake=sum(fake_losses) / len(fake_losses), sec_per_step=round(dt, 4))
                bar.update(1)
                bar.set_postfix(dmd=f"{logs['loss_dmd']:.4f}", div=f"{logs['loss_div']:.4f}",
                                fake=f"{logs['loss_fake']:.4f}")
                if self.main:
                    if self.step % c.run.log_every == 0 or self.step == c.run.max_steps:
                        run.append_event("step", step=self.step, **{k: round(v, 6) for k, v in logs.items()})
                    grid = bool(c.eval.grid_every) and self.step % c.eval.grid_every == 0
                    metrics = bool(c.eval.every) and self.step % c.eval.every == 0
                    if grid or metrics:
                        self._snapshot(snaps, grid, metrics)
                    run.write_status("running", step=self.step)
                save_now = self._broadcast_flag(self.main and run.take_request("save"))
                if save_now or (c.run.checkpoint_every and self.step % c.run.checkpoint_every == 0):
                    self.save_checkpoint()
        bar.close()
        if self.acc.num_processes > 1 and not self.sharded:  # FSDP ranks hold different shards by design
            diff = self._replica_difference()
            if self.main:
                run.append_event("replicas", step=self.step, processes=self.acc.num_processes, max_difference=diff)
        last = ckpt.latest(run.checkpoints)
        if last is None or ckpt.read_state(last)["step"] != self.step:
            self.save_checkpoint()
        if self.main:
            if self.step == c.run.max_steps and not (c.eval.grid_every and self.step % c.eval.grid_every == 0):
                self._snapshot(snaps, grid=True, metrics=False)
            run.write_status(state, step=self.step,
                             message="" if state == "finished" else f"stopped at step {self.step}; run the same "
                             "command again to resume")
        self.acc.wait_for_everyone()
        return state

    def _replica_difference(self) -> float:
        """Largest difference between processes of per-tensor fingerprints of both networks (0 = in sync)."""
        prints = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().norm()])
                              for net in (self.student, self.fake) for p in net.parameters()]).flatten()
        gathered = self.acc.gather(prints.to(self.acc.device).unsqueeze(0)).cpu()
        return float((gathered - gathered[0]).abs().max())

    def _snapshot(self, snaps, grid: bool, metrics: bool) -> None:
        if self.sharded:  # an FSDP student only runs with every process; sample after training instead
            return
        net = self.sampling_student()
        if grid:
            path = self.run.samples / f"step_{self.step:08d}.png"
            snaps.student_grid(net, path, self.step)
            self.run.append_event("grid", step=self.step, who="student", path=str(path.relative_to(self.run.root)))
        if metrics:
            m = snaps.student_metrics(net)
            if m:
                self.run.append_event("eval", step=self.step, **m)

    def student_state_dict(self) -> dict:
        """The student's weights in the teacher's layout (LoRA adapters merged)."""
        if self.ema is not None:
            return merged_state_dict(self.ema.state_dict())
        return merged_state_dict(self.acc.get_state_dict(self.student))


def train(cfg: Config, *, progress: bool = True, finish: bool = True, restart: bool = False) -> Path:
    """Run (or resume) a distillation; then export, evaluate and report. Returns the run folder."""
    return run_trainer(Trainer(cfg, progress=progress, restart=restart), finish=finish)


def run_trainer(trainer: Trainer, *, finish: bool = True) -> Path:
    """Fit a built trainer, recording a failure in the run folder; then finish the run."""
    try:
        state = trainer.fit()
    except TrainingDiverged as e:
        if trainer.main:
            trainer.run.write_status("failed", message=str(e))
            trainer.run.append_event("failed", step=trainer.step, message=str(e))
        raise
    except RunRefused:  # refused before it started: the folder's status belongs to another process or run
        raise
    except BaseException as e:
        if trainer.main and trainer.run.root.exists():
            trainer.run.write_status("failed", message=f"{type(e).__name__}: {e}")
        raise
    if finish and state == "finished" and trainer.main and trainer.sharded:
        print(f"FSDP run: export and evaluate after training with `dpdmd export {trainer.run.root}` and "
              "`dpdmd evaluate` (an FSDP student samples only with every process)", file=sys.stderr)
    elif finish and state == "finished" and trainer.main:
        from .finish import finish_run
        finish_run(trainer)
    trainer.acc.wait_for_everyone()
    return trainer.run.root


def main(argv: list[str] | None = None) -> int:
    """Entry for ``accelerate launch -m distill_core.train CONFIG``: the same as ``dpdmd train``."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
