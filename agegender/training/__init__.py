"""Training the Caffe nets in PyTorch with Caffe's solver semantics: fine-tuning, reproducing a paper's
schedule from its train_val and solver files, on one GPU or several.

* ``solver``: the solver file (:class:`SolverConfig`) and Caffe's learning-rate policies;
* ``sgd``: Caffe's SGD/Nesterov update (:class:`CaffeSGD`), per-blob ``lr_mult``/``decay_mult``;
* ``fillers``: Caffe's weight fillers;
* ``trainable``: the TRAIN-phase net, its losses, fine-tuning initialisation, weights into a deploy net;
* ``data``: Caffe's Data-layer order and transforms on device-resident splits;
* ``loop``: the :class:`Trainer` (CUDA graphs, bf16, compile, checkpoints, logs, NaN detection);
* ``checkpoint``, ``logs``: atomic checkpoints; CSV/TensorBoard logs and the curve PNG;
* ``distributed``: torchrun/DDP and folds spread over devices;
* ``runs``: one fold end to end (plan, train, save, evaluate) and the cross-validation summary.

::

    from agegender.training import FoldJob, DataOptions, train_fold
    job = FoldJob(train_val="train_val_test_fold_is_0.prototxt", solver="solver_test_fold_is_0.prototxt",
                  weights="age_net.caffemodel", out_dir="runs/fold_0", fold=0,
                  data=DataOptions(data_root="agegender-data"))
    result = train_fold(job)          # result.after.metrics["exact"], ["one_off"]
"""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import BatchPlan, SplitSource, TrainBatches, age_group_index, age_group_list, load_split
from .distributed import DistContext, init_distributed, run_on_devices
from .fillers import fill_layer, filler_values, layer_fillers
from .loop import IterationRecord, StepFunction, Trainer, TrainerCallback, TrainOptions, TrainResult
from .runs import (DataOptions, FoldJob, FoldResult, Overrides, PreparedFold, plan_fold, prepare_fold, summarize,
                   train_fold, train_folds)
from .sgd import CaffeSGD, ParamEntry, caffe_param_groups, caffe_params
from .solver import LR_POLICIES, LearningRateSchedule, SolverConfig, read_solver_config
from .trainable import (InitReport, LossTerm, build_net, copy_weights, initialise, loss_terms, plan_initialisation,
                        read_train_val)

__all__ = [
    "BatchPlan", "CaffeSGD", "DataOptions", "DistContext", "FoldJob", "FoldResult", "InitReport", "IterationRecord",
    "LR_POLICIES", "LearningRateSchedule", "LossTerm", "Overrides", "ParamEntry", "PreparedFold", "SolverConfig",
    "SplitSource", "StepFunction", "TrainBatches", "TrainOptions", "TrainResult", "Trainer", "TrainerCallback",
    "age_group_index", "age_group_list", "build_net", "caffe_param_groups", "caffe_params", "copy_weights",
    "fill_layer", "filler_values", "init_distributed", "initialise", "latest_checkpoint", "layer_fillers",
    "load_checkpoint", "load_split", "loss_terms", "plan_fold", "plan_initialisation", "prepare_fold",
    "read_solver_config", "read_train_val", "run_on_devices", "save_checkpoint", "summarize", "train_fold",
    "train_folds",
]
