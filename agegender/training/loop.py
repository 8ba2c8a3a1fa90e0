"""The training loop: Caffe's ``Solver::Step`` on a :class:`~agegender.caffe2torch.CaffeNet`, fast on a GPU.

Per iteration ``it`` (0-based), as Caffe does: validate first when ``test_interval`` divides ``it`` (and
``it > 0`` or ``test_initialization``); clear the gradients; run ``iter_size`` forward/backward passes,
each on ``batch_size`` records (:mod:`agegender.training.data`), the loss being ``sum(loss_weight * loss
top)``; apply the update with the rate of ``it`` (:class:`~agegender.training.sgd.CaffeSGD`); then
``it += 1`` and, when ``snapshot`` divides it, write a checkpoint. After ``max_iter`` a last checkpoint
(``snapshot_after_train``) and, when ``test_interval`` divides ``max_iter``, a last validation.

Speed: the step never waits for the device. Losses and accuracies go to a device buffer and are read
back (one synchronisation) every ``log_every`` iterations, where NaN/inf losses are detected and the
progress callbacks run; the rate is a device tensor the step reads. On CUDA the step is captured once as a
CUDA graph over static input buffers and replayed (:class:`StepFunction`; the same function is called
directly elsewhere, which is how the CPU tests check it against the plain step), with optional bf16
autocast, channels-last layout and ``torch.compile``. Under ``torchrun`` the net is wrapped in
DistributedDataParallel (gradients averaged over processes, as Caffe's multi-GPU solver does).

Robustness: checkpoints are atomic; an interrupt (Ctrl-C, or :meth:`Trainer.request_stop`) stops after the
current step with a checkpoint; a NaN or infinite loss raises :class:`~agegender.errors.TrainingError`
naming the iteration, the rate and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..caffe2torch.net import CaffeNet
from ..errors import TrainingError
from ..evaluation.engines import backend_flags
from . import checkpoint as ckpt
from .data import TrainBatches, validation_batches
from .logs import CSVLog, CURVE_PNG, TRAIN_LOG, VAL_LOG, TensorBoardLog, plot_training_curve, read_csv_rows
from .sgd import CaffeSGD, caffe_param_groups, caffe_params
from .solver import LearningRateSchedule, SolverConfig
from .trainable import accuracy_tops, copy_weights, data_inputs, loss_terms

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
COMPILE_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})  # torch.compile modes that make CUDA graphs
TRAIN_ACCURACY = "train_accuracy"


@dataclass
class TrainOptions:
    """How to run (not what to learn, which the solver says).

    ``device`` None takes CUDA when available. ``precision``: ``fp32`` (exact float32, TF32 off), ``tf32``
    (TF32 matmuls and convolutions on CUDA) or ``bf16`` (autocast; weights, gradients and the update stay
    float32). ``cuda_graphs`` None captures the step on CUDA when not running distributed (and not when
    ``compile_mode`` is ``reduce-overhead``/``max-autotune`` or ``compile_backend`` ``cudagraphs``: then
    torch.compile's own CUDA graphs serve, each step marked for them). ``static_step``
    runs the captured step function without capture (what CUDA runs, on any device; for tests).
    ``log_every`` None: the solver's ``display`` (20 when it is 0). ``keep_checkpoints`` newest are kept
    (0: all). ``snapshot_caffemodel`` also writes ``iter_N.caffemodel`` beside each checkpoint, as Caffe does.
    """

    device: str | None = None
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    cuda_graphs: bool | None = None
    static_step: bool = False
    seed: int = 0
    log_every: int | None = None
    keep_checkpoints: int = 2
    snapshot_caffemodel: bool = False
    handle_signals: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")


@dataclass
class IterationRecord:
    """What one iteration logged (read back at a flush)."""

    iteration: int  # the iteration whose update this was (0-based)
    lr: float
    loss: float  # sum of loss_weight * loss, averaged over iter_size (and processes)
    smoothed_loss: float  # mean over the last average_loss iterations, as Caffe displays
    outputs: dict[str, float]  # each loss top and accuracy top

    def row(self) -> dict[str, object]:
        return {"iteration": self.iteration, "lr": self.lr, "loss": self.loss, "smoothed_loss": self.smoothed_loss,
                **self.outputs}


@dataclass
class TrainResult:
    """The outcome of :meth:`Trainer.run`."""

    status: str  # "finished" | "interrupted"
    start_iteration: int
    iteration: int
    max_iter: int
    seconds: float
    images_per_second: float
    last_loss: float | None
    smoothed_loss: float | None
    first_smoothed_loss: float | None
    checkpoint: Path | None
    validations: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"status": self.status, "start_iteration": self.start_iteration, "iteration": self.iteration,
                "max_iter": self.max_iter, "seconds": self.seconds, "images_per_second": self.images_per_second,
                "last_loss": self.last_loss, "smoothed_loss": self.smoothed_loss,
                "first_smoothed_loss": self.first_smoothed_loss,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None, "validations": self.validations}


class TrainerCallback:
    """Hooks of a run (progress bars, loggers); every method does nothing by default."""

    def on_start(self, trainer: "Trainer", start_iteration: int) -> None: ...

    def on_records(self, trainer: "Trainer", records: list[IterationRecord], images_per_second: float) -> None: ...

    def on_validation(self, trainer: "Trainer", iteration: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", iteration: int, path: Path) -> None: ...

    def on_end(self, trainer: "Trainer", result: TrainResult) -> None: ...


class StepFunction:
    """One solver iteration over static buffers: ``images`` (iter_size * batch images), ``labels``, and
    ``out`` (the loss, then each reported top, averaged over the passes).

    :meth:`run` clears the gradients, runs the passes and applies the update; it reads its inputs only
    from the buffers and writes only into ``out``, so CUDA captures it once (:meth:`capture`) and replays it.
    """

    def __init__(self, model: torch.nn.Module, optimizer: CaffeSGD, terms: Sequence[tuple[str, float]],
                 report: Sequence[str], iter_size: int, batch_size: int, image_shape: tuple[int, int, int],
                 device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager],
                 channels_last: bool, ddp: bool = False, prediction: str | None = None) -> None:
        self.model, self.optimizer = model, optimizer
        self.terms, self.report = list(terms), list(report)
        self.iter_size, self.batch_size = iter_size, batch_size
        self.autocast, self.ddp = autocast, ddp
        shape = (iter_size * batch_size, *image_shape)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.images = torch.zeros(shape, dtype=torch.float32, device=device).contiguous(memory_format=memory_format)
        self.labels = torch.zeros((iter_size * batch_size,), dtype=torch.int64, device=device)
        self.prediction = prediction
        self.out = torch.zeros((1 + len(self.report) + (prediction is not None),), dtype=torch.float32, device=device)
        self.graph: Any = None
        extra = [prediction] if prediction else []
        self.outputs = list(dict.fromkeys([t for t, _ in self.terms] + self.report + extra))

    def load(self, sub: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Copy pass ``sub``'s batch into the static buffers."""
        part = slice(sub * self.batch_size, (sub + 1) * self.batch_size)
        self.images[part].copy_(images)
        self.labels[part].copy_(labels)

    def run(self) -> None:
        """The step body (what a CUDA graph captures)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        for sub in range(self.iter_size):
            part = slice(sub * self.batch_size, (sub + 1) * self.batch_size)
            sync = contextlib.nullcontext()
            if self.ddp and sub < self.iter_size - 1:
                sync = self.model.no_sync()  # type: ignore[operator]
            with sync:
                values = forward_backward(self.model, self.images[part], self.labels[part], self.terms, self.report,
                                          self.outputs, self.autocast, self.prediction)
            total = values if total is None else total + values
        assert total is not None
        self.out.copy_(total / self.iter_size)
        self.optimizer.step()

    def capture(self, warmup: int = 3) -> None:
        """Capture :meth:`run` as a CUDA graph. The warm-up steps change the weights, the momentum history
        and the buffers; they are put back afterwards, so the run continues exactly where it was."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        saved = [t.detach().clone() for t in params]
        history = [self.optimizer.state[p]["history"].clone() if "history" in self.optimizer.state[p] else None
                   for p in params]
        buffers = [b for b in self.model.buffers()]
        saved_buffers = [b.clone() for b in buffers]
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    self.run()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.run()
            self.graph = graph
        finally:  # also when the capture fails: the run goes on uncaptured from the same state
            with torch.no_grad():
                for p, value, h in zip(params, saved, history):
                    p.copy_(value)
                    if "history" in self.optimizer.state[p]:
                        if h is not None:
                            self.optimizer.state[p]["history"].copy_(h)
                        else:
                            self.optimizer.state[p]["history"].zero_()
                for b, value in zip(buffers, saved_buffers):
                    b.copy_(value)

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.run()


def forward_backward(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     terms: Sequence[tuple[str, float]], report: Sequence[str], outputs: Sequence[str],
                     autocast: Callable[[], contextlib.AbstractContextManager],
                     prediction: str | None = None) -> torch.Tensor:
    """One forward and backward pass; returns (detached, float32) the loss, each ``report`` top and, with
    ``prediction`` (a scores blob), the batch's top-1 accuracy on it."""
    with autocast():
        blobs = model(images, labels, outputs=list(outputs))
    loss = None
    for top, weight in terms:
        term = blobs[top].float() * weight
        loss = term if loss is None else loss + term
    assert loss is not None
    loss.backward()
    values = [loss.detach()] + [blobs[top].detach().float().reshape(()) for top in report]
    if prediction is not None:
        scores = blobs[prediction].detach()
        values.append((scores.reshape(scores.shape[0], -1).argmax(1) == labels.reshape(-1)).float().mean())
    return torch.stack(values)


class Trainer:
    """Train ``net`` (a TRAIN-phase :class:`CaffeNet` with its weights initialised) by ``solver`` on
    ``train`` batches, writing checkpoints and logs under ``out_dir`` (see the module docstring).

    ``val`` (a TEST-transform resident split) and ``val_net`` (the TEST-phase net) enable the solver's
    periodic validation. ``fingerprint`` identifies the run for resumes. ``dist`` is the
    :class:`~agegender.training.distributed.DistContext` under torchrun.
    """

    def __init__(self, net: CaffeNet, solver: SolverConfig, train: TrainBatches, out_dir: str | Path, *,
                 options: TrainOptions | None = None, val: Any = None, val_net: CaffeNet | None = None,
                 val_batch_size: int | None = None, callbacks: Sequence[TrainerCallback] = (),
                 fingerprint: dict | None = None, dist: Any = None, net_def: Any = None) -> None:
        self.net, self.solver, self.train_batches = net, solver, train
        self.out_dir = Path(out_dir)
        self.options = options or TrainOptions()
        self.val, self.val_net = val, val_net
        self.val_batch_size = val_batch_size or train.plan.batch_size
        self.callbacks = list(callbacks)
        self.fingerprint = dict(fingerprint or {})
        self.dist = dist
        self.net_def = net_def if net_def is not None else getattr(net, "net_def", None)
        self.device = torch.device(self.options.device) if self.options.device else (
            dist.device if dist is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.is_main = dist is None or dist.rank == 0
        self._stop = threading.Event()
        self.iteration = 0
        self.last_checkpoint: Path | None = None
        terms = loss_terms(net)
        self.terms = [(t.top, t.weight) for t in terms]
        term_tops = [t for t, _ in self.terms]
        accuracy = [t for t in accuracy_tops(net) if t not in term_tops]
        # logged besides the total loss: each loss top when there are several, every accuracy top, and
        # (Caffe's TRAIN nets rarely have an Accuracy layer) the top-1 accuracy of the main loss's scores
        self.report = (term_tops if len(term_tops) > 1 else []) + accuracy
        self.prediction: str | None = None
        if not accuracy:
            main = max(reversed(terms), key=lambda t: t.weight)
            self.prediction = net.ir.layer(main.layer).bottoms[0]
        self.outputs = list(dict.fromkeys(term_tops + self.report + ([self.prediction] if self.prediction else [])))
        self.logged = self.report + ([TRAIN_ACCURACY] if self.prediction else [])
        data_inputs(net)

    # --- control --------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current step, with a checkpoint (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @contextlib.contextmanager
    def _signals(self):
        if not self.options.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):  # first Ctrl-C: stop cleanly; second: now
            if self._stop.is_set():
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            log.warning("interrupt: stopping after this step, with a checkpoint (Ctrl-C again to abort now)")
            self._stop.set()

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # --- setup ----------------------------------------------------------------------------------------
    def _autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        if self.options.precision != "bf16":
            return contextlib.nullcontext
        device_type = self.device.type
        capturing = self._use_graphs()

        def make() -> contextlib.AbstractContextManager:
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16, cache_enabled=not capturing)

        return make

    def _use_graphs(self) -> bool:
        """Whether the step is captured as one CUDA graph here: on CUDA, not distributed, not turned off,
        and not when ``torch.compile`` makes CUDA graphs itself (mode ``reduce-overhead``/``max-autotune``,
        backend ``cudagraphs``: capturing those inside our capture fails)."""
        if self.device.type != "cuda" or self.dist is not None:
            return False
        if self._compile_graphs():
            return False
        return self.options.cuda_graphs is not False

    def _compile_graphs(self) -> bool:
        """``torch.compile`` with CUDA graphs of its own (cudagraph trees)."""
        o = self.options
        return bool(o.compile) and self.device.type == "cuda" and (
            o.compile_mode in COMPILE_GRAPH_MODES or o.compile_backend == "cudagraphs")

    def _setup(self) -> None:
        net = self.net.to(self.device)
        if self.options.channels_last and not net.channels_last:
            net.to_channels_last()
        net.train()
        self.entries = caffe_params(net)
        self.optimizer = CaffeSGD.from_solver(caffe_param_groups(self.entries), self.solver)
        self.schedule = LearningRateSchedule(self.solver)
        model: torch.nn.Module = net
        if self.dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            # a single-device module: device_ids names its GPU (None when the device has no index: DDP then
            # takes the module's own device; [None] would fail)
            cuda_index = self.device.index if self.device.type == "cuda" else None
            model = DistributedDataParallel(net, device_ids=[cuda_index] if cuda_index is not None else None)
        if self.options.compile:
            model = torch.compile(model, backend=self.options.compile_backend, mode=self.options.compile_mode)
        self.model = model
        plan = self.train_batches.plan
        self.images_per_iteration = plan.records_per_iteration
        self.step_fn: StepFunction | None = None
        if self.options.static_step or self._use_graphs():
            self.optimizer.use_rate_tensor(self.device)
            self.step_fn = StepFunction(model, self.optimizer, self.terms, self.report, plan.iter_size,
                                        plan.batch_size, self.train_batches.output_shape(), self.device,
                                        self._autocast(), self.options.channels_last, ddp=self.dist is not None,
                                        prediction=self.prediction)

    # --- one step -------------------------------------------------------------------------------------
    def _plain_step(self, iteration: int) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        iter_size = self.train_batches.plan.iter_size
        for sub in range(iter_size):
            images, labels = self.train_batches.batch(iteration, sub)
            sync = contextlib.nullcontext()
            if self.dist is not None and sub < iter_size - 1:
                sync = self.model.no_sync()  # type: ignore[operator]
            with sync:
                values = forward_backward(self.model, images, labels, self.terms, self.report, self.outputs,
                                          self._autocast(), self.prediction)
            total = values if total is None else total + values
        assert total is not None
        self.optimizer.step()
        return total / iter_size

    def _static_step(self, iteration: int) -> torch.Tensor:
        assert self.step_fn is not None
        for sub in range(self.train_batches.plan.iter_size):
            self.step_fn.load(sub, *self.train_batches.batch(iteration, sub))
        if self._use_graphs() and self.step_fn.graph is None:
            try:
                self.step_fn.capture()
            except Exception as exc:  # capture is an optimisation: run uncaptured rather than fail
                log.warning("CUDA graph capture failed (%s: %s); running the step uncaptured",
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.step_fn.graph = None
                self.options.cuda_graphs = False
        self.step_fn()
        return self.step_fn.out

    def _backend_flags(self) -> contextlib.AbstractContextManager:
        """cuDNN autotuning and the TF32 setting of ``precision`` for the run, restored afterwards (on CUDA;
        :func:`~agegender.evaluation.engines.backend_flags`)."""
        return backend_flags(self.device, tf32=self.options.precision in ("tf32", "bf16"), benchmark=True)

    # --- the run --------------------------------------------------------------------------------------
    def run(self, resume: str | Path | None = None) -> TrainResult:
        """Train from the start, or from the checkpoint ``resume``, to ``max_iter``."""
        with self._backend_flags():
            return self._run(resume)

    def _run(self, resume: str | Path | None) -> TrainResult:
        self._setup()
        solver = self.solver
        start = 0
        window: deque[float] = deque(maxlen=solver.average_loss)
        self._elapsed_before = 0.0  # training seconds of the runs this one resumes
        if resume is not None:
            start = self._resume(Path(resume), window)
        self.iteration = start
        self.out_dir.mkdir(parents=True, exist_ok=True)
        columns = ["iteration", "lr", "loss", "smoothed_loss", *self.logged, "images_per_s", "elapsed_s"]
        self.train_log = CSVLog(self.out_dir / TRAIN_LOG, columns, resume_from=start) if self.is_main else None
        self.val_log: CSVLog | None = None
        self.tensorboard = TensorBoardLog(self.out_dir / "tensorboard") if self.is_main else None
        log_every = self.options.log_every or solver.display or 20
        buffer = torch.zeros((log_every, 1 + len(self.logged)), dtype=torch.float32, device=self.device)
        pending: list[tuple[int, float]] = []  # (iteration, lr) of the rows in the buffer
        validations: list[dict] = []
        for callback in self.callbacks:
            callback.on_start(self, start)
        started = self._started = time.perf_counter()
        window_started = started
        first_smoothed: float | None = None
        last: IterationRecord | None = None
        status = "finished"

        def flush() -> None:
            nonlocal window_started, first_smoothed, last
            if not pending:
                return
            values = buffer[: len(pending)]
            if self.dist is not None:
                values = self.dist.mean(values)
            host = values.cpu().tolist()  # the one synchronisation of a window
            now = time.perf_counter()
            rate_images = len(pending) * self.images_per_iteration / max(now - window_started, 1e-9)
            records, bad = [], None
            for (it, lr), row in zip(pending, host):
                loss = float(row[0])
                if not math.isfinite(loss):
                    bad = (it, lr, loss)
                    break
                window.append(loss)
                records.append(IterationRecord(it, lr, loss, sum(window) / len(window),
                                               {top: float(v) for top, v in zip(self.logged, row[1:])}))
            if not records:
                assert bad is not None
                self._diverged(*bad)
            if first_smoothed is None:
                first_smoothed = records[0].smoothed_loss
            last = records[-1]
            if self.train_log is not None:
                rows = [r.row() for r in records]
                rows[-1]["images_per_s"] = rate_images
                rows[-1]["elapsed_s"] = self._elapsed_before + now - started
                self.train_log.append(rows)
                if self.tensorboard is not None:
                    self.tensorboard.scalars("train", rows)
            pending.clear()
            window_started = now
            for callback in self.callbacks:
                callback.on_records(self, records, rate_images)
            if bad is not None:
                self._diverged(*bad)

        val_seconds = 0.0

        def validate(iteration: int) -> None:
            nonlocal val_seconds
            flush()
            if self.is_main:
                began = time.perf_counter()
                validations.append(self._validate(iteration))
                val_seconds += time.perf_counter() - began

        mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None) if self._compile_graphs() else None
        with self._signals():
            it = start
            while it < solver.max_iter:
                if self._validation_due(it):
                    validate(it)
                lr = self.schedule.rate(it)
                self.optimizer.set_rate(lr)
                if mark_step is not None:
                    mark_step()  # a new iteration for torch.compile's CUDA graphs (the last one's outputs are read)
                out = self._static_step(it) if self.step_fn is not None else self._plain_step(it)
                buffer[len(pending)].copy_(out)
                pending.append((it, lr))
                it += 1
                self.iteration = it
                boundary = len(pending) == log_every
                if boundary or it == solver.max_iter:
                    flush()  # the callbacks may ask to stop here
                # every process must take the same decision (they meet in collectives at each flush)
                stop = self._stop.is_set() if self.dist is None else (boundary and self.dist.any(self._stop.is_set()))
                if stop:
                    flush()
                if solver.snapshot and it % solver.snapshot == 0:
                    flush()
                    self._checkpoint(it, window)
                if stop:
                    if not solver.snapshot or it % solver.snapshot:
                        self._checkpoint(it, window)
                    status = "interrupted"
                    break
            flush()
            if status == "finished":
                if solver.snapshot_after_train and (not solver.snapshot or it % solver.snapshot):
                    self._checkpoint(it, window)
                if self._validation_due(it, final=True):
                    validate(it)
        seconds = time.perf_counter() - started
        train_seconds = max(seconds - val_seconds, 1e-9)
        done = self.iteration - start
        result = TrainResult(
            status=status, start_iteration=start, iteration=self.iteration, max_iter=solver.max_iter, seconds=seconds,
            images_per_second=done * self.images_per_iteration / train_seconds,
            last_loss=last.loss if last else None, smoothed_loss=last.smoothed_loss if last else None,
            first_smoothed_loss=first_smoothed, checkpoint=self.last_checkpoint, validations=validations)
        if self.is_main:
            self.write_curve()
            if self.tensorboard is not None:
                self.tensorboard.close()
        for callback in self.callbacks:
            callback.on_end(self, result)
        return result

    def write_curve(self) -> Path | None:
        """The training-curve PNG from the logs written so far."""
        if self.train_log is None:
            return None
        val_path = self.out_dir / VAL_LOG
        val_rows = read_csv_rows(val_path) if val_path.exists() else []
        accuracy = [t for t in self.logged if t not in {x for x, _ in self.terms}]
        return plot_training_curve(self.train_log.read(), val_rows, self.out_dir / CURVE_PNG,
                                   accuracy_columns=accuracy, title=f"{self.net.net_name}: {self.out_dir.name}")

    # --- validation -----------------------------------------------------------------------------------
    def _validation_due(self, iteration: int, final: bool = False) -> bool:
        s = self.solver
        if self.val is None or self.val_net is None or not s.test_interval or not s.test_iter:
            return False
        if iteration % s.test_interval:
            return False
        return final or iteration > 0 or s.test_initialization

    def _validation_passes_before(self, iteration: int) -> int:
        """How many validations ran before the one at ``iteration`` (the TEST data layer's reading position)."""
        if iteration <= 0:
            return 0
        s = self.solver
        return iteration // s.test_interval - 1 + (1 if s.test_initialization else 0)

    @torch.no_grad()
    def _validate(self, iteration: int) -> dict:
        """Caffe's TestAll on the first test net: ``test_iter`` batches, each output averaged."""
        assert self.val is not None and self.val_net is not None
        net = self.val_net.to(self.device)
        copy_weights(self.net, net)
        net.eval()
        try:
            terms = [(t.top, t.weight) for t in loss_terms(net)]
        except Exception:
            terms = []
        outputs = list(dict.fromkeys(list(net.output_names) + [t for t, _ in terms]))
        sums = {name: 0.0 for name in outputs}
        loss_sum = 0.0
        test_iter = self.solver.test_iter[0]
        test_pass = self._validation_passes_before(iteration)
        totals = None
        for images, labels in validation_batches(self.val, self.val_batch_size, test_iter, test_pass):
            with self._autocast()():
                blobs = net(images, labels, outputs=outputs)
            values = torch.stack([blobs[name].float().mean() for name in outputs])
            totals = values if totals is None else totals + values
        assert totals is not None
        means = (totals / test_iter).cpu().tolist()
        for name, value in zip(outputs, means):
            sums[name] = value
        for top, weight in terms:
            loss_sum += weight * sums[top]
        metrics = {"iteration": iteration, **{f"val_{name}": value for name, value in sums.items()}}
        if terms:
            metrics["val_loss"] = loss_sum
        if self.val_log is None:
            self.val_log = CSVLog(self.out_dir / VAL_LOG, list(metrics), resume_from=iteration)
        self.val_log.append([metrics])
        if self.tensorboard is not None:
            self.tensorboard.scalars("val", [metrics])
        for callback in self.callbacks:
            callback.on_validation(self, iteration, metrics)
        return metrics

    # --- failure --------------------------------------------------------------------------------------
    def _diverged(self, iteration: int, lr: float, loss: float) -> None:
        if self.is_main:
            self.write_curve()
        last = (f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint
                else "no checkpoint was written yet")
        raise TrainingError(
            f"loss became {'nan' if math.isnan(loss) else loss} at iteration {iteration} (lr {lr:g}); {last}",
            path=self.out_dir / TRAIN_LOG,
            hint="lower base_lr (or --base-lr), check the data and labels, or resume from the checkpoint")

    # --- checkpoints ----------------------------------------------------------------------------------
    def _state(self, iteration: int, window: deque) -> dict:
        rng = ckpt.rng_state()
        ranks = self.dist.gather(rng) if self.dist is not None else [rng]
        return {
            "iteration": iteration,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "rng": ranks,
            "data": self.train_batches.plan.state_dict(iteration),
            "loss_window": list(window),
            "fingerprint": self.fingerprint,
            "world_size": 1 if self.dist is None else self.dist.world_size,
            "elapsed_s": self._elapsed_before + time.perf_counter() - self._started,
        }

    def _checkpoint(self, iteration: int, window: deque) -> Path | None:
        state = self._state(iteration, window)
        path = None
        if self.is_main:
            path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.out_dir, iteration), state)
            if self.options.snapshot_caffemodel and self.net_def is not None:
                from ..caffe2torch.weights import save_caffemodel
                from .trainable import phase_net_def

                save_caffemodel(self.net, phase_net_def(self.net_def, "TRAIN"), path.with_suffix(".caffemodel"))
            removed = ckpt.prune_checkpoints(self.out_dir, self.options.keep_checkpoints)
            for old in removed:
                old.with_suffix(".caffemodel").unlink(missing_ok=True)
            self.last_checkpoint = path
            log.info("checkpoint at iteration %d: %s", iteration, path)
            for callback in self.callbacks:
                callback.on_checkpoint(self, iteration, path)
        if self.dist is not None:
            self.dist.barrier()
        return path

    def _resume(self, path: Path, window: deque) -> int:
        state = ckpt.load_checkpoint(path)
        ckpt.check_fingerprint(state.get("fingerprint", {}), self.fingerprint, path)
        iteration = int(state["iteration"])
        differs = self.train_batches.plan.check_resumable(state["data"], iteration)
        if differs:
            raise TrainingError("the checkpoint's data position does not fit this run: " + "; ".join(differs),
                                path=path, hint="resume with the same data, batch size, iter_size and processes")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        ranks = state["rng"]
        rank = 0 if self.dist is None else self.dist.rank
        if len(ranks) == (1 if self.dist is None else self.dist.world_size):
            ckpt.set_rng_state(ranks[rank])
        else:
            log.warning("%s: saved by %d process(es), resumed by another number: random streams not restored",
                        path, len(ranks))
        window.extend(float(v) for v in state.get("loss_window", []))
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self.last_checkpoint = path
        log.info("resumed from %s at iteration %d", path, iteration)
        return iteration


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


__all__ = ["COMPILE_GRAPH_MODES", "IterationRecord", "PRECISIONS", "StepFunction", "TrainOptions", "TrainResult", "Trainer",
           "TrainerCallback", "forward_backward"]
