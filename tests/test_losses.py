"""HDKDLoss against the formulas of docs/model.md (section 11) and against the original's
re-running computation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hdkd.distill import HDKDLoss, forward_with_features
from hdkd.models import create_model


def _features(batch, gen, requires_grad=False):
    shapes = [(batch, 4, 8, 8), (batch, 6, 4, 4), (batch, 8, 2, 2)]
    return [torch.randn(*s, generator=gen, requires_grad=requires_grad) for s in shapes]


def _formula(cls, dist, teacher, s_feats, t_feats, labels, alpha, tau, kind, lam, beta):
    """docs/model.md, section 11, written out elementwise, without the functional losses used by
    HDKDLoss."""
    def log_softmax(z):
        return z - z.exp().sum(dim=1, keepdim=True).log()

    n = labels.numel()
    base = -log_softmax(cls)[torch.arange(n), labels].mean()
    if kind == "soft":
        log_s, log_t = log_softmax(dist / tau), log_softmax(teacher / tau)
        kd = (log_t.exp() * (log_t - log_s)).sum() * tau ** 2 / dist.numel()
    else:
        kd = -log_softmax(dist)[torch.arange(n), teacher.argmax(dim=1)].mean()
    feat = sum(((s - t) ** 2).mean() * (i + 1) ** beta
               for i, (s, t) in enumerate(zip(s_feats, t_feats)))
    logit = (1 - alpha) * base + alpha * kd
    return {"base": base, "kd": kd, "logit": logit, "feature": feat, "total": logit + lam * feat}


@pytest.mark.parametrize("kind,alpha,tau,lam,beta", [("soft", 0.5, 1.0, 10.0, 1.0),
                                                     ("soft", 0.3, 3.0, 2.5, 2.0),
                                                     ("hard", 0.7, 1.0, 10.0, 0.5)])
def test_matches_model_md_formulas(kind, alpha, tau, lam, beta):
    gen = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    labels = torch.randint(0, 4, (5,), generator=gen)
    s_feats, t_feats = _features(5, gen), _features(5, gen)
    loss = HDKDLoss(alpha=alpha, tau=tau, kind=kind, feature_weight=lam, beta=beta)
    total = loss((cls, dist), s_feats, teacher, t_feats, labels)
    want = _formula(cls, dist, teacher, s_feats, t_feats, labels, alpha, tau, kind, lam, beta)
    assert set(loss.last_parts) == set(want)
    for key, value in want.items():
        assert loss.last_parts[key] == pytest.approx(float(value), rel=1e-5), key
    assert float(total) == pytest.approx(float(want["total"]), rel=1e-5)


def test_defaults_weight_stages_one_two_three():
    loss = HDKDLoss()
    assert (loss.alpha, loss.tau, loss.kind, loss.feature_weight, loss.beta) == (0.5, 1.0, "soft",
                                                                                 10.0, 1.0)
    zeros = [torch.zeros(2, 1, 2, 2) for _ in range(3)]
    ones = [torch.ones(2, 1, 2, 2) for _ in range(3)]
    logits = torch.zeros(2, 3)
    loss((logits, logits), zeros, logits, ones, torch.tensor([0, 1]))
    assert loss.last_parts["feature"] == pytest.approx(1 + 2 + 3)
    assert loss.last_parts["kd"] == pytest.approx(0.0, abs=1e-7)
    assert loss.last_parts["base"] == pytest.approx(math.log(3))


def test_plain_logits_with_kind_none():
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(6, 3, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    loss = HDKDLoss(kind="none")
    total = loss(logits, None, None, None, labels)
    assert float(total) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    assert loss.last_parts["kd"] == 0.0 and loss.last_parts["feature"] == 0.0
    assert loss.last_parts["logit"] == loss.last_parts["base"] == pytest.approx(float(total))
    # the student from scratch keeps the feature term when features are given
    s_feats, t_feats = _features(6, gen), _features(6, gen)
    loss(logits, s_feats, None, t_feats, labels)
    want = sum(F.mse_loss(s, t) * (i + 1) for i, (s, t) in enumerate(zip(s_feats, t_feats)))
    assert loss.last_parts["feature"] == pytest.approx(float(want), rel=1e-6)
    # a (cls, dist) pair with kind="none" uses the class logits only
    loss((logits, torch.randn(6, 3, generator=gen)), None, None, None, labels)
    assert loss.last_parts["total"] == pytest.approx(float(F.cross_entropy(logits, labels)))


def test_errors_are_clear():
    logits, labels = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="kind.*'medium'"):
        HDKDLoss(kind="medium")
    with pytest.raises(ValueError, match="one logits tensor"):
        HDKDLoss(kind="soft")(logits, None, logits, None, labels)
    with pytest.raises(ValueError, match="needs teacher_logits"):
        HDKDLoss(kind="hard")((logits, logits), None, None, None, labels)
    s = [torch.zeros(2, 4, 8, 8), torch.zeros(2, 6, 4, 4)]
    t = [torch.zeros(2, 4, 8, 8), torch.zeros(2, 6, 2, 2)]
    with pytest.raises(ValueError, match=r"stage 2 .*\(2, 6, 4, 4\).*\(2, 6, 2, 2\)"):
        HDKDLoss()((logits, logits), s, logits, t, labels)
    with pytest.raises(ValueError, match="2 student and 1 teacher"):
        HDKDLoss()((logits, logits), s, logits, t[:1], labels)
    with pytest.raises(ValueError, match="without student_features"):
        HDKDLoss()((logits, logits), None, logits, t, labels)


def _original_style(teacher, student, x, labels, alpha, tau, lam, beta):
    """The original's design: the teacher once for logits, then for every distilled stage k a
    partial forward of the first k children of both models (teacher under no_grad)."""
    with torch.no_grad():
        teacher_logits = teacher(x)
    cls, dist = student(x)
    base = F.cross_entropy(cls, labels)
    kd = F.kl_div(F.log_softmax(dist / tau, dim=1), F.log_softmax(teacher_logits / tau, dim=1),
                  reduction="sum", log_target=True) * tau * tau / dist.numel()
    feature = 0
    for i, k in enumerate((1, 2, 3)):
        with torch.no_grad():
            t_feat = nn.Sequential(*list(teacher.children())[:k])(x)
        s_feat = nn.Sequential(*list(student.children())[:k])(x)
        feature = feature + nn.MSELoss()(t_feat, s_feat) * (i + 1) ** beta
    return (1 - alpha) * base + alpha * kd + lam * feature


def test_single_pass_equals_original_rerunning_design():
    torch.manual_seed(0)
    teacher = create_model("hdkd_teacher", num_classes=3, img_size=32).eval()
    student = create_model("hdkd", num_classes=3, img_size=32).train()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])

    ref = _original_style(teacher, student, x, labels, 0.5, 2.0, 10.0, 1.0)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)

    loss = HDKDLoss(tau=2.0)
    with torch.no_grad():
        t_logits, t_feats = forward_with_features(teacher, x)
    outputs, s_feats = forward_with_features(student, x)
    total = loss(outputs, s_feats, t_logits, t_feats, labels)
    total.backward()
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    assert loss.last_parts["feature"] > 0 and loss.last_parts["kd"] > 0
    flat = torch.cat([p.grad.flatten() for p in student.parameters()])
    ref_flat = torch.cat([g.flatten() for g in ref_grads.values()])
    assert float((flat - ref_flat).norm() / ref_flat.norm()) < 1e-5
    # per parameter too (absolute floor: some BN biases have a zero gradient up to rounding)
    for name, p in student.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name], rtol=1e-3, atol=1e-5), name
    assert all(p.grad is None for p in teacher.parameters())


def test_gradients_reach_the_student_only():
    gen = torch.Generator().manual_seed(2)
    # teacher tensors that still carry a graph must not receive gradients
    teacher_logits = torch.randn(3, 4, generator=gen, requires_grad=True)
    t_feats = _features(3, gen, requires_grad=True)
    cls = torch.randn(3, 4, generator=gen, requires_grad=True)
    dist = torch.randn(3, 4, generator=gen, requires_grad=True)
    s_feats = _features(3, gen, requires_grad=True)
    HDKDLoss()((cls, dist), s_feats, teacher_logits, t_feats, torch.tensor([0, 1, 3])).backward()
    assert teacher_logits.grad is None and all(t.grad is None for t in t_feats)
    assert cls.grad.abs().sum() > 0 and dist.grad.abs().sum() > 0
    assert all(s.grad.abs().sum() > 0 for s in s_feats)
