"""Training on the synthetic tasks: plain PyTorch, AdamW, warmup + cosine, seeded.

    result = train(ModelConfig(...), TaskConfig(...), TrainConfig(...))
    result.test_accuracy, result.loss, result.accuracy   # final score, per-step curves

Loss and accuracy are computed at answer positions only (targets != IGNORE). Optional terms:

    loss = (1 - w) * CE + w * t^2 * KL(teacher_t || student_t)   (distillation, docs/method.md, E5)
           + lambda * transition_penalty                          (regulariser, docs/method.md, E4)

with w = distill_weight (only with a teacher), t = distill_temperature, p_t = softmax(logits/t),
the KL taken at answer positions and averaged over them, and the penalty of
`ess.paper.training.models.transition_penalty`. Checkpoints are safetensors files (weights) with the
model config as JSON metadata; never pickle.

Memory: logits are computed at answer positions only (training, evaluation); with
TrainConfig.micro_batch_size the gradient of a batch is accumulated over micro-batches, each
term weighted by its share of the batch's answer positions, so it is the full batch's gradient
(`batch_gradient`). Requeue: with TrainConfig.resume_state, `fit` writes the whole training
state (model, optimiser, RNG, curves so far) every resume_every_steps steps or
resume_every_minutes minutes, atomically, and a rerun continues from it to the same weights
and curves as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ess.paper.training.model_config import ModelConfig
from ess.paper.training.models import LanguageModel, regularised_transitions, transition_penalty
from ess.paper.training.tasks import IGNORE, TaskConfig, make_split


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
    micro_batch_size: sequences per forward/backward; a batch's gradient is accumulated over
    micro-batches of this size (None = the whole batch in one pass, the default); the test
    evaluation runs in batches of at most this size too. It changes peak memory, not the
    gradient (up to float rounding). resume_state: path of the requeue state file (None =
    none): written every resume_every_steps steps (0 = never) or resume_every_minutes minutes
    (0 = never) and after the last step, read at the start if it exists and belongs to the same
    run; the caller deletes it once the run's outputs are written.
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
    micro_batch_size: int | None = None
    resume_state: str | None = None
    resume_every_steps: int = 0
    resume_every_minutes: float = 0.0

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
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(
                f"micro_batch_size must be >= 1 or None (the whole batch), got "
                f"{self.micro_batch_size}"
            )
        if self.resume_every_steps < 0 or self.resume_every_minutes < 0:
            raise ValueError(
                f"resume_every_steps and resume_every_minutes must be >= 0 (0 = off), got "
                f"{self.resume_every_steps}, {self.resume_every_minutes}"
            )


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


def answer_logits(model: LanguageModel, x: Tensor, answer: Tensor) -> Tensor:
    """The logits at the answer positions only: x (b, L) tokens, answer (b, L) bool ->
    (answers, V). The head is never applied to the (b, L, V) of every position."""
    return model.head(model.hidden_with_mixer_inputs(x)[0][answer])


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
    split, in batches; the distillation loss needs a teacher. Logits at answer positions only."""
    model.eval()
    loss_sum, kl_sum, correct, count = 0.0, 0.0, 0, 0
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        answer = y != IGNORE
        logits = answer_logits(model, x, answer)  # (answers, V)
        n = int(answer.sum())
        loss_sum += float(F.cross_entropy(logits, y[answer])) * n
        if teacher is not None:
            teacher_logits = answer_logits(teacher, x, answer)
            kl_sum += float(distillation_loss(logits, teacher_logits, y[answer], temperature)) * n
        correct += int((logits.argmax(-1) == y[answer]).sum())
        count += n
    model.train()
    return loss_sum / count, correct / count, None if teacher is None else kl_sum / count


