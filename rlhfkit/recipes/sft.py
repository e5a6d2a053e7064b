"""Supervised fine-tuning: maximise log π(completion | prompt), prompt tokens masked.

Loss of one optimizer step = (sum of completion-token NLLs over the global batch) / (number of
completion tokens in the global batch). Normalising by the *global* token count (known before
the step because the batch plan is fixed) makes the loss, and so the update, identical for any
split into micro-batches and processes: 1×8 equals 8×1 equals 2 processes × 4.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlhfkit.config import TrainConfig, group, option
from rlhfkit.data.collate import pack_examples, pad_right
from rlhfkit.data.datasets import load_sft
from rlhfkit.data.tokenize import Encoded
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import (
    LoraSettings,
    check_context,
    compile_blocks,
    load_causal_lm,
    load_tokenizer,
)
from rlhfkit.models.logprobs import TokenLogprobs
from rlhfkit.training.batches import BatchPlan, eval_shards
from rlhfkit.training.checkpoint import (
    save_checkpoint,
    save_model,
)
from rlhfkit.training.run import Run, check_finite
from rlhfkit.training.setup import checked_plan, prepare_optimization, resume_or_start
from rlhfkit.training.steps import global_sum, optimizer_step, sync_context


@dataclass
class SFTOptions:
    packing: bool = option(False, "pack several examples per row (block-diagonal attention)")
    completion_only_loss: bool = option(True, "train on completion tokens only (prompt masked)")


@dataclass
class SFTConfig(TrainConfig):
    output_dir: str = option("runs/sft", "where config.yaml, metrics, the model and checkpoints go")
    learning_rate: float = option(2e-5, "peak learning rate (AdamW)")
    sft: SFTOptions = group(SFTOptions, "SFT options")


def lora_settings(config: TrainConfig, *, allow_dropout: bool = False) -> LoraSettings:
    """The `lora.*` keys as the model builders take them.

    Dropout is off in every model of every stage but SFT, where `lora.dropout` is the usual
    regulariser of the adapters: PPO's probability ratios, DPO's log-ratios against the reference
    and the reward model's comparisons assume the forward pass the log-probs were recorded with
    (a dropout mask drawn per pass made PPO's ratio 0.9994 before any update). Elsewhere a
    non-zero `lora.dropout` is refused rather than ignored.
    """
    lora = config.lora
    if lora.dropout > 0 and lora.r > 0 and not allow_dropout:
        raise ConfigError(
            f"lora.dropout: {lora.dropout} is for sft only; this stage needs a deterministic "
            "forward pass (probability ratios and log-ratios against a reference), so dropout "
            "is off in every model: set lora.dropout=0"
        )
    return LoraSettings(lora.r, lora.alpha, lora.dropout, list(lora.target_modules))


def _rows(examples: list[Encoded], config: SFTConfig) -> list[dict[str, list[int]]]:
    """Model rows: one per example, or packed rows of at most max_length tokens."""
    if config.sft.packing:
        return pack_examples(
            [e.prompt_ids for e in examples],
            [e.completion_ids for e in examples],
            config.max_length,
            completion_only=config.sft.completion_only_loss,
        )
    rows = []
    for e in examples:
        ids = e.prompt_ids + e.completion_ids
        if config.sft.completion_only_loss:
            mask = [0] * len(e.prompt_ids) + [1] * len(e.completion_ids)
        else:
            mask = [0] + [1] * (len(ids) - 1)
        rows.append({"input_ids": ids, "completion_mask": mask})
    return rows


def _batch(rows: list[dict], indices: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
    chosen = [rows[i] for i in indices]
    batch = {
        "input_ids": pad_right([r["input_ids"] for r in chosen], pad_id),
        "target_mask": pad_right([r["completion_mask"] for r in chosen], 0),
    }
    if "position_ids" in chosen[0]:
        # Packed rows: positions restart per example; padding continues as its own "example".
        length = batch["input_ids"].shape[1]
        batch["position_ids"] = torch.stack(
            [
                torch.tensor(r["position_ids"] + list(range(length - len(r["position_ids"]))))
                for r in chosen
            ]
        )
    else:
        batch["attention_mask"] = pad_right([[1] * len(r["input_ids"]) for r in chosen], 0)
    return {k: v.to(device) for k, v in batch.items()}


def _targets(rows: list[dict], indices: list[int]) -> int:
    """Number of trained tokens (position 0 never has a prediction)."""
    return sum(sum(rows[i]["completion_mask"][1:]) for i in indices)


def evaluate(run: Run, model, rows: list[dict], config: SFTConfig, pad_id: int) -> float:
    """Mean completion-token NLL over `rows` (every process takes a shard)."""
    acc = run.accelerator
    model.eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for indices, counted in eval_shards(
            len(rows), config.eval_batch_size, acc.num_processes, acc.process_index
        ):
            batch = _batch(rows, indices, pad_id, acc.device)
            logps = model(**batch)["logprobs"]
            if counted:  # a filler batch only keeps the processes' forwards in step
                nll -= float(logps.sum())
                tokens += _targets(rows, indices)
    model.train()
    return global_sum(acc, nll) / max(global_sum(acc, tokens), 1)


def train(config: SFTConfig) -> dict:
    run = Run(config, "sft")
    acc = run.accelerator
    tokenizer = load_tokenizer(config.model)
    if not config.train_data:
        raise ConfigError("train_data: no training data given")
    examples, stats = load_sft(
        config.train_data,
        tokenizer,
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length,
    )
    run.print(f"[bold]train data[/] {config.train_data}: {stats.summary()}")
    rows = _rows(examples, config)
    eval_rows = []
    if config.eval_data:
        eval_examples, eval_stats = load_sft(
            config.eval_data,
            tokenizer,
            max_length=config.max_length,
            max_prompt_length=config.max_prompt_length,
        )
        run.print(f"[bold]eval data[/] {config.eval_data}: {eval_stats.summary()}")
        eval_rows = _rows(eval_examples, config)

    check_context(config.model, config.max_length, "max_length")
    lm = load_causal_lm(
        config.model,
        dtype=config.dtype,
        gradient_checkpointing=config.gradient_checkpointing,
        lora=lora_settings(config, allow_dropout=True),
        attn_implementation=config.attn_implementation or None,
    )
    if config.compile:
        compile_blocks(lm)
    model = TokenLogprobs(lm)
    plan = BatchPlan(
        len(rows),
        config.batch_size,
        config.grad_accum,
        acc.num_processes,
        config.seed,
        config.max_steps,
        config.epochs,
    )
    checked_plan(run, plan, "examples")
    model, optimizer, scheduler = prepare_optimization(run, model, config, plan.total_steps)

    totals = {"loss_sum": 0.0, "loss_steps": 0}
    start_step, totals = resume_or_start(run, config, totals)

    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    with run.progress(plan.total_steps, start_step, "sft"):
        for step in range(start_step, plan.total_steps):
            micro_batches = plan.micro_batches(step, acc.process_index)
            step_tokens = _targets(rows, plan.global_indices(step))
            # all processes' tokens (no padding): every process knows the whole global batch
            window_tokens += sum(len(rows[i]["input_ids"]) for i in plan.global_indices(step))
            local_nll = 0.0
            for micro, indices in enumerate(micro_batches):
                batch = _batch(rows, indices, tokenizer.pad_token_id, acc.device)
                with sync_context(acc, model, micro, len(micro_batches)):
                    logps = model(**batch)["logprobs"]  # (B, T), 0 off-target
                    nll = -logps.sum()
                    # DDP averages gradients over processes, hence the factor num_processes.
                    acc.backward(nll * acc.num_processes / step_tokens)
                local_nll += float(nll.detach())
            loss = global_sum(acc, local_nll) / step_tokens
            check_finite(loss, step + 1, run)
            grad_norm, lr = optimizer_step(acc, model, optimizer, scheduler, config.max_grad_norm)
            totals["loss_sum"] += loss
            totals["loss_steps"] += 1
            done = step + 1
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            run.advance(f"loss {loss:.4f}  {tokens_per_s:,.0f} tok/s")
            if done % config.logging_steps == 0 or done == plan.total_steps:
                run.log(
                    done,
                    {
                        "loss": loss,
                        "grad_norm": grad_norm,
                        "lr": lr,
                        "epoch": done / plan.steps_per_epoch,  # epochs completed
                        "tokens_per_s": tokens_per_s,
                    },
                )
                window_tokens, window_start = 0, time.perf_counter()
            if (
                eval_rows
                and config.eval_steps
                and done % config.eval_steps == 0
                and done < plan.total_steps
            ):
                run.log(
                    done,
                    {"eval_loss": evaluate(run, model, eval_rows, config, tokenizer.pad_token_id)},
                )
            if (config.save_steps and done % config.save_steps == 0) or done == plan.total_steps:
                save_checkpoint(
                    acc, run.checkpoints, done, {"totals": totals},
                    keep=config.save_total_limit, data=run.data_record,
                )  # fmt: skip

    summary = {
        "train_loss": totals["loss_sum"] / max(totals["loss_steps"], 1),
        "steps": plan.total_steps,
    }
    if eval_rows:
        summary["eval_loss"] = evaluate(run, model, eval_rows, config, tokenizer.pad_token_id)
        run.log(plan.total_steps, {"eval_loss": summary["eval_loss"]})
    summary["data"] = stats.as_dict()
    summary["num_processes"] = acc.num_processes
    export_policy(run, model, tokenizer)
    run.summary(summary)
    run.print(
        f"[green]sft done[/]: train_loss {summary['train_loss']:.4f}"
        + (f", eval_loss {summary['eval_loss']:.4f}" if eval_rows else "")
        + f" → {run.out / 'model'}"
    )
    return summary


def export_policy(run: Run, model, tokenizer) -> None:
    """Write OUT/model: LoRA adapters are merged so the export loads as a plain causal LM."""
    acc = run.accelerator
    lm = acc.unwrap_model(model).lm
    if hasattr(lm, "merge_and_unload"):
        lm = lm.merge_and_unload()
        if acc.is_main_process:
            from rlhfkit.atomic_dirs import replace_dir_atomically

            tmp = run.out / ".tmp-model"
            lm.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            replace_dir_atomically(tmp, run.out / "model")
        acc.wait_for_everyone()
        return
    save_model(acc, lm, tokenizer, run.out / "model")
