"""Caffe's solver semantics: the solver file, the learning-rate policies, the fillers, and the SGD update
(momentum, weight decay, lr_mult/decay_mult including 0, iter_size, a step boundary) against a numpy
implementation written from Caffe's update rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.errors import TrainingError
from agegender.training import (BatchPlan, CaffeSGD, LearningRateSchedule, SolverConfig, TrainBatches, Trainer,
                                TrainOptions, build_net, caffe_param_groups, caffe_params, filler_values,
                                initialise, layer_fillers, read_solver_config, read_train_val)
from agegender.training.fillers import filler

from .conftest import require_shared
from .training_nets import tiny_resident, write_tiny

f32 = np.float32


# --- solver files ---------------------------------------------------------------------------------------
def test_levi_and_lapuschkin_solver_files_parse() -> None:
    levi = require_shared("levi")
    solvers = sorted(levi.glob("*_net_definitions/solver_test_fold_is_*.prototxt"))
    solvers += sorted(require_shared("adience", "model_definitions").glob("*/solver_test_fold_is_*.prototxt"))
    assert len(solvers) >= 10 + 38 * 5
    for path in solvers:
        config = read_solver_config(path)
        assert config.type == "SGD" and config.lr_policy == "step" and config.stepsize > 0, path
        assert config.max_iter > 0 and config.momentum == pytest.approx(0.9) and config.iter_size == 1
    levi_age = read_solver_config(levi / "age_net_definitions" / "solver_test_fold_is_0.prototxt")
    assert (levi_age.base_lr, levi_age.gamma, levi_age.stepsize, levi_age.max_iter) == (
        float(f32(0.001)), float(f32(0.1)), 10000, 50000)
    assert levi_age.weight_decay == float(f32(0.0005)) and levi_age.snapshot == 1000
    vgg = read_solver_config(require_shared("adience", "model_definitions", "gender_imdbwiki_vgg16",
                                            "solver_test_fold_is_0.prototxt"))
    assert (vgg.max_iter, vgg.snapshot, vgg.test_iter, vgg.base_lr) == (2400, 100, (10,), float(f32(0.0001)))


@pytest.mark.parametrize("text, field", [
    ('type: "Adam"', "type"),
    ("solver_type: ADAGRAD", "type"),
    ('lr_policy: "cosine"', "lr_policy"),
    ('regularization_type: "L3"', "regularization_type"),
])
def test_unsupported_solver_settings_are_refused_naming_file_line_and_field(tmp_path: Path, text: str,
                                                                           field: str) -> None:
    lines = ['base_lr: 0.01', 'lr_policy: "fixed"', "max_iter: 10"]
    if field == "lr_policy":
        lines[1] = text
    else:
        lines.append(text)
    path = tmp_path / "solver.prototxt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainingError) as info:
        read_solver_config(path)
    error = info.value
    assert error.path == str(path) and error.message.startswith(f"{field}:")
    expected_line = next(i for i, line in enumerate(lines, 1) if line == text)
    assert error.line == expected_line
    assert error.exit_code == 8


def test_step_policy_without_stepsize_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.1\nlr_policy: "step"\ngamma: 0.1\nmax_iter: 10\n')
    with pytest.raises(TrainingError, match="stepsize"):
        read_solver_config(path)


def test_nesterov_solver_type_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 10\nsolver_type: NESTEROV\nmomentum: 0.9\n')
    assert read_solver_config(path).type == "Nesterov"


# --- learning-rate policies -------------------------------------------------------------------------------
def _solver(**fields) -> SolverConfig:
    base = dict(base_lr=0.01, lr_policy="fixed", max_iter=100, gamma=0.5, power=0.75, stepsize=10,
                stepvalue=(5, 7, 7, 20))
    base.update(fields)
    return SolverConfig(**base)


HAND_FORMULAS = {
    "fixed": lambda it, s: s.base_lr,
    "step": lambda it, s: s.base_lr * s.gamma ** (it // s.stepsize),
    "exp": lambda it, s: s.base_lr * s.gamma ** it,
    "inv": lambda it, s: s.base_lr * (1 + s.gamma * it) ** (-s.power),
    "poly": lambda it, s: s.base_lr * (1 - it / s.max_iter) ** s.power,
    "sigmoid": lambda it, s: s.base_lr / (1 + math.exp(-s.gamma * (it - s.stepsize))),
}


@pytest.mark.parametrize("policy", sorted(HAND_FORMULAS))
def test_learning_rate_policies_match_the_hand_formulas(policy: str) -> None:
    solver = _solver(lr_policy=policy, gamma=0.5 if policy != "exp" else 0.97)
    schedule = LearningRateSchedule(solver)
    for it in [0, 1, 9, 10, 11, 19, 20, 55, 99]:
        assert schedule.rate(it) == pytest.approx(HAND_FORMULAS[policy](it, solver), rel=2e-6), (policy, it)
    assert isinstance(schedule.rate(3), float) and schedule.rate(3) == float(f32(schedule.rate(3)))


def test_multistep_advances_one_step_per_iteration_as_caffe_does() -> None:
    solver = _solver(lr_policy="multistep")  # stepvalue 5, 7, 7, 20
    schedule = LearningRateSchedule(solver)
    rates = {it: schedule.rate(it) for it in range(25)}
    steps = {0: 0, 4: 0, 5: 1, 6: 1, 7: 2, 8: 3, 19: 3, 20: 4, 24: 4}  # the repeated 7 is taken one iteration late
    for it, step in steps.items():
        assert rates[it] == pytest.approx(0.01 * 0.5 ** step, rel=1e-6), it
    assert schedule.state_dict() == {"current_step": 4}
    resumed = LearningRateSchedule(solver)
    resumed.load_state_dict({"current_step": 3})
    assert resumed.rate(19) == pytest.approx(rates[19])


def test_schedule_boundaries_give_the_rate_at_each_step() -> None:
    bounds = LearningRateSchedule(_solver(lr_policy="step", stepsize=40)).boundaries()
    assert [it for it, _ in bounds] == [0, 40, 80]
    assert [lr for _, lr in bounds] == pytest.approx([0.01, 0.005, 0.0025], rel=1e-6)


# --- fillers ----------------------------------------------------------------------------------------------
def test_fillers_statistics_and_shapes() -> None:
    g = torch.Generator().manual_seed(0)
    shape = (64, 32, 3, 3)  # fan_in = 288, fan_out = 576
    constant = filler_values(filler("constant", value=0.25), (5,), g)
    assert constant.shape == (5,) and torch.all(constant == 0.25)
    assert torch.all(filler_values(None, (3, 2), g) == 0)  # Caffe's default filler: constant 0
    uniform = filler_values(filler("uniform", min=-2.0, max=3.0), shape, g)
    assert uniform.min() >= -2 and uniform.max() < 3 and abs(float(uniform.mean()) - 0.5) < 0.05
    gauss = filler_values(filler("gaussian", mean=1.0, std=0.5), shape, g)
    assert abs(float(gauss.mean()) - 1.0) < 0.01 and abs(float(gauss.std()) - 0.5) < 0.01
    sparse = filler_values(filler("gaussian", std=1.0, sparse=16), shape, g)
    assert abs(float((sparse != 0).float().mean()) - 16 / 64) < 0.01
    ball = filler_values(filler("positive_unitball"), shape, g)
    assert torch.all(ball >= 0)
    assert torch.allclose(ball.reshape(64, -1).sum(1), torch.ones(64), atol=1e-5)
    for norm, n in (("FAN_IN", 288), ("FAN_OUT", 576), ("AVERAGE", 432)):
        xavier = filler_values(filler("xavier", variance_norm=norm), shape, g)
        bound = math.sqrt(3 / n)
        assert float(xavier.abs().max()) <= bound and float(xavier.abs().max()) > 0.95 * bound
        assert abs(float(xavier.var()) - 1 / n) < 0.1 / n
        msra = filler_values(filler("msra", variance_norm=norm), shape, g)
        assert abs(float(msra.std()) - math.sqrt(2 / n)) < 0.03 * math.sqrt(2 / n)
    fc = filler_values(filler("xavier"), (10, 400), g)  # InnerProduct (out, in): fan_in = 400
    assert float(fc.abs().max()) <= math.sqrt(3 / 400)
    bilinear = filler_values(filler("bilinear"), (2, 1, 4, 4), g)
    axis = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(bilinear[1, 0], axis[:, None] * axis[None, :])


def test_layer_fillers_follow_the_prototxt_and_caffe_defaults(tmp_path: Path) -> None:
    train_val, _ = write_tiny(tmp_path)
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (2, 3, 10, 10)})
    conv = layer_fillers(net.ir.layer("conv1"), ["weight", "bias"])
    assert conv[0].type == "xavier" and (conv[1].type, conv[1].value) == ("constant", pytest.approx(0.1))
    initialise(net, None, seed=3)
    assert torch.allclose(net.layer_module("conv1").bias.detach(), torch.full((4,), 0.1))
    assert torch.all(net.layer_module("fc").bias.detach() == 0)
    again = build_net(read_train_val(train_val), train_val, input_shapes={"data": (2, 3, 10, 10)})
    initialise(again, None, seed=3)
    assert torch.equal(again.layer_module("fc").weight, net.layer_module("fc").weight)  # seeded


# --- the SGD update vs numpy ---------------------------------------------------------------------------
def _numpy_caffe_sgd(net, batches, solver: SolverConfig, *, rule: str = "SGD") -> dict[str, np.ndarray]:
    """Caffe's Solver::Step / SGDSolver::ApplyUpdate in numpy float32 (gradients from autograd).

    rate = base_lr * gamma^floor(iter/stepsize); per blob: diff = sum of the iter_size gradients;
    diff /= iter_size; diff += weight_decay * decay_mult * data; history = momentum * history +
    rate * lr_mult * diff; data -= history (Nesterov: data -= (1+m) * history - m * previous history).
    ``rule="torch"`` is torch.optim.SGD's rule instead (history = m * history + diff; data -= rate * history).
    """
    entries = caffe_params(net)
    data = {e.name: e.parameter.detach().numpy().astype(np.float32).copy() for e in entries}
    history = {name: np.zeros_like(value) for name, value in data.items()}
    for it in range(solver.max_iter):
        rate = f32(f32(solver.base_lr) * f32(solver.gamma) ** (it // solver.stepsize))
        diff = {name: np.zeros_like(value) for name, value in data.items()}
        for sub in range(solver.iter_size):
            with torch.no_grad():
                for e in entries:
                    e.parameter.copy_(torch.from_numpy(data[e.name]))
            net.zero_grad(set_to_none=True)
            images, labels = batches.batch(it, sub)
            net(images, labels, outputs=["loss"])["loss"].backward()
            for e in entries:
                if e.parameter.grad is not None:
                    diff[e.name] += e.parameter.grad.numpy()
        for e in entries:
            d = diff[e.name] * f32(f32(1) / f32(solver.iter_size))
            d = d + f32(f32(solver.weight_decay) * f32(e.decay_mult)) * data[e.name]
            previous = history[e.name].copy()
            local_rate = f32(rate * f32(e.lr_mult))
            if rule == "torch":
                history[e.name] = f32(solver.momentum) * history[e.name] + d
                data[e.name] = data[e.name] - local_rate * history[e.name]
                continue
            history[e.name] = f32(solver.momentum) * history[e.name] + local_rate * d
            update = history[e.name]
            if rule == "Nesterov":
                update = f32(1 + f32(solver.momentum)) * history[e.name] - f32(solver.momentum) * previous
            data[e.name] = data[e.name] - update
    return data


def _tiny_run(tmp_path: Path, solver: SolverConfig, seed: int = 5):
    train_val = tmp_path / "train_val.prototxt"
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (4, 3, 10, 10)}, channels_last=False)
    initialise(net, None, seed=seed)
    reference = build_net(read_train_val(train_val), train_val, input_shapes={"data": (4, 3, 10, 10)},
                          channels_last=False)
    reference.load_state_dict(net.state_dict())
    dataset = tiny_resident()
    batches = TrainBatches(dataset, BatchPlan(len(dataset), 4, iter_size=solver.iter_size, seed=seed))
    return net, reference, batches


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov"])
def test_caffe_sgd_equals_numpy_caffe_rule_across_a_step_boundary(tmp_path: Path, solver_type: str) -> None:
    write_tiny(tmp_path)
    solver = SolverConfig(base_lr=0.05, lr_policy="step", gamma=0.5, stepsize=2, max_iter=5, momentum=0.9,
                          weight_decay=0.01, iter_size=2, type=solver_type, snapshot=0, snapshot_after_train=False)
    net, reference, batches = _tiny_run(tmp_path, solver)
    initial = {e.name: e.parameter.detach().clone() for e in caffe_params(net)}
    Trainer(net, solver, batches, tmp_path / "run", options=TrainOptions(device="cpu", channels_last=False)).run()
    expected = _numpy_caffe_sgd(reference, batches, solver, rule=solver_type)
    entries = {e.name: e for e in caffe_params(net)}
    for name, value in expected.items():
        ours = entries[name].parameter.detach().numpy()
        np.testing.assert_allclose(ours, value, rtol=2e-5, atol=1e-7, err_msg=name)
        moved = float(np.abs(ours - initial[name].numpy()).max())
        if entries[name].lr_mult == 0:
            assert moved == 0.0, f"{name} has lr_mult 0 and must not change"
        else:
            assert moved > 1e-4, f"{name} did not train"
    # the rate is applied before the momentum: torch.optim.SGD's rule (rate after it) ends elsewhere once the
    # rate has changed at the step boundary
    for name, value in initial.items():
        reference.get_parameter(name).data.copy_(value)
    torch_rule = _numpy_caffe_sgd(reference, batches, solver, rule="torch")
    assert not np.allclose(torch_rule["fc.weight"], entries["fc.weight"].parameter.detach().numpy(), rtol=1e-3)


def test_weight_decay_l1_and_clip_gradients_follow_caffe(tmp_path: Path) -> None:
    write_tiny(tmp_path)
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0, 0.5]))
    w.grad = torch.tensor([30.0, 40.0, 0.0])  # norm 50
    opt = CaffeSGD([{"params": [w], "lr_mult": 2.0, "decay_mult": 0.5}], momentum=0.0, weight_decay=0.1,
                   regularization="L1", clip_gradients=5.0)
    opt.set_rate(0.1)
    opt.step()
    clipped = np.array([3.0, 4.0, 0.0], np.float32)  # scaled by 5 / 50 before the decay
    decayed = clipped + f32(0.05) * np.sign([3.0, -4.0, 0.5]).astype(np.float32)
    expected = np.array([3.0, -4.0, 0.5], np.float32) - f32(0.2) * decayed
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-6)


def test_param_groups_carry_lr_and_decay_multipliers(tmp_path: Path) -> None:
    train_val, _ = write_tiny(tmp_path)
    net = build_net(read_train_val(train_val), train_val, input_shapes={"data": (2, 3, 10, 10)})
    entries = {e.name: (e.lr_mult, e.decay_mult) for e in caffe_params(net)}
    assert entries == {"conv1.weight": (1, 1), "conv1.bias": (2, 0), "frozen.weight": (0, 1), "frozen.bias": (0, 1),
                       "fc.weight": (10, 1), "fc.bias": (20, 0)}
    groups = caffe_param_groups(caffe_params(net))
    assert [(g["lr_mult"], g["decay_mult"], g["names"]) for g in groups] == [
        (1, 1, ["conv1.weight"]), (2, 0, ["conv1.bias"]), (10, 1, ["fc.weight"]), (20, 0, ["fc.bias"])]
    assert not net.layer_module("frozen").weight.requires_grad


def test_v1_blobs_lr_and_weight_decay_become_multipliers() -> None:
    path = require_shared("levi", "age_net_definitions", "train_val_test_fold_is_0.prototxt")
    net = build_net(read_train_val(path), path, input_shapes={"data": (1, 3, 227, 227)})
    entries = {e.name: (e.lr_mult, e.decay_mult) for e in caffe_params(net)}
    assert entries["conv1.weight"] == (1, 1) and entries["conv1.bias"] == (2, 0)
    assert entries["fc8.weight"] == (10, 1) and entries["fc8.bias"] == (20, 0)


def test_softmax_with_loss_gradient_is_caffes_even_where_the_loss_is_clamped() -> None:
    from agegender.caffe2torch.converters.losses import SoftmaxWithLoss

    loss_layer = SoftmaxWithLoss(axis=1, ignore_label=None, normalization="VALID")
    scores = torch.tensor([[300.0, -100.0, 0.0], [1.0, 2.0, 0.5]], requires_grad=True)
    labels = torch.tensor([1, 2])
    loss = loss_layer(scores, labels)
    loss.backward()
    # forward: -log(max(p, FLT_MIN)) as Caffe (the first row is clamped at FLT_MIN); backward: Caffe's
    # (softmax - onehot) / count, which the clamp does not stop
    p = torch.softmax(scores.detach(), 1)
    expected_loss = (-math.log(torch.finfo(torch.float32).tiny) - math.log(float(p[1, 2]))) / 2
    assert float(loss.detach()) == pytest.approx(expected_loss, rel=1e-6)
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    assert torch.allclose(scores.grad, (p - onehot) / 2, atol=1e-7)


def test_accuracy_tops_report_the_accuracy_not_the_per_class_top(tmp_path: Path) -> None:
    """Accuracy's optional second top holds one accuracy per class: reported values are the first tops."""
    from agegender.prototxt import parse_text
    from agegender.training.trainable import accuracy_tops, build_net

    from .training_nets import TINY_TRAIN_VAL

    text = TINY_TRAIN_VAL.format(train="t", val="v").replace('top: "accuracy" include',
                                                              'top: "accuracy" top: "per_class" include')
    net = build_net(parse_text(text, "NetParameter"), tmp_path / "train_val.prototxt", phase="TEST")
    assert net.blob_shapes["per_class"] == (2,)
    assert accuracy_tops(net) == ["accuracy"]
