"""Stage 1 training loop on real CIFAR-10 images: logs, a falling loss, known anomalies, checkpoints, resume.

A tiny ResNet-20, width 8 (width 4 crashes torch's channels_last fp32 CPU backward; see test_model.py).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import anomem.macl as macl
from anomem.model import AnoMemNet, rotate
from anomem.params import parse_params
from anomem.runtime import make_runtime, seed_everything

RUNTIME = make_runtime("cpu", 0, "fp32")
LOSS_KEYS = ("loss", "loss_memory", "loss_plain", "loss_variance")


def _params(contrastive: dict | None = None, **train):
    t = {"device": "cpu", "precision": "fp32", "epochs": 2, "batch_size": 50, "lr": 0.2, "warmup_epochs": 1, "known_batch_size": 10}
    t.update(train)
    model = {"arch": "resnet20", "width": 8, "proj_dim": 16}
    memory = {"scales": [2, 3], "size": 16}
    c = {"rotation_weight": 0.0, "shifted_instances": 1, "view_scale": 1.0, **(contrastive or {})}
    return parse_params({"model": model, "memory": memory, "contrastive": c, "train": t})


def _class(cifar_train_slice, cls, n=100) -> torch.Tensor:
    images, labels = cifar_train_slice
    return torch.as_tensor(images[labels == cls][:n])


def _train(params, normal, seed=0, known=None, **kw):
    seed_everything(seed)
    net = AnoMemNet(params.model, params.memory)
    history = macl.train_macl(net, normal, known, params, RUNTIME, seed, progress=False, **kw)
    return net, history


def test_history_logs_and_loss_falls(cifar_train_slice):
    p = _params(epochs=5)
    normal = _class(cifar_train_slice, 0)
    seen = []
    net, history = _train(p, normal, on_epoch=seen.append)

    assert len(history) == 5 and seen == history
    assert [h["epoch"] for h in history] == list(range(5))
    for h in history:
        for k in LOSS_KEYS:
            assert math.isfinite(h[k]), k
        assert h["images_per_second"] > 0 and h["epoch_seconds"] > 0
        assert h["loss"] == pytest.approx(h["loss_memory"] + h["loss_plain"] + h["loss_variance"], rel=1e-5)
        for s in (2, 3):
            assert 0 <= h[f"memory_s{s}_attention_entropy"] <= h[f"memory_s{s}_attention_entropy_max"] + 1e-6
            assert h[f"memory_s{s}_attention_entropy_max"] == pytest.approx(math.log(16))
            assert 1 <= h[f"memory_s{s}_items_used"] <= 16
            assert h[f"memory_s{s}_item_std"] >= 0
    assert history[0]["lr"] == pytest.approx(0.2)  # warm-up done after the first epoch
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine ends at zero
    assert history[-1]["loss"] < history[0]["loss"] - 0.3, [round(h["loss"], 3) for h in history]
    assert all(bool(net.memory(s).initialized) for s in net.scales)


def test_known_anomalies_are_extra_negatives(cifar_train_slice, monkeypatch):
    p = _params(epochs=1, batch_size=25)
    normal = _class(cifar_train_slice, 0, 50)
    known = torch.cat([_class(cifar_train_slice, c, 5) for c in (1, 2, 3)])  # 15 images, 10 drawn per step
    calls = []
    real = macl.macl_loss

    def spy(p1, p2, m1, m2, *args, known_negatives=None):
        calls.append((p1.shape, m1.shape, None if known_negatives is None else known_negatives.shape))
        return real(p1, p2, m1, m2, *args, known_negatives=known_negatives)

    monkeypatch.setattr(macl, "macl_loss", spy)
    _, history = _train(p, normal, known=known)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    # two views of 10 known anomalies per step, as negatives only; anchors and memory path stay the 25 normals
    assert calls == [((25, 16), (25, 16), (20, 16))] * 2

    calls.clear()
    _train(p, normal, known=known[:0])  # an empty known set is the one-class path
    assert calls == [((25, 16), (25, 16), None)] * 2


@pytest.mark.parametrize("epochs,every,expected", [(5, 2, [1, 3]), (4, 2, [1]), (3, 1, [0, 1]), (2, 3, [])])
def test_checkpoint_every_n_epochs_but_not_after_the_last(cifar_train_slice, epochs, every, expected):
    p = _params(epochs=epochs, checkpoint_every_epochs=every, batch_size=8)
    saved = []
    _train(p, _class(cifar_train_slice, 0, 16), save_checkpoint=lambda st: saved.append((st["epoch"], len(st["history"]))))
    assert [e for e, _ in saved] == expected
    assert all(n == e + 1 for e, n in saved), "a checkpoint holds the history up to its epoch"


def _snapshot(state: dict) -> dict:
    """What the stage does: write the checkpoint out at once (torch.save) and read it back."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("shifted_instances, view_scale", [(1, 1.0), (4, 0.5)], ids=["full-size views", "cpu profile's stage 1"])