def parameter_groups(model: LanguageModel, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and embeddings (dim >= 2) only, as nanoGPT.

    Biases, norms and the parameters marked by `ess.paper.training.mixers.no_weight_decay` (WLA's
    decay_logit, A_log, dt_bias, D) are not decayed: shrinking those would move the transitions A
    themselves.
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
    batch_gradient: Callable[[Tensor], tuple[float, float | None]],
    config: TrainConfig,
    evaluate_accuracy: Callable[[], float] | None = None,
    run_identity: str = "",
) -> Curves:
    """The training loop of every model here (synthetic tasks and text LMs): AdamW on the
    parameter groups, warmup + cosine learning rate, gradient clipping, seeded batch order.

    batch_gradient(index) -> (objective, batch accuracy or None) for the examples `index`
    (batch_size,) of the caller's data, with the objective's gradient accumulated into the
    parameters' .grad (`loss_gradient` makes one from a loss function); evaluate_accuracy() ->
    held-out score, called every config.eval_every steps and after the last (if eval_every >
    0). Progress goes to stdout every config.log_every steps. The model is left in train mode.

    With config.resume_state, the training state is saved every resume_every_steps steps or
    resume_every_minutes minutes (`save_training_state`) and, when the file exists and was
    written for the same run (config and `run_identity`, the caller's description of model and
    data), training continues from it. The state after the last step is saved too, so that a
    job killed during what follows (the final evaluation, writing its outputs) does not train
    again; the caller deletes the file once its outputs are written.
    """
    optimiser = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, fused=True
    )
    curves = Curves()
    batches = batch_indices(n_examples, config.batch_size, config.steps, config.seed)
    fingerprint = training_fingerprint(config, run_identity)
    first = 0
    if config.resume_state is not None and os.path.exists(config.resume_state):
        first = load_training_state(config.resume_state, fingerprint, model, optimiser, curves)
    model.train()
    start = last_saved = time.perf_counter()
    for step in range(first, config.steps):
        lr = learning_rate(step, config)
        for group in optimiser.param_groups:
            group["lr"] = lr
        optimiser.zero_grad(set_to_none=True)
        loss, accuracy = batch_gradient(batches[step])
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()
        curves.loss.append(loss)
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
            seconds = time.perf_counter() - start
            print(progress_line(step, first, curves, seconds, config), flush=True)
        final = last and config.resume_state is not None
        if final or resume_due(step, time.perf_counter() - last_saved, config):
            save_training_state(
                config.resume_state, fingerprint, step + 1, model, optimiser, curves
            )
            last_saved = time.perf_counter()
    return curves


def loss_gradient(
    batch_loss: Callable[[Tensor], tuple[Tensor, float | None]],
) -> Callable[[Tensor], tuple[float, float | None]]:
    """A `fit` batch_gradient from batch_loss(index) -> (objective tensor, accuracy): one
    forward and one backward of the whole batch."""

    def gradient(index: Tensor) -> tuple[float, float | None]:
        loss, accuracy = batch_loss(index)
        loss.backward()
        return loss.item(), accuracy

    return gradient


def resume_due(step: int, seconds_since_save: float, config: TrainConfig) -> bool:
    """Whether the training state is saved after `step` (0-based): every resume_every_steps
    steps or once resume_every_minutes have passed since the last save."""
    if config.resume_state is None:
        return False
    by_steps = config.resume_every_steps and (step + 1) % config.resume_every_steps == 0
    by_time = config.resume_every_minutes and seconds_since_save >= 60 * config.resume_every_minutes
    return bool(by_steps or by_time)


def training_fingerprint(config: TrainConfig, run_identity: str) -> str:
    """What a resume state must have been written for: the TrainConfig fields that shape the
    run (not where it logs, saves or how often) and the caller's run identity."""
    fields = asdict(config)
    for name in ("log_every", "checkpoint", "resume_state", "resume_every_steps"):
        fields.pop(name)
    fields.pop("resume_every_minutes")
    return json.dumps({"train": fields, "run": run_identity}, sort_keys=True, default=str)


