"""Helpers for the trainer tests: real samples made with the real SmolLM2 tokenizer."""

from __future__ import annotations

from distill.core.contract import Sample, ShardWriter

QUESTIONS = [
    "What is {a} plus {b}?",
    "Name a colour and the number {a}.",
    "Write a haiku about the number {b}.",
    "Is {a} larger than {b}? Answer briefly.",
]


def make_samples(tokenizer, n: int, seed: int = 0) -> list[Sample]:
    """n single-turn chat samples of varied lengths: prompt via apply_chat_template,
    completion = the assistant text + <|im_end|>, all completion tokens trained
    except, in every third sample, a few untrained context tokens in the middle."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for i in range(n):
        a, b = seed + i, 2 * (seed + i) + 1
        msgs = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(a=a, b=b)}]
        prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer = f"The answer is {a + b}." + " Because I counted carefully." * (i % 5)
        completion = tokenizer(answer, add_special_tokens=False)["input_ids"] + [end]
        mask = [1] * len(completion)
        if i % 3 == 2 and len(completion) > 6:
            mask[2:4] = [0, 0]
        out.append(
            Sample(
                sample_id=f"q{seed + i}/0",
                prompt_ids=prompt_ids,
                completion_ids=completion,
                completion_mask=mask,
                prompt_id=f"q{seed + i}",
            )
        )
    return out


def write_samples(directory, samples: list[Sample], done: bool = True, per_shard: int = 5) -> None:
    w = ShardWriter(directory, samples_per_shard=per_shard)
    for s in samples:
        w.add(s)
    if done:
        w.close()
    else:
        w.flush()


def micro_batch_grads(model, mbs, normalizer):
    """(summed loss, {parameter name: gradient}) of a LossModel's forward/backward over micro-batches `mbs`."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for mb in mbs:
        loss = model.micro_batch_loss(mb, normalizer)
        loss.backward()
        total += loss.item()
    return total, {n: p.grad.clone() for n, p in model.named_parameters()}