def test_resume_reproduces_an_uninterrupted_run(cifar_train_slice, shifted_instances, view_scale):
    turned_and_small = {"shifted_instances": shifted_instances, "view_scale": view_scale}
    p = _params(turned_and_small, epochs=4, checkpoint_every_epochs=2, batch_size=16)
    normal = _class(cifar_train_slice, 0, 32)
    seed = 3

    straight, hist_straight = _train(p, normal, seed)

    captured = []
    interrupted, hist_interrupted = _train(p, normal, seed, save_checkpoint=lambda st: captured.append(_snapshot(st)))
    assert [c["epoch"] for c in captured] == [1]
    checkpoint = captured[0]
    assert set(checkpoint) == {"epoch", "model", "optimizer", "scheduler", "order_rng", "rng", "history"}

    seed_everything(seed + 100)  # a fresh process: other weights, other RNG states
    fresh = AnoMemNet(p.model, p.memory)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), straight.state_dict().values()))
    hist_resumed = macl.train_macl(fresh, normal, None, p, RUNTIME, seed, resume_from=checkpoint, progress=False)

    assert len(hist_resumed) == 4
    for h_a, h_b, h_c in zip(hist_straight, hist_interrupted, hist_resumed):
        for k in LOSS_KEYS + ("lr", "memory_s2_items_used", "memory_s3_attention_entropy"):
            assert h_a[k] == h_b[k] == h_c[k], (h_a["epoch"], k)
    ref = straight.state_dict()
    for name, other in (("interrupted", interrupted.state_dict()), ("resumed", fresh.state_dict())):
        assert ref.keys() == other.keys()
        for k in ref:
            assert torch.equal(ref[k], other[k]), (name, k)


def _variant_params(memory_enabled=True, rotation_weight=0.0, epochs=4):
    p = _params(epochs=epochs)
    return p.model_copy(
        update={
            "memory": p.memory.model_copy(update={"enabled": memory_enabled}),
            "contrastive": p.contrastive.model_copy(update={"rotation_weight": rotation_weight}),
        }
    )


def test_plain_simclr_without_memory_trains_and_logs_no_memory_terms(cifar_train_slice):
    p = _variant_params(memory_enabled=False)
    seed_everything(0)
    net = AnoMemNet.from_params(p)
    history = macl.train_macl(net, _class(cifar_train_slice, 0), None, p, RUNTIME, 0, progress=False)
    assert len(net.memories) == 0
    assert all(h["loss"] == h["loss_plain"] for h in history)
    assert not any(k.startswith(("memory_", "loss_memory", "loss_variance")) for k in history[0])
    assert history[-1]["loss"] < history[0]["loss"] - 0.2, [round(h["loss"], 3) for h in history]


