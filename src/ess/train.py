"""Training on the synthetic tasks: plain PyTorch, AdamW, warmup + cosine, seeded.

    result = train(ModelConfig(...), TaskConfig(...), TrainConfig(...))
    result.test_accuracy, result.loss, result.accuracy   # final score, per-step curves

Loss and accuracy are computed at answer positions only (targets != IGNORE). Optional terms:

    loss = (1 - w) * CE + w * t^2 * KL(teacher_t || student_t)   (distillation, ESS.md E5)
           + lambda * transition_penalty                           (regulariser, ESS.md E4)

with w = distill_weight (only with a teacher), t = distill_temperature, p_t = softmax(logits/t),
the KL taken at answer positions and averaged over them, and the penalty of
`ess.models.transition_penalty`. Checkpoints are safetensors files (weights) with the model
config as JSON metadata; never pickle.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ess.models import LanguageModel, ModelConfig, transition_penalty
from ess.tasks import IGNORE, TaskConfig, make_split


@dataclass
class TrainConfig:
    """steps of AdamW on batches drawn (seeded) from the train split.

    lr: peak learning rate, reached after warmup_steps of linear warmup, then a cosine decay to
    min_lr_ratio * lr at the last step. seed: torch.manual_seed for initialisation and batch
    order. reg_lambda / reg_layers: the E4 regulariser (None = every layer with transitions).
    distill_weight / distill_temperature: used only when `train` is given a teacher.
    eval_batch_size: batch size of the final test evaluation. checkpoint: a .safetensors path
    to save the final model to (None = no file). device: where to train ("cpu", "cuda").
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    reg_lambda: float = 0.0
    reg_layers: tuple[int, ...] | None = None
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    eval_batch_size: int = 256
    checkpoint: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}"
            )
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.reg_lambda < 0:
            raise ValueError(f"reg_lambda must be >= 0, got {self.reg_lambda}")


@dataclass
class TrainResult:
    """Per-step curves on the training batch and the final test scores.

    loss: the full objective of each step (CE or its mix with the KL, plus lambda * penalty);
    accuracy: answer accuracy on the batch; lr: the learning rate used. test_loss is the plain
    cross-entropy on the test split; test_distillation_loss the t^2 KL to the teacher there
    (None without a teacher). seconds: wall time of `train` (data, steps, evaluation).
    model: the trained model.
    """

    loss: list[float]
    accuracy: list[float]
    lr: list[float]
    test_loss: float
    test_accuracy: float
    test_distillation_loss: float | None
    seconds: float
    model: LanguageModel = field(repr=False)

    def curves(self) -> dict[str, list[float]]:
        """{"step", "loss", "accuracy", "lr"}: columns of a per-step table."""
        return {
            "step": list(range(len(self.loss))),
            "loss": self.loss,
            "accuracy": self.accuracy,
            "lr": self.lr,
        }


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to config.lr over warmup_steps, then cosine decay to min_lr_ratio * lr."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio * config.lr
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def answer_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over answer positions. logits (b, L, V), targets (b, L) -> scalar."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def answer_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of answer positions where argmax(logits) == target: scalar."""
    answer = targets != IGNORE
    return (logits.argmax(-1)[answer] == targets[answer]).float().mean()


def distillation_loss(
    student: Tensor, teacher: Tensor, targets: Tensor, temperature: float
) -> Tensor:
    """t^2 KL(softmax(teacher/t) || softmax(student/t)), mean over answer positions.

    student, teacher: logits (b, L, V); targets (b, L) marks the answer positions.
    """
    answer = targets != IGNORE
    log_p_student = F.log_softmax(student[answer] / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher[answer] / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return temperature**2 * kl


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    inputs: Tensor,
    targets: Tensor,
    batch_size: int,
    teacher: LanguageModel | None = None,
    temperature: float = 1.0,
) -> tuple[float, float, float | None]:
    """(mean loss, accuracy, mean distillation loss or None) over all answer positions of the
    split, in batches; the distillation loss needs a teacher."""
    model.eval()
    loss_sum, kl_sum, correct, count = 0.0, 0.0, 0, 0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        logits = model(x)
        answer = y != IGNORE
        n = int(answer.sum())
        loss_sum += float(answer_loss(logits, y)) * n
        if teacher is not None:
            kl_sum += float(distillation_loss(logits, teacher(x), y, temperature)) * n
        correct += int((logits.argmax(-1)[answer] == y[answer]).sum())
        count += n
    model.train()
    return loss_sum / count, correct / count, None if teacher is None else kl_sum / count


