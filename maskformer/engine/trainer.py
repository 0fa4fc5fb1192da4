"""The MaskFormer trainer: detectron2's DefaultTrainer with this project's data, optimizer and evaluation."""

import logging
import os
import time
import weakref
from collections import OrderedDict

import torch
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    hooks,
)
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..data import build as loaders
from ..data.resumable import ResumableTrainLoader, step_seed
from ..evaluation import accepts_semantic_labels, build_evaluator
from ..maskformer_model import MaskFormer
from ..solver import build_optimizer, set_schedule_iteration
from ..test_time_augmentation import SemanticSegmentorWithTTA
from ..utils.cpu_bfloat16 import warn_if_bfloat16_is_emulated
from .checkpoint import MaskFormerCheckpointer
from .config_loading import ConfigError
from .preemption import StopOnSignal
from .run_logging import FILE_ONLY

__all__ = ["Trainer", "CPUAutocastTrainer"]

logger = logging.getLogger(__name__)

# the window of the median that detectron2's default writers log losses with
_SMOOTHING_WINDOW = 20


class Trainer(DefaultTrainer):
    """
    DefaultTrainer with:

    - training batches from the mapper named by INPUT.DATASET_MAPPER_NAME, test batches read and
      checked the same way (:mod:`maskformer.data.build`; DATALOADER.SKIP_BAD_SAMPLES in both);
    - :func:`maskformer.solver.build_optimizer` and detectron2's DeepLab scheduler (WarmupPolyLR);
    - evaluators by the test datasets' ``evaluator_type`` (:func:`maskformer.evaluation.build_evaluator`),
      fed the semantic labels rather than the scores where they read no more, plus a
      test-time-augmented evaluation at the end when TEST.AUG.ENABLED;
    - DistributedDataParallel on CPU too (gloo; detectron2 would pass CUDA device ids);
    - SOLVER.AMP.DTYPE as the mixed-precision type, and mixed precision on CPU too (bfloat16);
    - :class:`MaskFormerCheckpointer` and a stop on SIGTERM / SIGUSR1 with a checkpoint
      (:mod:`maskformer.engine.preemption`);
    - exact resumption: the checkpoint holds the data stream's position and the run seed
      (:mod:`maskformer.data.resumable`) and the smoothing window of the logged losses; each step
      seeds torch's generator from (run seed, iteration, rank), so a resumed run trains and logs
      as the uninterrupted one would have;
    - resuming with another config: the learning rate follows this config's schedule as if the
      run had started with it (SOLVER.MAX_ITER raised extends a run); a resume with nothing left
      to train trains, evaluates and logs nothing (docs/training.md);
    - the writers' period SOLVER.LOG_PERIOD, and the model printout in the log file only.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__'s sequence, with two steps our own (it hard-codes both):
        # wrapping the model (its create_ddp_model passes CUDA device ids, which
        # DistributedDataParallel refuses for a CPU model) and the step loop (AMPTrainer is
        # CUDA-only).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = self.wrap_model(model)
        self._trainer = self.build_step_loop(cfg, model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        logger.info(f"Model:\n{model}", extra=FILE_ONLY)
        return model

    @staticmethod
    def wrap_model(model):
        """DistributedDataParallel when there are several processes, on the model's device."""
        on_gpu = next(model.parameters()).device.type == "cuda"
        device_ids = [comm.get_local_rank()] if on_gpu else None
        return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)

    @staticmethod
    def build_step_loop(cfg, model, data_loader, optimizer) -> SimpleTrainer:
        """
        The loop running one step per iteration: float32 (SimpleTrainer), or with
        SOLVER.AMP.ENABLED the forward under autocast to SOLVER.AMP.DTYPE: detectron2's
        AMPTrainer on CUDA, :class:`CPUAutocastTrainer` on CPU, in bfloat16 there.
        """
        if not cfg.SOLVER.AMP.ENABLED:
            return SimpleTrainer(model, data_loader, optimizer)
        dtype = getattr(torch, cfg.SOLVER.AMP.DTYPE)
        if next(model.parameters()).device.type == "cuda":
            return AMPTrainer(model, data_loader, optimizer, precision=dtype)
        if dtype != torch.bfloat16:
            # float16 on CPU would need gradient scaling and has no fast kernels on most CPUs
            logger.warning(
                f"SOLVER.AMP.DTYPE {cfg.SOLVER.AMP.DTYPE} is not supported on CPU: "
                "training with bfloat16 autocast instead."
            )
        warn_if_bfloat16_is_emulated(logger, "SOLVER.AMP.ENABLED False")
        return CPUAutocastTrainer(model, data_loader, optimizer, precision=torch.bfloat16)

    @classmethod
    def build_checkpointer(
        cls, cfg, model, *, strict: bool = False, **checkpointables
    ) -> MaskFormerCheckpointer:
        """
        The one place checkpointers are made (training and --eval-only). Saves to OUTPUT_DIR on
        the main process only, atomically; loads without running pickled code; ``strict``
        (--eval-only) refuses weights that do not fit the model instead of skipping them;
        ``checkpointables`` (e.g. trainer=...) are saved with the model.
        """
        return MaskFormerCheckpointer(model, cfg.OUTPUT_DIR, strict=strict, **checkpointables)

    @classmethod
    def build_train_loader(cls, cfg):
        return loaders.build_train_loader(cfg)

    def run_step(self):
        resumable = isinstance(self.data_loader, ResumableTrainLoader)
        if resumable:
            # the model's draws (dropout, point sampling) depend on the iteration alone, not on
            # what drew before it (evaluation, an earlier part of the run before a resume)
            torch.manual_seed(step_seed(self.data_loader.seed, self.iter, comm.get_rank()))
        super().run_step()
        if resumable:
            self.data_loader.gather_state()

    def state_dict(self):
        state = super().state_dict()
        state["max_iter"] = self.max_iter  # for the message of a resume with another MAX_ITER
        if isinstance(self.data_loader, ResumableTrainLoader):
            state["data"] = self.data_loader.state_dict()
        storage = getattr(self, "storage", None)
        if storage is not None:
            # the writers log smoothed scalars (losses) as medians over the last values: a resumed
            # run needs them to log what the uninterrupted run did
            state["smoothed_scalars"] = {
                name: storage.history(name).values()[-_SMOOTHING_WINDOW:]
                for name, smoothed in storage.smoothing_hints().items()
                if smoothed
            }
        return state

    def load_state_dict(self, state):
        # The scheduler's saved state is left out: its schedule (WarmupPolyLR's max_iters, ...)
        # would override the config's, and a MAX_ITER raised to extend the run would fail.
        schedule_hook = hooks.LRScheduler.__qualname__
        hooks_state = {k: v for k, v in state.get("hooks", {}).items() if k != schedule_hook}
        super().load_state_dict({**state, "hooks": hooks_state})
        self._follow_config_schedule(state.get("max_iter"))
        if isinstance(self.data_loader, ResumableTrainLoader):
            if "data" in state:
                self.data_loader.load_state_dict(state["data"])
            else:
                logger.warning("The checkpoint has no data stream position: the data restarts")
        # put back into the event storage, which train() creates, by before_train
        self._resumed_scalars = state.get("smoothed_scalars", {})

    def _follow_config_schedule(self, checkpoint_max_iter):
        """Put the learning rates at the next iteration of this config's schedule (the loaded
        optimizer holds the checkpointed run's); refuse a checkpoint past SOLVER.MAX_ITER."""
        done = self.iter + 1
        if done > self.max_iter:
            raise ConfigError(
                f"The checkpoint in {self.cfg.OUTPUT_DIR} has trained {done} iterations, more than "
                f"SOLVER.MAX_ITER {self.max_iter}: raise SOLVER.MAX_ITER above {done} to extend the "
                f"run, or evaluate it with --eval-only --resume"
            )
        logged_group = hooks.LRScheduler.get_best_param_group_id(self.optimizer)
        checkpoint_lr = self.optimizer.param_groups[logged_group]["lr"]
        set_schedule_iteration(self.scheduler, done)
        lr = self.optimizer.param_groups[logged_group]["lr"]
        if checkpoint_lr == lr and checkpoint_max_iter in (None, self.max_iter):
            return
        previous = f" (SOLVER.MAX_ITER {checkpoint_max_iter} there)" if checkpoint_max_iter else ""
        logger.warning(
            f"Resuming after iteration {done - 1} with another schedule than the checkpoint's"
            f"{previous}: the learning rate follows this config's (SOLVER.MAX_ITER "
            f"{self.max_iter}, {self.cfg.SOLVER.LR_SCHEDULER_NAME}) as if the run had started with "
            f"it; at iteration {done} it is {lr:.6g} ({checkpoint_lr:.6g} in the checkpointed run)"
        )

    @property
    def nothing_to_train(self) -> bool:
        """Whether SOLVER.MAX_ITER iterations were done before training (a finished run resumed)."""
        return self.start_iter >= self.max_iter

    def train(self):
        if self.nothing_to_train:
            # no hooks: no evaluation again, no metrics row and no TensorBoard file
            logger.warning(
                f"Nothing to train: {self.start_iter} of SOLVER.MAX_ITER {self.max_iter} iterations "
                f"are done. Raise SOLVER.MAX_ITER to extend the run; evaluate it with --eval-only "
                f"--resume"
            )
            return None
        return super().train()

    def before_train(self):
        # into the histories only, not as the latest values: the writers would log those again
        for name, values in getattr(self, "_resumed_scalars", {}).items():
            self.storage.smoothing_hints()[name] = True
            for value, iteration in values:
                self.storage.histories()[name].update(value, iteration)
        super().before_train()

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return loaders.build_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """
        DefaultTrainer.test; a MaskFormer whose evaluators all read at most the argmax of its
        semantic scores (this project's do) gives them that argmax without the scores
        (:meth:`MaskFormer.semantic_labels_only`).
        """
        if evaluators is None:
            try:
                evaluators = [cls.build_evaluator(cfg, name) for name in cfg.DATASETS.TEST]
            except NotImplementedError:  # a subclass's: DefaultTrainer.test skips those datasets
                return super().test(cfg, model)
        elif isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        module = model.module if isinstance(model, DistributedDataParallel) else model
        if isinstance(module, MaskFormer) and all(map(accepts_semantic_labels, evaluators)):
            with module.semantic_labels_only():
                return super().test(cfg, model, evaluators)
        return super().test(cfg, model, evaluators)

    def build_hooks(self):
        hook_list = super().build_hooks()
        if comm.is_main_process():
            # DefaultTrainer.build_hooks hard-codes the writers' period (20); they come last
            writers = hook_list.pop()
            assert isinstance(writers, hooks.PeriodicWriter), writers
            hook_list.append(hooks.PeriodicWriter(writers._writers, self.cfg.SOLVER.LOG_PERIOD))
        # SIGTERM / SIGUSR1: checkpoint and exit after the step, before any evaluation
        first_eval = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook))
        hook_list.insert(first_eval, StopOnSignal(self.checkpointer))
        if self.cfg.TEST.AUG.ENABLED:

            def test_with_TTA_and_save_results():
                self._last_tta_results = self.test_with_TTA(self.cfg, self.model)
                return self._last_tta_results

            # Once, after training (period 0); before the writer, which the main process has last.
            tta = hooks.EvalHook(0, test_with_TTA_and_save_results)
            hook_list.insert(len(hook_list) - int(comm.is_main_process()), tta)
        return hook_list

    def after_train(self):
        # detectron2's EvalHook evaluates after training when iter + 1 >= max_iter, which also holds
        # when the last iteration failed (a non-finite loss): evaluate only after a completed run
        # (the train loop leaves iter == max_iter then).
        if self.iter >= self.max_iter:
            return super().after_train()
        self.storage.iter = self.iter
        for hook in self._hooks:
            if not isinstance(hook, hooks.EvalHook):
                hook.after_train()

    @property
    def last_eval_results(self) -> dict:
        """Metrics of the last evaluation during training, TTA ones included ({} if none ran)."""
        return {**getattr(self, "_last_eval_results", {}), **getattr(self, "_last_tta_results", {})}

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate ``model`` wrapped in :class:`SemanticSegmentorWithTTA`; metric groups get a "_TTA" suffix."""
        logger.info("Running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [
            build_evaluator(
                cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA"), semantic_only=True
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((f"{k}_TTA", v) for k, v in results.items())


class CPUAutocastTrainer(SimpleTrainer):
    """
    SimpleTrainer with the forward (model and losses) under CPU autocast to ``precision``, as
    detectron2's AMPTrainer does on CUDA (whose step asserts CUDA). Backward and the optimizer step
    run outside autocast, as there. bfloat16 has float32's exponent range, so the gradients need
    no loss scaling.
    """

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision

    def run_step(self):
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
