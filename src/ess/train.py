"""Training on the synthetic tasks: plain PyTorch, AdamW, warmup + cosine, seeded.

    result = train(ModelConfig(...), TaskConfig(...), TrainConfig(...))
    result.test_accuracy, result.loss, result.accuracy   # final score, per-step curves

Loss and accuracy are computed at answer positions only (targets != IGNORE). Optional terms:

    loss = (1 - w) * CE + w * t^2 * KL(teacher_t || student_t)   (distillation, docs/method.md, E5)
           + lambda * transition_penalty                          (regulariser, docs/method.md, E4)

with w = distill_weight (only with a teacher), t = distill_temperature, p_t = softmax(logits/t),
the KL taken at answer positions and averaged over them, and the penalty of
`ess.models.transition_penalty`. Checkpoints are safetensors files (weights) with the model
config as JSON metadata; never pickle.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
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
    eval_batch_size: batch size of the final test evaluation. eval_every: every this many steps
    (and at the last), score the first eval_sequences test sequences (a learning curve against
    sequences seen; 0 = final evaluation only). log_every: print step, loss, accuracy and
    steps/s every this many steps (0 = silent). checkpoint: a .safetensors path to save the
    final model to (None = no file). device: where to train ("cpu", "cuda").
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
    eval_every: int = 0
    eval_sequences: int = 256
    log_every: int = 0
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
        for name in ("eval_every", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if self.eval_sequences < 1:
            raise ValueError(f"eval_sequences must be >= 1, got {self.eval_sequences}")


@dataclass
class Curves:
    """What `fit` records: per step the objective (loss), the training-batch accuracy (None for
    a loss without one) and the learning rate; after the steps eval_step (0-based, like the
    per-step lists' index) the held-out score eval_accuracy."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    """Per-step curves on the training batch and the final test scores.

    curves.loss: the full objective of each step (CE or its mix with the KL, plus lambda *
    penalty); curves.accuracy: answer accuracy on the batch; curves.lr: the learning rate;
    curves.eval_step / eval_accuracy: the learning curve on test sequences (eval_every).
    test_loss is the plain cross-entropy on the test split; test_distillation_loss the t^2 KL
    to the teacher there (None without a teacher). seconds: wall time of `train` (data, steps,
    evaluation). model: the trained model.
    """

    curves: Curves
    test_loss: float
    test_accuracy: float
    test_distillation_loss: float | None
    seconds: float
    model: LanguageModel = field(repr=False)

    def step_table(self) -> dict[str, list]:
        """{"step", "loss", "accuracy", "lr", "test_accuracy"}: columns of a per-step table,
        step 0-based (test_accuracy is None except after the evaluated steps)."""
        steps = range(len(self.curves.loss))
        evaluated = dict(zip(self.curves.eval_step, self.curves.eval_accuracy, strict=True))
        return {
            "step": list(steps),
            "loss": self.curves.loss,
            "accuracy": self.curves.accuracy,
            "lr": self.curves.lr,
            "test_accuracy": [evaluated.get(step) for step in steps],
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

    Biases, norms and the parameters marked by `ess.mixers.no_weight_decay` (WLA's decay_logit,
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


def fit(
    model: torch.nn.Module,
    n_examples: int,
    batch_loss: Callable[[Tensor], tuple[Tensor, float | None]],
    config: TrainConfig,
    evaluate_accuracy: Callable[[], float] | None = None,
) -> Curves:
    """The training loop of every model here (synthetic tasks and text LMs): AdamW on the
    parameter groups, warmup + cosine learning rate, gradient clipping, seeded batch order.

    batch_loss(index) -> (objective, batch accuracy or None) for the examples `index`
    (batch_size,) of the caller's data; evaluate_accuracy() -> held-out score, called every
    config.eval_every steps and after the last (if eval_every > 0). Progress goes to stdout
    every config.log_every steps. The model is left in train mode.
    """
    optimiser = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, fused=True
    )
    curves = Curves()
    batches = batch_indices(n_examples, config.batch_size, config.steps, config.seed)
    model.train()
    start = time.perf_counter()
    for step, index in enumerate(batches):
        lr = learning_rate(step, config)
        for group in optimiser.param_groups:
            group["lr"] = lr
        loss, accuracy = batch_loss(index)
        optimiser_step(model, optimiser, loss, config.grad_clip)
        curves.loss.append(loss.item())
        curves.accuracy.append(accuracy)
        curves.lr.append(lr)
        last = step + 1 == config.steps
        if (
            evaluate_accuracy is not None
            and config.eval_every
            and ((step + 1) % config.eval_every == 0 or last)
        ):
            curves.eval_step.append(step)
            curves.eval_accuracy.append(evaluate_accuracy())
            model.train()
        if config.log_every and ((step + 1) % config.log_every == 0 or last):
            print(progress_line(step, curves, time.perf_counter() - start, config), flush=True)
    return curves


def progress_line(step: int, curves: Curves, seconds: float, config: TrainConfig) -> str:
    """'step 200/1500  loss 1.234  acc 0.512  test 0.498  9.1 steps/s': means over the last
    log_every steps, the latest test score if any."""
    recent = slice(max(0, step + 1 - config.log_every), step + 1)
    loss = sum(curves.loss[recent]) / len(curves.loss[recent])
    line = f"step {step + 1}/{config.steps}  loss {loss:.4f}"
    accuracies = [a for a in curves.accuracy[recent] if a is not None]
    if accuracies:
        line += f"  acc {sum(accuracies) / len(accuracies):.3f}"
    if curves.eval_accuracy:
        line += f"  test {curves.eval_accuracy[-1]:.3f}"
    return line + f"  {(step + 1) / seconds:.1f} steps/s"


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
    Only the answer positions' logits are computed in training (the loss is zero elsewhere).
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
    reg_layers = None if train_config.reg_layers is None else list(train_config.reg_layers)
    temperature = train_config.distill_temperature

    def batch_loss(index: Tensor) -> tuple[Tensor, float]:
        index = index.to(device)
        x, y = train_inputs[index], train_targets[index]
        answer = y != IGNORE
        hidden, mixer_inputs = model.hidden_with_mixer_inputs(x)
        logits = model.head(hidden[answer])  # (answers, V)
        loss = F.cross_entropy(logits, y[answer])
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)[answer]
            kl = distillation_loss(logits, teacher_logits, y[answer], temperature)
            loss = (1 - train_config.distill_weight) * loss + train_config.distill_weight * kl
        if train_config.reg_lambda > 0:
            loss = loss + train_config.reg_lambda * transition_penalty(
                model, mixer_inputs, reg_layers
            )
        return loss, float((logits.detach().argmax(-1) == y[answer]).float().mean())

    def test_accuracy() -> float:
        n = train_config.eval_sequences
        return evaluate(model, test_inputs[:n], test_targets[:n], train_config.eval_batch_size)[1]

    curves = fit(model, len(train_inputs), batch_loss, train_config, test_accuracy)
    test_loss, test_acc, test_distillation_loss = evaluate(
        model, test_inputs, test_targets, train_config.eval_batch_size, teacher, temperature
    )
    if train_config.checkpoint is not None:
        save_checkpoint(model, train_config.checkpoint)
    model.cpu()
    return TrainResult(
        curves=curves,
        test_loss=test_loss,
        test_accuracy=test_acc,
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
