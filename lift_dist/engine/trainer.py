"""The training loop: shards -> frozen CLIP + lightweight module + head -> DeepSpeed data parallel.

    train(cfg)          preflight (every check, nothing written) -> process group -> Trainer(plan).fit()
    Trainer.fit()       build -> resume -> for each epoch: train_epoch -> checkpoint -> evaluate -> log -> finish

Only the trainable tensors (module + head) go to DeepSpeed's optimizer, so only they are all-reduced,
hold optimizer state and are checkpointed. Components, each in its own module: the plan and its
checks (preflight), batches (train_data), model + head init (lift_model, head_setup), the engine
(engine_setup), the step's hooks (step), checkpoints (checkpoint), evaluation (evaluate), logging
(logger), the run directory (run_dir).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from deepspeed.comm import comm as ds_comm

from lift_dist.config import RunConfig
from lift_dist.data.manifest import group_of
from lift_dist.engine.checkpoint import Checkpointer
from lift_dist.engine.collectives import all_reduce_sum_, broadcast_text
from lift_dist.engine.distributed import DistInfo, setup
from lift_dist.engine.engine_setup import build_engine, build_model_on, grad_scaler, seed_everything
from lift_dist.engine.evaluate import evaluate, precisions
from lift_dist.engine.feature_cache import FeatureCache
from lift_dist.engine.logger import MetricsLogger
from lift_dist.engine.optimizer import lr_factor
from lift_dist.engine.preflight import Plan, preflight
from lift_dist.engine.step import PhaseTimer, StepGuard
from lift_dist.engine.train_data import Batch, TrainData
from lift_dist.errors import SECONDARY, LiftError, RunDirError, one_line
from lift_dist.lifecycle import StopRequest, die_with_parent
from lift_dist.losses import build_loss
from lift_dist.run_dir import summary_metrics, write_json


class Stopped(LiftError):
    """Training stopped on a signal after writing a checkpoint; `--resume latest` continues it. The exit
    status is the usual 128 + signal number."""

    label = "stopped"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


@dataclass
class Progress:
    epoch: int = 0  # the epoch being trained (0-based)
    step: int = 0  # optimizer steps done in it
    global_step: int = 0


@dataclass
class EpochMeter:
    """This rank's running sums of the epoch (carried through a mid-epoch checkpoint)."""

    loss_sum: float = 0.0
    loss_n: int = 0
    seen: int = 0
    data_s: float = 0.0
    elapsed_s: float = 0.0  # before the current process took over (a resumed epoch)


def train(cfg: RunConfig) -> dict:
    return train_plan(preflight(cfg))  # every check before the process group, the model or any file


def train_plan(plan: Plan) -> dict:
    die_with_parent()
    info = setup(plan.cfg.device)
    lock = plan.run.lock(plan.launch)
    try:
        take_the_run(plan, info, lock)
        return Trainer(plan, info).fit()
    finally:
        lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()


class RefusedOnRankZero(RunDirError):
    secondary = True  # rank 0's own line is the cause


def take_the_run(plan: Plan, info: DistInfo, lock) -> None:
    """Rank 0 creates the run directory and takes its lock; every rank learns the outcome. So when the
    lock is refused (a launch that started at the same moment took it), every rank stops with rank 0's
    line, instead of dying at a barrier on a broken connection (or waiting there until a launcher ends it)."""
    failure = None
    if info.is_main:
        try:
            plan.run.create()
            note = lock.acquire()
            if note:
                plan.notes.append(note)
        except Exception as e:  # whatever it is, the other ranks must hear of it rather than wait
            failure = e
    line = None if failure is None else one_line(failure) if isinstance(failure, (LiftError, OSError)) else repr(failure)
    refused = broadcast_text(line, info.device)
    if failure is not None:
        raise failure
    if refused is not None:
        raise RefusedOnRankZero(f"rank 0: {refused} {SECONDARY}")