def save_training_state(
    path: str,
    fingerprint: str,
    next_step: int,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    curves: Curves,
) -> None:
    """Everything `fit` needs to continue at next_step, by torch.save of tensors and plain
    values only (torch.load(weights_only=True) reads it), to a temporary file renamed over
    `path`: a kill mid-write leaves the previous state whole."""
    state = {
        "fingerprint": fingerprint,
        "next_step": next_step,
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "curves": asdict(curves),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    temporary = f"{path}.tmp{os.getpid()}"
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_training_state(
    path: str,
    fingerprint: str,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    curves: Curves,
) -> int:
    """Restore model, optimiser, RNG and curves from `save_training_state`'s file; returns the
    step to continue at. A state written for another run (fingerprint) is ignored (0): its
    path is reused by a changed config, whose run starts afresh."""
    device = next(model.parameters()).device
    state = torch.load(path, map_location=device, weights_only=True)
    if state["fingerprint"] != fingerprint:
        print(f"{path} was written for another run: starting from step 0", flush=True)
        return 0
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    for name, values in state["curves"].items():
        getattr(curves, name).extend(values)
    torch.set_rng_state(state["cpu_rng"].cpu())
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    print(f"resumed from {path} at step {state['next_step']}", flush=True)
    return state["next_step"]


def progress_line(
    step: int, first: int, curves: Curves, seconds: float, config: TrainConfig
) -> str:
    """'step 200/1500  loss 1.234  acc 0.512  test 0.498  9.1 steps/s': means over the last
    log_every steps, the latest test score if any; the rate counts the steps since `first`
    (where this process started or resumed)."""
    recent = slice(max(0, step + 1 - config.log_every), step + 1)
    loss = sum(curves.loss[recent]) / len(curves.loss[recent])
    line = f"step {step + 1}/{config.steps}  loss {loss:.4f}"
    accuracies = [a for a in curves.accuracy[recent] if a is not None]
    if accuracies:
        line += f"  acc {sum(accuracies) / len(accuracies):.3f}"
    if curves.eval_accuracy:
        line += f"  test {curves.eval_accuracy[-1]:.3f}"
    return line + f"  {(step + 1 - first) / seconds:.1f} steps/s"


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
    Only the answer positions' logits are computed (the loss is zero elsewhere); the gradient
    is `batch_gradient`'s, over micro-batches when train_config.micro_batch_size asks.
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

    def gradient(index: Tensor) -> tuple[float, float]:
        index = index.to(device)
        return batch_gradient(
            model, train_inputs[index], train_targets[index], train_config, teacher
        )

    def test_accuracy() -> float:
        n = train_config.eval_sequences
        return evaluate(model, test_inputs[:n], test_targets[:n], eval_batch)[1]

    eval_batch = min(train_config.eval_batch_size, train_config.micro_batch_size or math.inf)
    identity = json.dumps([asdict(model_config), asdict(task_config)], sort_keys=True)
    curves = fit(model, len(train_inputs), gradient, train_config, test_accuracy, identity)
    test_loss, test_acc, test_distillation_loss = evaluate(
        model,
        test_inputs,
        test_targets,
        eval_batch,
        teacher,
        train_config.distill_temperature,
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


def batch_gradient(
    model: LanguageModel,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    teacher: LanguageModel | None = None,
) -> tuple[float, float]:
    """The objective of one batch (module docstring) with its gradient added to the
    parameters' .grad: x, y (b, L) tokens and targets -> (objective, answer accuracy).

    With config.micro_batch_size < b the batch is split into micro-batches (`micro_batches`)
    and each backward gets its share, so the accumulated .grad is the whole batch's gradient
    (up to float rounding) while only one micro-batch's activations live at a time.
    """
    micro = config.micro_batch_size
    if micro is None or micro >= len(x):
        loss, accuracy = whole_batch_loss(model, x, y, config, teacher)
        loss.backward()
        return loss.item(), accuracy
    return accumulated_gradient(model, x, y, config, teacher)


def whole_batch_loss(
    model: LanguageModel,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    teacher: LanguageModel | None,
) -> tuple[Tensor, float]:
    """The objective of the batch x, y (b, L) in one forward, and its answer accuracy."""
    answer = y != IGNORE
    hidden, mixer_inputs = model.hidden_with_mixer_inputs(x)
    logits = model.head(hidden[answer])  # (answers, V)
    loss = F.cross_entropy(logits, y[answer])
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = answer_logits(teacher, x, answer)
        kl = distillation_loss(logits, teacher_logits, y[answer], config.distill_temperature)
        loss = (1 - config.distill_weight) * loss + config.distill_weight * kl
    if config.reg_lambda > 0:
        loss = loss + config.reg_lambda * transition_penalty(
            model, mixer_inputs, _reg_layers(config)
        )
    return loss, float((logits.detach().argmax(-1) == y[answer]).float().mean())


def _reg_layers(config: TrainConfig) -> list[int] | None:
    return None if config.reg_layers is None else list(config.reg_layers)


def micro_batch_size_within(
    batch_size: int, sequence_bytes: float, budget_bytes: float
) -> int | None:
    """The TrainConfig.micro_batch_size that keeps a step's activations within budget_bytes
    when one sequence takes sequence_bytes (benchmarks/calibration/paper_shapes.csv measures
    it per mixer, L and N): None when the whole batch fits, else the largest size that fits.
    One sequence over the budget is an error naming both numbers."""
    if sequence_bytes <= 0 or budget_bytes <= 0:
        raise ValueError(
            f"sequence_bytes and budget_bytes must be > 0, got {sequence_bytes}, {budget_bytes}"
        )
    fits = int(budget_bytes // sequence_bytes)
    if fits < 1:
        raise ValueError(
            f"one sequence takes {sequence_bytes:.3g} bytes, over the budget of "
            f"{budget_bytes:.3g} bytes: no micro-batch fits"
        )
    return None if fits >= batch_size else fits


def micro_batches(b: int, size: int) -> list[slice]:
    """Consecutive slices of range(b) of `size` rows (the last may be shorter)."""
    return [slice(start, min(start + size, b)) for start in range(0, b, size)]


def accumulated_gradient(
    model: LanguageModel,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    teacher: LanguageModel | None,
) -> tuple[float, float]:
    """`batch_gradient` over micro-batches of config.micro_batch_size sequences.

    The cross-entropy and the KL are means over the batch's n answer positions, so micro-batch
    m contributes (its sum over its answers) / n. The penalty sum_l ||A^l - I|| / sqrt(n_l) is
    not a sum over micro-batches: a first pass without gradients takes each layer's
    S_l = ||A^l - I||^2 over the batch, and since d sqrt(S_l) = dS_l / (2 sqrt(S_l)), micro-batch
    m contributes ||A^l_m - I||^2 / (2 sqrt(S_l n_l)) to the gradient.
    """
    answer = y != IGNORE
    n_answers = int(answer.sum())
    slices = micro_batches(len(x), config.micro_batch_size)
    penalty_scales, penalty = _penalty_scales(model, x, slices, config)
    objective, correct = penalty, 0
    for rows in slices:
        x_m, y_m, answer_m = x[rows], y[rows], answer[rows]
        hidden, mixer_inputs = model.hidden_with_mixer_inputs(x_m)
        logits = model.head(hidden[answer_m])  # (answers in m, V)
        targets = y_m[answer_m]
        loss = F.cross_entropy(logits, targets, reduction="sum") / n_answers
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = answer_logits(teacher, x_m, answer_m)
            kl = distillation_loss(logits, teacher_logits, targets, config.distill_temperature)
            kl = kl * len(targets) / n_answers
            loss = (1 - config.distill_weight) * loss + config.distill_weight * kl
        objective += loss.item()
        transitions = _transitions(model, mixer_inputs, list(penalty_scales))
        for scale, A in zip(penalty_scales.values(), transitions, strict=True):
            loss = loss + scale * (A - 1.0).square().sum()
        loss.backward()
        correct += int((logits.detach().argmax(-1) == targets).sum())
    return objective, correct / n_answers


def _transitions(model: LanguageModel, mixer_inputs: list[Tensor], layers) -> list[Tensor]:
    """A_t of each of `layers` on its mixer input: (b, H, L, N) each."""
    return [model.blocks[layer].mixer.transitions(mixer_inputs[layer]) for layer in layers]


@torch.no_grad()
def _penalty_scales(
    model: LanguageModel, x: Tensor, slices: list[slice], config: TrainConfig
) -> tuple[dict[int, float], float]:
    """For the regularised layers l: {l: lambda / (2 sqrt(S_l n_l))} (`accumulated_gradient`)
    and the penalty's value lambda sum_l sqrt(S_l / n_l); ({}, 0.0) without the regulariser.
    A layer with S_l = 0 (A = I, the penalty's minimum) gets no gradient term."""
    if config.reg_lambda == 0:
        return {}, 0.0
    layers = _reg_layers(config)
    squares: dict[int, float] = {}
    counts: dict[int, int] = {}
    for rows in slices:
        mixer_inputs = model.hidden_with_mixer_inputs(x[rows])[1]
        for layer, A in regularised_transitions(model, mixer_inputs, layers).items():
            squares[layer] = squares.get(layer, 0.0) + float((A.double() - 1.0).square().sum())
            counts[layer] = counts.get(layer, 0) + A.numel()
    value = sum(math.sqrt(squares[layer] / counts[layer]) for layer in squares)
    scales = {
        layer: config.reg_lambda / (2 * math.sqrt(squares[layer] * counts[layer]))
        for layer in squares
        if squares[layer] > 0
    }
    return scales, config.reg_lambda * value


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
