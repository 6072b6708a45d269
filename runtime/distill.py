"""Distillation losses from the full-precision teacher (DeiT-style classification, diffusion MSE)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DISTILL_KINDS = ("none", "soft", "hard")


@dataclass(frozen=True)
class DistillConfig:
    """How the student learns from the teacher.

    Args:
        kind: ``"none"`` (labels only), ``"soft"`` (KL at temperature ``tau``) or ``"hard"``
            (cross-entropy on the teacher's argmax; BinaryAttention trains with this).
        alpha: weight of the distillation term; the label term gets ``1 - alpha``.
        tau: softmax temperature of soft distillation.

    Raises:
        ValueError: an unknown kind, ``alpha`` outside [0, 1], a non-positive ``tau``.
    """

    kind: str = "hard"
    alpha: float = 0.5
    tau: float = 1.0

    def __post_init__(self):
        if self.kind not in DISTILL_KINDS:
            raise ValueError(f"kind must be one of {list(DISTILL_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


def soft_distillation(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau² · KL(softmax(teacher/tau) ‖ softmax(student/tau))``, summed over classes, mean over batch.

    Equal to DeiT's ``kl_div(..., reduction="sum", log_target=True) * tau² / numel`` times the
    number of classes; here normalised per sample so its size does not depend on the class count.
    """
    log_p_student = F.log_softmax(student.float() / tau, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher.float() / tau, dim=-1)  # (B, K)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * tau * tau


def hard_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's predicted class."""
    return F.cross_entropy(student.float(), teacher.argmax(dim=-1))


def classification_loss(outputs, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                        config: DistillConfig) -> dict[str, torch.Tensor]:
    """Label loss mixed with distillation by ``alpha`` (DeiT).

    Args:
        outputs: student logits ``(B, K)``, or ``(cls_logits, dist_logits)`` from a model with a
            distillation token; the label term uses ``cls_logits``, the distillation term
            ``dist_logits``.
        labels: ``(B,)`` class indices.
        teacher_logits: ``(B, K)``; required unless ``config.kind == "none"``.
        config: the ``DistillConfig``.

    Returns:
        ``{"loss", "label_loss", "distill_loss"}`` (the last is 0 without distillation).

    Raises:
        ValueError: distillation asked for without teacher logits.

    Example:
        >>> out = classification_loss(torch.zeros(2, 3), torch.tensor([0, 1]), None, DistillConfig("none"))
        >>> round(out["loss"].item(), 4)
        1.0986
    """
    cls_logits, dist_logits = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
    label_loss = F.cross_entropy(cls_logits.float(), labels)
    if config.kind == "none":
        return {"loss": label_loss, "label_loss": label_loss, "distill_loss": torch.zeros_like(label_loss)}
    if teacher_logits is None:
        raise ValueError(f"distillation {config.kind!r} needs teacher logits")
    teacher_logits = teacher_logits.detach()
    if config.kind == "soft":
        distill = soft_distillation(dist_logits, teacher_logits, config.tau)
    else:
        distill = hard_distillation(dist_logits, teacher_logits)
    loss = (1.0 - config.alpha) * label_loss + config.alpha * distill
    return {"loss": loss, "label_loss": label_loss, "distill_loss": distill}


def diffusion_loss(prediction: torch.Tensor, noise: torch.Tensor, teacher_prediction: torch.Tensor | None,
                   alpha: float, noise_channels: int) -> dict[str, torch.Tensor]:
    """Denoising MSE mixed with the MSE to the teacher's prediction by ``alpha``.

    Args:
        prediction: student output ``(B, Co, H, W)``; its first ``noise_channels`` channels
            predict the noise (a learned-sigma model has more channels after them).
        noise: the noise added, ``(B, C, H, W)``.
        teacher_prediction: teacher output, same shape as ``prediction``, or None.
        alpha: weight of the distillation term (the whole output, variance channels included);
            the denoising term gets ``1 - alpha``. Ignored without a teacher.
        noise_channels: C.

    Returns:
        ``{"loss", "denoise_loss", "distill_loss"}``.
    """
    denoise = F.mse_loss(prediction[:, :noise_channels].float(), noise.float())
    if teacher_prediction is None:
        return {"loss": denoise, "denoise_loss": denoise, "distill_loss": torch.zeros_like(denoise)}
    distill = F.mse_loss(prediction.float(), teacher_prediction.detach().float())
    return {"loss": (1.0 - alpha) * denoise + alpha * distill, "denoise_loss": denoise, "distill_loss": distill}