class Trainer:
    def __init__(self, plan: Plan, info: DistInfo):
        self.plan, self.cfg, self.info, self.run = plan, plan.cfg, info, plan.run
        self.log = MetricsLogger(self.run, info.is_main, self.cfg.wandb_project, plan.cfg.model_dump(mode="json"))
        self.stop = StopRequest().install()
        self.progress, self.meter = Progress(), EpochMeter()
        self.lr = self.cfg.optim.lr

    # ---- set-up -----------------------------------------------------------------------------------
    def build(self) -> None:
        cfg, info, plan = self.cfg, self.info, self.plan
        seed_everything(cfg.seed, cfg.deterministic)
        self.precision, self.eval_precision = precisions(cfg, info.device)
        self.groups = [group_of(int(c)) for c in plan.group_counts]
        self.model, self.resolution = build_model_on(cfg, plan, info)
        cfg.data.resolution = self.resolution  # config.yaml records the resolved resolution (written by resume())
        self.params = [p for _, p in self.model.trainable_named_parameters()]
        self.engine = build_engine(self.model, self.params, cfg, plan, self.precision)
        self.loss_fn = build_loss(cfg.optim.loss, torch.as_tensor(plan.train.train_counts), scale=cfg.model.scale).to(info.device)
        self.data = TrainData(cfg, plan, info, self.resolution, cache=self._feature_cache())
        self.guard = StepGuard(info.device, self.params, self.stop, self._where)
        self.phases = PhaseTimer(self.engine, info.device) if cfg.profile_phases else None
        self.hooks = [h for h in (self.phases, self.guard) if h is not None]
        self.total_steps = sum(self.data.steps(e) for e in range(cfg.optim.epochs))
        run_id = plan.resume.state.get("run_id") if plan.resume else uuid.uuid4().hex
        self.checkpointer = Checkpointer(self.run, info.rank, info.world, cfg.optim.zero_stage, cfg.keep_checkpoints, run_id)

    def _feature_cache(self):
        if not self.cfg.data.feature_cache:
            return None
        return FeatureCache.prepare(self.model, self.cfg, self.plan.train, self.info, self.resolution, self.precision,
                                    log=self.log.info)

    def resume(self) -> None:
        ckpt = self.plan.resume
        if ckpt is not None:
            saved = self.checkpointer.load(ckpt, self.model, self.engine.optimizer)
            s = ckpt.state
            self.progress = Progress(s["epoch"], s["step_in_epoch"], s["global_step"])
            if self.progress.step > 0 and "meter" in saved:
                self.meter = EpochMeter(**saved["meter"])
            if grad_scaler(self.engine) is not None and "grad_scaler" in saved:
                grad_scaler(self.engine).load_state_dict(saved["grad_scaler"])
            self.guard.last_good = str(ckpt.path)
            self.log.info(f"resumed from {ckpt.path} at epoch {self.progress.epoch + 1}, step {self.progress.step} of the epoch")
        if self.info.is_main:  # only now: a resume refused on loading leaves the run's own record as it was
            cfg, plan = self.cfg, self.plan
            self.run.write_config(cfg)
            self.run.write_classes(plan.train.class_names, plan.train.train_counts, self.groups, cfg.metrics.groups_from)
            self.run.trim_history(self.progress.epoch)

    def _banner(self) -> None:
        rep, cfg, info = self.model.parameter_report(), self.cfg, self.info
        for note in self.plan.notes:
            self.log.info(note)
        self.log.info(f"lift-dist train: {rep['model']} + {','.join(rep['modules'])}: {rep['trainable']:,} trainable "
                      f"({rep['peft']:,} module + {rep['head']:,} head), {info.world} rank(s) [{info.backend}, {self.precision}], "
                      f"global batch {cfg.optim.batch_size} = {info.world} × {self.plan.micro} × {self.plan.accum} accumulation, "
                      f"{self.total_steps} steps")

    # ---- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict:
        self.build()
        try:
            self.resume()
            self._banner()
            t_start = time.time()
            for epoch in range(self.progress.epoch, self.cfg.optim.epochs):
                completed = self.train_epoch(epoch)
                if self.guard.stop_agreed:
                    self._stop_on_signal()
                self.save_checkpoint(completed)
                self.end_epoch(epoch, completed)
                if not completed:
                    break  # max_steps
            return self.finish(time.time() - t_start)
        finally:  # loader workers end now, not at interpreter exit
            self.data.close()
            self.log.close()
            self.stop.uninstall()

    def train_epoch(self, epoch: int) -> bool:
        """Train one epoch from the current progress; False when it ended early (max_steps or a stop)."""
        n_steps = self.data.steps(epoch)
        if self.progress.epoch != epoch:
            self.progress, self.meter = Progress(epoch, 0, self.progress.global_step), EpochMeter()
        batches = self.data.batches(epoch, skip_steps=self.progress.step)
        bar = self.log.progress_bar(n_steps, self.progress.step, f"epoch {epoch + 1}/{self.cfg.optim.epochs}")
        t0 = time.time() - self.meter.elapsed_s
        try:
            while self.progress.step < n_steps:
                self.train_step(epoch, batches)
                self._after_step(bar, t0, n_steps)
                if self.guard.stop_agreed or (self.cfg.max_steps and self.progress.global_step >= self.cfg.max_steps):
                    break
        finally:  # also on an error: the bar's line is cleared before the error is printed
            batches.close()
            if bar is not None:
                bar.close()
        self.meter.elapsed_s = time.time() - t0
        return self.progress.step >= n_steps

    def train_step(self, epoch: int, batches) -> None:
        """One optimizer step: `accum` micro-batches forward and backward, then DeepSpeed's step."""
        self.lr = self.cfg.optim.lr * lr_factor(self.cfg.optim, epoch, self.progress.global_step, self.total_steps)
        for g in self.engine.optimizer.param_groups:
            g["lr"] = self.lr
        n_step = self.data.real_samples(epoch, self.progress.step)
        for _ in range(self.plan.accum):
            batch = self._next_batch(batches)
            self.meter.data_s += batch.wait_s
            loss = self.forward_backward_step(batch, n_step)
            if batch.real:
                self.meter.loss_sum += float(loss) * batch.real
                self.meter.loss_n += batch.real
            self.meter.seen += batch.real
        for h in self.hooks:
            h.optimizer_step_end()
        self.progress.step += 1
        self.progress.global_step += 1

    def _next_batch(self, batches) -> Batch:
        try:
            return next(batches)
        except LiftError:  # a bad sample: the other ranks learn it at this step's exchange, and stop too
            if self.info.world > 1:
                self.guard.fail_together(self.info.rank)
            raise

    def forward_backward_step(self, batch: Batch, n_step: int) -> torch.Tensor:
        """Loss of one micro-batch (weighted so that the step's gradient is the mean over its real
        samples on all ranks), backward, engine step; returns the unweighted loss."""
        y = batch.y.to(self.info.device, non_blocking=True)
        for h in self.hooks:
            h.forward_start()
        logits = self.data.forward(self.engine, batch.x)
        if batch.real:
            loss_real = self.loss_fn(logits.float(), y)
            loss = loss_real * (batch.real * self.plan.accum * self.info.world / n_step)
        else:
            loss_real = loss = logits.float().sum() * 0.0
        for h in self.hooks:
            h.forward_end(loss)
        self.engine.backward(loss)
        for h in self.hooks:
            h.backward_end()
        self.engine.step()
        for h in self.hooks:
            h.step_end()
        return loss_real.detach()

    def _where(self) -> str:
        return f"epoch {self.progress.epoch + 1}, step {self.progress.global_step + 1} (lr {self.lr:.3g})"

    def _after_step(self, bar, t0: float, n_steps: int) -> None:
        m, step = self.meter, self.progress.global_step
        if bar is not None:
            elapsed = max(time.time() - t0, 1e-9)
            bar.set_postfix(refresh=False, loss=f"{m.loss_sum / max(1, m.loss_n):.3f}",
                            img_s=f"{m.seen * self.info.world / elapsed:.0f}", data_wait=f"{100 * m.data_s / elapsed:.0f}%")
            bar.update(1)
        if step % self.cfg.log_every_steps == 0:
            self.log.scalars({"loss": m.loss_sum / max(1, m.loss_n), "lr": self.lr}, step, "train")
        every = self.cfg.checkpoint_every_steps
        if every and step % every == 0 and self.progress.step < n_steps:
            self.meter.elapsed_s = time.time() - t0
            self.save_checkpoint(completed=False)

    # ---- checkpoints, stops, epoch ends --------------------------------------------------------------
    def save_checkpoint(self, completed: bool) -> None:
        p = self.progress
        state = {"epoch": p.epoch + 1 if completed else p.epoch, "step_in_epoch": 0 if completed else p.step,
                 "global_step": p.global_step, "run": self.plan.signature}
        rank_state = {"meter": asdict(self.meter)}
        if grad_scaler(self.engine) is not None:
            rank_state["grad_scaler"] = grad_scaler(self.engine).state_dict()
        path = self.checkpointer.save(p.global_step, self.model, self.engine.optimizer, state, rank_state)
        self.guard.last_good = str(path)

    def _stop_on_signal(self) -> None:
        self.save_checkpoint(completed=self.progress.step >= self.data.steps(self.progress.epoch))
        name = self.stop.name() or "SIGTERM"
        self.log.info(f"stopped by {name} at epoch {self.progress.epoch + 1}, step {self.progress.step}: checkpoint "
                      f"{self.guard.last_good} written; continue with --resume latest")
        raise Stopped(f"by {name}; checkpoint {self.guard.last_good} written, continue with --resume latest",
                      self.stop.signum or 15)

    def end_epoch(self, epoch: int, completed: bool) -> None:
        stats = torch.tensor([self.meter.loss_sum, float(self.meter.loss_n), float(self.meter.seen)], dtype=torch.float64)
        all_reduce_sum_(stats, self.info.device)
        elapsed = self.meter.elapsed_s
        entry = {"epoch": epoch + 1, "loss": stats[0].item() / max(1.0, stats[1].item()), "lr": self.lr,
                 "samples": int(stats[2].item()), "time_s": elapsed, "samples_per_s": stats[2].item() / max(elapsed, 1e-9),
                 "data_wait_share": self.meter.data_s / max(elapsed, 1e-9), "global_step": self.progress.global_step}
        if self.phases is not None:
            entry["phases_s"] = self.phases.take(data_s=self.meter.data_s)
        every = self.cfg.eval_every_epochs
        if completed and every and (epoch + 1) % every == 0 and epoch + 1 < self.cfg.optim.epochs:
            entry["eval_split"] = self.plan.eval.split
            entry["eval"] = summary_metrics(self.evaluate(tte=False))
        if self.info.is_main:
            self.run.append_history(entry)
        self.log.scalars({"epoch_loss": entry["loss"], "samples_per_s": entry["samples_per_s"]}, epoch + 1, "train")
        self.log.scalars(entry.get("eval", {}), epoch + 1, self.plan.eval.split)
        self.log.info(f"epoch {epoch + 1}/{self.cfg.optim.epochs}: loss {entry['loss']:.4f}, lr {self.lr:.3g}, "
                      f"{entry['samples_per_s']:.1f} img/s, data wait {100 * entry['data_wait_share']:.0f}%, {elapsed:.1f}s"
                      + (f", {self.plan.eval.split} {entry['eval']}" if "eval" in entry else ""))

    def evaluate(self, tte: bool) -> dict:
        return evaluate(self.model, self.plan.eval, self.plan.group_counts, self.cfg.data, resolution=self.resolution, tte=tte,
                        rank=self.info.rank, world=self.info.world, device=self.info.device, precision=self.eval_precision)

    # ---- the end -------------------------------------------------------------------------------------
    def finish(self, train_time: float) -> dict:
        self.data.close()
        self._write_comms_log()
        results = {"no_tte": self.evaluate(tte=False)}
        if self.cfg.data.tte:
            results["tte"] = self.evaluate(tte=True)
        metrics = self._final_metrics(results, train_time)
        if self.info.is_main:
            self.run.write_confusions(results)
            self.run.write_per_class(results, self.plan.train.class_names, self.plan.train.train_counts, self.groups)
            self.run.write_metrics(metrics)  # last: its presence means the run finished
        final = metrics["tte" if self.cfg.data.tte else "no_tte"]
        self.log.scalars(final, self.progress.global_step, self.plan.eval.split)
        self.log.info(f"final {self.plan.eval.split} " + ("(TTE) " if self.cfg.data.tte else "") + ", ".join(
            f"{k} {100 * v:.2f}" if v is not None else f"{k} n/a" for k, v in final.items()))
        dist.barrier()
        return metrics

    def _final_metrics(self, results: dict, train_time: float) -> dict:
        final = results["tte" if self.cfg.data.tte else "no_tte"]
        rep, cfg = self.model.parameter_report(), self.cfg
        metrics = summary_metrics(final) | {
            "epochs": cfg.optim.epochs, "steps": self.progress.global_step, "trainable_params": rep["trainable"],
            "module_params": rep["peft"], "head_params": rep["head"], "with_tte": bool(cfg.data.tte),
            "world_size": self.info.world, "device": self.info.device.type, "precision": self.precision,
            "eval_precision": self.eval_precision,
            "global_batch": cfg.optim.batch_size, "micro_batch": self.plan.micro, "accumulation": self.plan.accum,
            "eval_split": self.plan.eval.split, "eval_samples": int(sum(final["per_class_count"])),
            "train_time_s": train_time, "model": cfg.model.name, "modules": list(cfg.model.peft),
            "groups_from": cfg.metrics.groups_from, "group_classes": final["group_classes"],
        }
        return metrics | {mode: summary_metrics(m) for mode, m in results.items()}

    def _write_comms_log(self) -> None:
        if os.environ.get("LIFT_DIST_COMMS_LOG") != "1":
            return
        # DeepSpeed's own record of every collective it issued: {op: {message bytes: count}}.
        ops = {op: {str(size): rec[0] for size, rec in sizes.items()} for op, sizes in ds_comm.comms_logger.comms_dict.items()}
        write_json(self.run.comms_file(self.info.rank), {"optimizer_steps": self.progress.global_step, "ops": ops})