def parameter_groups(model: LanguageModel, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and embeddings (dim >= 2) only, as nanoGPT.

    Biases, norms and the parameters marked by `ess.models.no_weight_decay` (WLA's decay_logit,
    A_log, dt_bias, D) are not decayed: shrinking those would move the transitions A themselves.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) for p in params]
    return [
        {
            "params": [p for p, d in zip(params, decayed, strict=True) if d],
            "weight_decay": weight_decay,
        },
        {"params": [p for p, d in zip(params, decayed, strict=True) if not d], "weight_decay": 0.0},
    ]


def train(
    model_config: ModelConfig,
    task_config: TaskConfig,
    train_config: TrainConfig,
    teacher: LanguageModel | None = None,
    splits: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> TrainResult:
    """Train a fresh LanguageModel(model_config) on the task; evaluate on the test split.

    splits: ((train inputs, train targets), (test inputs, test targets)) already generated
    from task_config (the workflow caches them); None generates them with `make_split`.
    Deterministic for fixed configs on one machine and thread count: torch.manual_seed(seed)
    fixes the initialisation, a torch.Generator seeded with seed fixes the batch order (epochs
    of a random permutation of the train split), the task data come from the task's seeds.
    """
    if model_config.vocab_size < task_config.vocab_size:
        raise ValueError(
            f"model vocab_size={model_config.vocab_size} < task vocab_size={task_config.vocab_size}"
        )
    start = time.perf_counter()
    torch.manual_seed(train_config.seed)
    device = torch.device(train_config.device)
    model = LanguageModel(model_config).to(device)
    if splits is None:
        splits = make_split(task_config, "train"), make_split(task_config, "test")
    train_inputs, train_targets = (t.to(device) for t in splits[0])
    test_inputs, test_targets = (t.to(device) for t in splits[1])
    if teacher is not None:
        teacher.to(device).eval()
    optimiser = torch.optim.AdamW(
        parameter_groups(model, train_config.weight_decay), lr=train_config.lr
    )
    batches = batch_indices(
        len(train_inputs), train_config.batch_size, train_config.steps, train_config.seed
    )
    reg_layers = None if train_config.reg_layers is None else list(train_config.reg_layers)

    losses, accuracies, lrs = [], [], []
    for step, index in enumerate(batches):
        lr = learning_rate(step, train_config)
        for group in optimiser.param_groups:
            group["lr"] = lr
        index = index.to(device)
        x, y = train_inputs[index], train_targets[index]
        logits, mixer_inputs = model.forward_with_mixer_inputs(x)
        loss = answer_loss(logits, y)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
            kl = distillation_loss(logits, teacher_logits, y, train_config.distill_temperature)
            loss = (1 - train_config.distill_weight) * loss + train_config.distill_weight * kl
        if train_config.reg_lambda > 0:
            loss = loss + train_config.reg_lambda * transition_penalty(
                model, mixer_inputs, reg_layers
            )
        optimiser_step(model, optimiser, loss, train_config.grad_clip)
        losses.append(loss.item())
        accuracies.append(float(answer_accuracy(logits.detach(), y)))
        lrs.append(lr)

    test_loss, test_accuracy, test_distillation_loss = evaluate(
        model,
        test_inputs,
        test_targets,
        train_config.eval_batch_size,
        teacher,
        train_config.distill_temperature,
    )
    if train_config.checkpoint is not None:
        save_checkpoint(model, train_config.checkpoint)
    model.cpu()
    return TrainResult(
        loss=losses,
        accuracy=accuracies,
        lr=lrs,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        test_distillation_loss=test_distillation_loss,
        seconds=time.perf_counter() - start,
        model=model,
    )


def optimiser_step(
    model: torch.nn.Module, optimiser: torch.optim.Optimizer, loss: Tensor, grad_clip: float
) -> None:
    """One update: backward, clip the global gradient norm to grad_clip (0 = no clipping), step."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimiser.step()


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> list[Tensor]:
    """steps index tensors (batch_size,) into range(n): consecutive slices of seeded epochs."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def save_checkpoint(model: LanguageModel, path: str) -> None:
    """Weights to a safetensors file, the ModelConfig as JSON in its metadata ("model_config")."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state.pop("head.weight", None)  # tied to embedding.weight
    save_file(state, path, metadata={"model_config": json.dumps(asdict(model.config))})


def load_checkpoint(path: str) -> LanguageModel:
    """The LanguageModel saved by `save_checkpoint` (in eval mode)."""
    with safe_open(path, framework="pt") as f:
        config = ModelConfig(**json.loads(f.metadata()["model_config"]))
    model = LanguageModel(config)
    state = load_file(path)
    state["head.weight"] = state["embedding.weight"]
    model.load_state_dict(state)
    return model.eval()
