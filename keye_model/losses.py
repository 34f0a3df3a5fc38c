"""Training objectives of SPEC.md section 4 as pure tensor functions.

Every function takes per-sequence or per-token tensors and returns a scalar loss (and the parts
worth logging), so each can be checked against a hand computation on small tensors.

Shape legend: B batch of sequences, L sequence length, V vocabulary, G rollouts in one GSPO group,
T response tokens of a rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the mask of counted positions.

    Position t predicts labels[t + 1], as in a causal LM. Returns (logp_BL1, mask_BL1) of length L-1,
    logp zeroed where the label is IGNORE_INDEX.
    """
    logits = logits_BLV[:, :-1].float()
    targets = labels_BL[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.gather(logits.log_softmax(-1), 2, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logprobs(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    """Sum of response-token log-probabilities per sequence: log pi(y|x), shape (B,)."""
    logp, _ = token_logprobs(logits_BLV, labels_BL)
    return logp.sum(-1)


def weighted_lm_loss(logits_BLV: torch.Tensor, labels_BL: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy per sample, averaged over samples with replay weights.

    LongCoT cold-start repeats high-quality samples; a weight w_i counts sample i w_i times:
    loss = sum_i w_i * ce_i / sum_i w_i. ``weights`` is per row (B,) when each row is one sample, or
    per position (B, L) as packing lays it out (``Packed.token_weights``: w_i / n_i on each of sample
    i's n_i counted label positions), which gives the same formula for rows holding several samples.
    """
    logp, mask = token_logprobs(logits_BLV, labels_BL)
    if weights.dim() == 1:
        per_token = mask * (weights.to(logp.dtype)[:, None] / mask.sum(-1, keepdim=True).clamp_min(1))
    else:
        per_token = weights[:, 1:].to(logp.dtype) * mask
    return -(logp * per_token).sum() / per_token.sum().clamp_min(1e-12)


# ---------------------------------------------------------------- MPO (InternVL2.5-MPO)


@dataclass(frozen=True, kw_only=True)
class MPOWeights:
    """Weights of the three MPO terms and the DPO temperature."""

    preference: float = 0.8
    """Weight of the DPO (sigmoid) preference loss."""
    quality: float = 0.2
    """Weight of the BCO quality loss."""
    generation: float = 1.0
    """Weight of the SFT loss on chosen responses."""
    beta: float = 0.1
    """Temperature on log-ratios (the implicit reward is beta * log-ratio)."""


class RunningRewardMean:
    """BCO's shift delta: the equal-weight mean of every step's batch-mean reward so far.

    Updated *before* use, so the current step's batch is included. Its state goes into checkpoints so
    a resumed run continues the same mean. Example: batch means 0.2 then 0.4 give delta 0.2 at step 1
    and 0.3 at step 2.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, batch_mean: float) -> float:
        self.total += float(batch_mean)
        self.count += 1
        return self.total / self.count

    def state_dict(self) -> dict[str, float]:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total, self.count = float(state["total"]), int(state["count"])


@dataclass(frozen=True)
class MPOLoss:
    total: torch.Tensor
    preference: torch.Tensor
    quality: torch.Tensor
    generation: torch.Tensor
    delta: float


def dpo_loss(logratio_chosen_B: torch.Tensor, logratio_rejected_B: torch.Tensor, beta: float) -> torch.Tensor:
    """L_pref = -log sigmoid(beta * lr_c - beta * lr_r), mean over pairs."""
    return -F.logsigmoid(beta * (logratio_chosen_B - logratio_rejected_B)).mean()


def bco_loss(
    logratio_chosen_B: torch.Tensor, logratio_rejected_B: torch.Tensor, beta: float, delta: float
) -> torch.Tensor:
    """L_qual = -log sigmoid(beta*lr_c - delta) - log sigmoid(-(beta*lr_r - delta)), mean over pairs."""
    chosen = -F.logsigmoid(beta * logratio_chosen_B - delta)
    rejected = -F.logsigmoid(-(beta * logratio_rejected_B - delta))
    return (chosen + rejected).mean()


def mpo_loss(
    *,
    policy_chosen_B: torch.Tensor,
    policy_rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    generation: torch.Tensor,
    reward_mean: RunningRewardMean,
    weights: MPOWeights = MPOWeights(),
) -> MPOLoss:
    """L = w_p * L_pref + w_q * L_qual + w_g * L_gen on summed response log-probs.

    ``generation`` is the token-mean cross-entropy over the chosen responses (computed by the caller
    from the same forward pass). ``reward_mean`` is updated with this batch's mean reward
    beta * lr over chosen and rejected together, then used as delta.
    """
    lr_c = policy_chosen_B - ref_chosen_B
    lr_r = policy_rejected_B - ref_rejected_B
    rewards = weights.beta * torch.cat([lr_c, lr_r]).detach()
    delta = reward_mean.update(rewards.mean().item())
    pref = dpo_loss(lr_c, lr_r, weights.beta)
    qual = bco_loss(lr_c, lr_r, weights.beta, delta)
    total = weights.preference * pref + weights.quality * qual + weights.generation * generation
    return MPOLoss(total=total, preference=pref, quality=qual, generation=generation, delta=delta)


# ---------------------------------------------------------------- GSPO


@dataclass(frozen=True, kw_only=True)
class GSPOClip:
    """GSPO's asymmetric clip range on the sequence-level ratio (Qwen's values)."""

    low: float = 3e-4
    """Ratio is clipped below at 1 - low."""
    high: float = 4e-4
    """Ratio is clipped above at 1 + high."""


def group_advantages(rewards_G: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean r) / (std r + eps), unbiased std; all-equal rewards give zero advantages.

    Example: rewards [1, 0, 0, 1] have mean 0.5 and unbiased std 0.5774, so A = [0.866, -0.866, ...].
    """
    rewards_G = rewards_G.float()
    if rewards_G.numel() < 2:
        return torch.zeros_like(rewards_G)
    return (rewards_G - rewards_G.mean()) / (rewards_G.std(unbiased=True) + eps)


@dataclass(frozen=True)
class GSPOLoss:
    loss: torch.Tensor
    ratio_G: torch.Tensor
    """One importance ratio per rollout (detached, for logging)."""
    clipped_fraction: float


def gspo_loss(
    logp_new_GT: torch.Tensor,
    logp_old_GT: torch.Tensor,
    mask_GT: torch.Tensor,
    advantages_G: torch.Tensor,
    clip: GSPOClip = GSPOClip(),
) -> GSPOLoss:
    """Negative GSPO objective for one group.

    s_i = exp(mean_t [log pi_new(y_i,t) - log pi_old(y_i,t)]) over rollout i's response tokens: one
    length-normalized ratio per sequence, not per token. J = mean_i min(s_i A_i, clip(s_i) A_i).
    """
    mask = mask_GT.to(logp_new_GT.dtype)
    mean_log_ratio_G = ((logp_new_GT - logp_old_GT) * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    ratio_G = mean_log_ratio_G.exp()
    clipped_G = ratio_G.clamp(1 - clip.low, 1 + clip.high)
    objective_G = torch.minimum(ratio_G * advantages_G, clipped_G * advantages_G)
    clipped_fraction = ((ratio_G < 1 - clip.low) | (ratio_G > 1 + clip.high)).float().mean().item()
    return GSPOLoss(loss=-objective_G.mean(), ratio_G=ratio_G.detach(), clipped_fraction=clipped_fraction)


# ---------------------------------------------------------------- SigLIP (vision pre-training)

#: SigLIP's initial logit scale and bias (Zhai et al. 2023: t' = log 10, b = -10); ours stay fixed.
SIGLIP_SCALE = 10.0
SIGLIP_BIAS = -10.0


def pooled_embedding(tokens_ND: torch.Tensor) -> torch.Tensor:
    """One unit vector for N token vectors: concat(mean, max) over the tokens, L2-normalized, shape (2D,).

    The max keeps what a few tokens show (a small shape in one corner of an image) that the mean dilutes.
    """
    return F.normalize(torch.cat([tokens_ND.mean(0), tokens_ND.amax(0)]), dim=-1)


def sigmoid_contrastive_loss(
    image_BD: torch.Tensor,
    text_BD: torch.Tensor,
    positive_BB: torch.Tensor,
    scale: float = SIGLIP_SCALE,
    bias: float = SIGLIP_BIAS,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over unit embeddings.

    logit_ij = scale * <image_i, text_j> + bias; label_ij = +1 where text j describes image i (``positive_BB``:
    the diagonal, and every other sample with the same caption), else -1;
    loss = -sum_ij log sigmoid(label_ij * logit_ij) / B.
    """
    logits_BB = scale * image_BD @ text_BD.T + bias
    labels_BB = positive_BB.to(logits_BB.dtype) * 2.0 - 1.0
    return -F.logsigmoid(labels_BB * logits_BB).sum() / image_BD.shape[0]
