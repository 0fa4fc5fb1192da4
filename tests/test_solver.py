"""Optimizer parameter groups, optimizer choice, gradient clipping and the poly LR schedule."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from maskformer.config import add_maskformer_config
from maskformer.engine.trainer import Trainer
from maskformer.solver import build_optimizer, get_param_groups, set_schedule_iteration

BASE_LR, WD, WD_NORM, WD_EMBED, MULT = 0.1, 0.01, 0.002, 0.003, 0.5


class PositionTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(5, 2))
        self.proj = nn.Linear(2, 2)


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.GroupNorm(2, 4),
            FrozenBatchNorm2d(4),
            PositionTable(),
        )
        self.backbone[0].weight.requires_grad_(False)  # frozen: in no group
        self.head = nn.ModuleDict(
            {"query_embed": nn.Embedding(3, 2), "norm": nn.LayerNorm(2), "linear": nn.Linear(2, 2)}
        )
        self.head.shared = self.head["linear"]  # the same parameters under two names


def solver_cfg(config_file=None, **solver):
    cfg = get_cfg()
    add_maskformer_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.WEIGHT_DECAY = WD
    cfg.SOLVER.WEIGHT_DECAY_NORM = WD_NORM
    cfg.SOLVER.WEIGHT_DECAY_EMBED = WD_EMBED
    cfg.SOLVER.BACKBONE_MULTIPLIER = MULT
    for key, value in solver.items():
        cfg.merge_from_list([f"SOLVER.{key}", value])
    return cfg


def param_groups(model):
    """get_param_groups of ``model`` with this module's learning rate, weight decays and multiplier."""
    return get_param_groups(
        model,
        base_lr=BASE_LR,
        weight_decay=WD,
        weight_decay_norm=WD_NORM,
        weight_decay_embed=WD_EMBED,
        backbone_multiplier=MULT,
    )


def hyperparams_by_name(model, groups):
    by_param = {p: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_param.get(p) for name, p in model.named_parameters()}


def test_param_groups_match_hand_expectations():
    model = ToyModel()
    groups = param_groups(model)
    backbone_lr = BASE_LR * MULT
    assert hyperparams_by_name(model, groups) == {
        "backbone.0.weight": None,
        "backbone.0.bias": (backbone_lr, WD),
        "backbone.1.weight": (backbone_lr, WD_NORM),
        "backbone.1.bias": (backbone_lr, WD_NORM),
        "backbone.2.weight": (backbone_lr, WD_NORM),
        "backbone.2.bias": (backbone_lr, WD_NORM),
        "backbone.4.relative_position_bias_table": (backbone_lr, WD_EMBED),
        "backbone.4.proj.weight": (backbone_lr, WD),
        "backbone.4.proj.bias": (backbone_lr, WD),
        "head.query_embed.weight": (BASE_LR, WD_EMBED),
        "head.norm.weight": (BASE_LR, WD_NORM),
        "head.norm.bias": (BASE_LR, WD_NORM),
        "head.linear.weight": (BASE_LR, WD),
        "head.linear.bias": (BASE_LR, WD),
    }
    # one group per distinct setting, each trainable parameter exactly once
    assert len(groups) == 6
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == 13


def test_param_groups_ignore_ddp_prefix_and_substrings():
    wrapper = nn.Module()
    wrapper.module = ToyModel()
    wrapper.backbone_adapter = nn.Linear(2, 2)  # not the backbone, despite its name
    groups = param_groups(wrapper)
    hyper = hyperparams_by_name(wrapper, groups)
    assert hyper["module.backbone.1.weight"] == (BASE_LR * MULT, WD_NORM)
    assert hyper["backbone_adapter.weight"] == (BASE_LR, WD)


def test_maskformer_groups_swin_and_queries():
    cfg = solver_cfg("configs/synthetic/maskformer_R18_sem_seg.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "D2SwinTransformer"])
    cfg.merge_from_list(
        [
            "MODEL.SWIN.EMBED_DIM",
            16,
            "MODEL.SWIN.DEPTHS",
            [1, 1, 1, 1],
            "MODEL.SWIN.NUM_HEADS",
            [1, 1, 2, 2],
        ]
    )
    cfg.merge_from_list(["MODEL.SWIN.APE", True])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    hyper = hyperparams_by_name(model, optimizer.param_groups)
    lr = cfg.SOLVER.BASE_LR
    assert hyper["sem_seg_head.predictor.query_embed.weight"] == (lr, WD_EMBED)
    assert hyper["backbone.absolute_pos_embed"] == (lr * MULT, WD_EMBED)
    tables = [k for k in hyper if k.endswith("relative_position_bias_table")]
    assert len(tables) == 4 and all(hyper[k] == (lr * MULT, WD_EMBED) for k in tables)
    assert hyper["backbone.layers.0.blocks.0.norm1.weight"] == (lr * MULT, WD_NORM)
    assert hyper["backbone.layers.0.blocks.0.attn.qkv.weight"] == (lr * MULT, WD)
    assert hyper["sem_seg_head.pixel_decoder.layer_1.norm.weight"] == (lr, WD_NORM)
    assert None not in hyper.values()


def test_optimizer_choice():
    model = ToyModel()
    sgd = build_optimizer(solver_cfg(OPTIMIZER="SGD", MOMENTUM=0.7), model)
    assert type(sgd) is torch.optim.SGD and all(g["momentum"] == 0.7 for g in sgd.param_groups)
    adamw = build_optimizer(solver_cfg(OPTIMIZER="ADAMW"), model)
    assert type(adamw) is torch.optim.AdamW
    assert all(g["fused"] for g in sgd.param_groups + adamw.param_groups)  # CPU parameters
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER='LAMB'"):
        build_optimizer(solver_cfg(OPTIMIZER="LAMB"), model)
    clip = ["CLIP_GRADIENTS.ENABLED", True, "CLIP_GRADIENTS.CLIP_TYPE", "l1"]
    with pytest.raises(ValueError, match="CLIP_TYPE='l1'"):
        build_optimizer(solver_cfg(**dict(zip(clip[::2], clip[1::2]))), model)


def test_fused_adamw_steps_like_the_default_implementation():
    torch.manual_seed(0)
    model, reference = ToyModel(), ToyModel()
    reference.load_state_dict(model.state_dict())
    initial = model.head["linear"].weight.detach().clone()
    optimizer = build_optimizer(solver_cfg(OPTIMIZER="ADAMW"), model)
    groups = param_groups(reference)
    unfused = torch.optim.AdamW(groups, lr=BASE_LR, fused=False)
    for _ in range(3):
        for a, b in zip(model.parameters(), reference.parameters()):
            if a.requires_grad:
                a.grad = torch.randn_like(a)
                b.grad = a.grad.clone()
        optimizer.step()
        unfused.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name
    assert not torch.allclose(model.head["linear"].weight, initial, atol=1e-3)  # the steps moved it


class TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(2))