def _upright_images(n: int, seed: int) -> torch.Tensor:
    """Noise images dark at the top and bright at the bottom, under any crop or jitter: each turn is plain to see."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(20, 235, 32)[None, :, None, None]
    return torch.as_tensor(np.clip(ramp + rng.normal(0, 25, (n, 32, 32, 3)), 0, 255).astype(np.uint8))


def test_rotation_head_learns_to_name_the_turn():
    # Synthetic images whose "up" is plain: on CIFAR the head needs far more than a test's steps (at 50 steps its
    # loss sat within 0.03 of chance, and on which side depended on the CPU).
    p = _variant_params(rotation_weight=5.0, epochs=4)
    p = p.model_copy(update={"train": p.train.model_copy(update={"batch_size": 100, "lr": 0.05})})
    seed_everything(0)
    net = AnoMemNet.from_params(p)
    history = macl.train_macl(net, _upright_images(400, seed=0), None, p, RUNTIME, 0, progress=False)
    first, last = history[0], history[-1]
    assert last["loss"] == pytest.approx(
        last["loss_memory"] + last["loss_plain"] + last["loss_variance"] + 5.0 * last["loss_rotation"], rel=1e-5
    )
    # Chance is log 4 = 1.386; a head that names the turn goes far below it (0.05 to 0.12 over seeds 0-2 here).
    assert last["loss_rotation"] < 0.5 < first["loss_rotation"], [round(h["loss_rotation"], 3) for h in history]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_distinct_turns_gives_each_image_k_different_quarter_turns(k):
    turns = macl.distinct_turns(500, k, torch.Generator().manual_seed(0)).view(500, k)
    assert turns.min() >= 0 and turns.max() <= 3
    assert all(len(set(row.tolist())) == k for row in turns)
    assert set(turns[:, 0].tolist()) == {0, 1, 2, 3}  # each turn drawn, not a fixed order


def _shifted_params(k: int, epochs: int, batch_size: int = 100):
    p = _variant_params(memory_enabled=False, epochs=epochs)
    return p.model_copy(
        update={
            "contrastive": p.contrastive.model_copy(update={"shifted_instances": k}),
            "train": p.train.model_copy(update={"batch_size": batch_size, "lr": 0.05}),
        }
    )


@pytest.mark.parametrize("k", [1, 2, 4])
def test_shifted_instances_keep_the_step_size_and_take_k_times_the_steps(k):
    p = _shifted_params(k, epochs=2, batch_size=20)
    checkpoints = []
    net = AnoMemNet.from_params(p)
    history = macl.train_macl(net, _upright_images(40, 0), None, p, RUNTIME, 0, progress=False, save_checkpoint=checkpoints.append)
    assert checkpoints[0]["scheduler"]["last_epoch"] == 2 * k  # 40 images, 20 / k of them a step
    assert all(math.isfinite(h["loss"]) for h in history)


def _cosine_to_turned(net: AnoMemNet, images: torch.Tensor) -> float:
    net.eval()
    x = images.float().permute(0, 3, 1, 2) / 255
    with torch.no_grad():
        upright = net.project(net.pooled(net.features(x)))
        turned = net.project(net.pooled(net.features(rotate(x, torch.full((x.shape[0],), 2)))))
    return float(torch.nn.functional.cosine_similarity(upright, turned).mean())


def test_shifted_instances_push_an_image_away_from_its_own_turn():
    # With K = 4 every other turn of an image is a negative of it, so its upright and upside-down projections part;
    # with K = 1 (no turns) nothing asks for that. Synthetic images whose "up" is plain, as for the rotation head.
    images = _upright_images(400, seed=0)
    held_out = _upright_images(100, seed=1)
    cosines = {}
    for k in (1, 4):
        seed_everything(0)
        net = AnoMemNet.from_params(_shifted_params(k, epochs=3))
        macl.train_macl(net, images, None, _shifted_params(k, epochs=3), RUNTIME, 0, progress=False)
        cosines[k] = _cosine_to_turned(net, held_out)
    assert cosines[4] < cosines[1] - 0.5, cosines  # measured: 1.00 against -0.44


def test_view_scale_trains_on_smaller_views_and_the_net_still_takes_full_images(cifar_train_slice):
    p = _params({"view_scale": 0.5}, epochs=2, batch_size=25)
    seed_everything(0)
    net = AnoMemNet(p.model, p.memory)
    trained_on = []
    net.encoder.stem.register_forward_pre_hook(lambda m, args: trained_on.append(tuple(args[0].shape[2:])) if m.training else None)
    history = macl.train_macl(net, _class(cifar_train_slice, 0, 50), None, p, RUNTIME, 0, progress=False)
    assert trained_on == [(16, 16)] * 4  # 2 epochs of 2 steps, both views of a step in one pass
    assert all(math.isfinite(h["loss"]) for h in history)
    net.eval()
    with torch.no_grad():
        feats = net.features(torch.as_tensor(cifar_train_slice[0][:4]).permute(0, 3, 1, 2).float() / 255)
    assert feats[3].shape[2:] == (8, 8)  # scored at the images' own size


def test_rotation_weight_without_a_head_is_refused(cifar_train_slice):
    p = _variant_params(rotation_weight=1.0, epochs=1)
    with pytest.raises(ValueError, match="rotation_head"):
        macl.train_macl(AnoMemNet(p.model, p.memory), _class(cifar_train_slice, 0, 50), None, p, RUNTIME, 0, progress=False)


def test_resume_with_epoch_sampled_known_anomalies_reproduces_the_run(cifar_train_slice):
    p = _params(epochs=3, checkpoint_every_epochs=1, batch_size=16, known_sampling="epoch", known_batch_size=4)
    normal = _class(cifar_train_slice, 0, 32)
    known = torch.cat([_class(cifar_train_slice, c, 3) for c in (1, 2, 3)])  # 9 known, 4 a step: passes end mid-epoch
    straight, hist_straight = _train(p, normal, 1, known=known)
    captured = []
    _train(p, normal, 1, known=known, save_checkpoint=lambda st: captured.append(_snapshot(st)))
    assert "known_draws" in captured[0]
    seed_everything(101)
    fresh = AnoMemNet(p.model, p.memory)
    hist_resumed = macl.train_macl(fresh, normal, known, p, RUNTIME, 1, resume_from=captured[0], progress=False)
    assert [h["loss"] for h in hist_resumed] == [h["loss"] for h in hist_straight]
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), fresh.state_dict().values()))


def test_known_negatives_off_is_the_one_class_run(cifar_train_slice):
    p = _params(epochs=1, batch_size=25, known_negatives=False)
    normal = _class(cifar_train_slice, 0, 50)
    known = torch.cat([_class(cifar_train_slice, c, 5) for c in (1, 2, 3)])
    ignoring, hist_ignoring = _train(p, normal, known=known)
    one_class, hist_one_class = _train(p, normal, known=None)
    assert hist_ignoring[0]["loss"] == hist_one_class[0]["loss"]
    assert all(torch.equal(a, b) for a, b in zip(ignoring.state_dict().values(), one_class.state_dict().values()))


def test_step_schedule_and_memory_decay():
    net = AnoMemNet(_params().model, _params().memory)
    p = _params(epochs=5, warmup_epochs=1, schedule="step", decay_memory=True, lr=1.0)
    opt, sched = macl.build_optimizer(net, p, steps_per_epoch=4)  # 4 warm-up steps, then 16
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:12] == pytest.approx([1.0] * 8) and lrs[12:16] == pytest.approx([0.1] * 4) and lrs[16:] == pytest.approx([0.01] * 4)
    decayed = {id(t) for t in opt.param_groups[0]["params"]}
    assert all(id(net.memory(s).items) in decayed for s in net.scales)
    opt_default, _ = macl.build_optimizer(net, _params(), steps_per_epoch=4)
    assert not any(id(net.memory(s).items) in {id(t) for t in opt_default.param_groups[0]["params"]} for s in net.scales)


def test_dataset_input_norm_uses_the_normal_images_statistics(cifar_train_slice):
    from anomem.data import channel_stats

    base = _params(epochs=1, batch_size=25)
    p = base.model_copy(update={"model": base.model.model_copy(update={"input_norm": "dataset"})})
    normal = _class(cifar_train_slice, 0, 50)
    net, _ = _train(p, normal)
    mean, std = channel_stats(normal)
    pixels = normal.double().div(255).reshape(-1, 3)
    assert torch.allclose(mean.double(), pixels.mean(0), atol=1e-6) and torch.allclose(
        std.double(), pixels.std(0, unbiased=False), atol=1e-6
    )
    assert torch.allclose(net.input_mean.flatten(), mean) and torch.allclose(net.input_std.flatten(), std)