@pytest.mark.parametrize(
    "clip_type, expected_a, expected_b",
    [
        # joint norm of (3, 0, 0, 4) is 5: both gradients scaled by 1/5
        ("full_model", [-0.6, 0.0], [0.0, -0.8]),
        # detectron2's per-parameter clipping: each gradient scaled to norm 1 on its own
        ("norm", [-1.0, 0.0], [0.0, -1.0]),
    ],
)
def test_gradient_clipping(clip_type, expected_a, expected_b):
    model = TwoParams()
    cfg = solver_cfg(
        OPTIMIZER="SGD", MOMENTUM=0.0, BASE_LR=1.0, WEIGHT_DECAY=0.0, BACKBONE_MULTIPLIER=1.0
    )
    cfg.merge_from_list(
        ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type]
    )
    cfg.merge_from_list(
        ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0, "SOLVER.CLIP_GRADIENTS.NORM_TYPE", 2.0]
    )
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    model.backbone.a.grad = torch.tensor([3.0, 0.0])
    model.b.grad = torch.tensor([0.0, 4.0])
    optimizer.step()
    assert torch.allclose(model.backbone.a.data, torch.tensor(expected_a))
    assert torch.allclose(model.b.data, torch.tensor(expected_b))


def test_small_gradients_are_not_clipped():
    model = TwoParams()
    cfg = solver_cfg(
        OPTIMIZER="SGD", MOMENTUM=0.0, BASE_LR=1.0, WEIGHT_DECAY=0.0, BACKBONE_MULTIPLIER=1.0
    )
    cfg.merge_from_list(
        ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 10.0]
    )
    optimizer = build_optimizer(cfg, model)
    model.backbone.a.grad = torch.tensor([3.0, 0.0])
    model.b.grad = torch.tensor([0.0, 4.0])
    optimizer.step()
    assert torch.equal(model.b.data, torch.tensor([0.0, -4.0]))


def test_poly_schedule_keeps_group_ratios():
    model = TwoParams()
    cfg = solver_cfg(
        MAX_ITER=10, LR_SCHEDULER_NAME="WarmupPolyLR", POLY_LR_POWER=0.9, WARMUP_ITERS=0
    )
    optimizer = build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    factor = (1 - 4 / 10) ** 0.9
    assert lrs == pytest.approx([BASE_LR * MULT * factor, BASE_LR * factor])


@pytest.mark.parametrize(
    "schedule",
    [
        {"LR_SCHEDULER_NAME": "WarmupPolyLR"},
        {"LR_SCHEDULER_NAME": "WarmupMultiStepLR", "STEPS": "(3, 7)", "GAMMA": "0.5"},
        {"LR_SCHEDULER_NAME": "WarmupCosineLR"},
    ],
)
def test_schedule_set_at_an_iteration_has_the_rates_of_the_schedule_stepped_there(schedule):
    """What a resumed run does (Trainer.load_state_dict): every group at the rate the scheduler,
    stepped from the start, has at that iteration, warmup included."""
    cfg = solver_cfg(MAX_ITER=10, WARMUP_ITERS=4, WARMUP_FACTOR=0.1, **schedule)
    stepped = build_optimizer(cfg, TwoParams())
    scheduler = Trainer.build_lr_scheduler(cfg, stepped)
    placed = build_optimizer(cfg, TwoParams())
    placed_scheduler = Trainer.build_lr_scheduler(cfg, placed)
    for iteration in range(1, 10):
        stepped.step()
        scheduler.step()
        set_schedule_iteration(placed_scheduler, iteration)
        expected = [g["lr"] for g in stepped.param_groups]
        assert [g["lr"] for g in placed.param_groups] == expected, iteration
    assert len(set(expected)) == 2  # the backbone's group and the other
