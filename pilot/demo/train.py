"""Train the embedded demo model: a small LLaVA on the synthetic inspection task, on CPU.

    python -m pilot.demo.train                 # full run (writes pilot/demo/checkpoint/)
    python -m pilot.demo.train --smoke --out /tmp/demo-ckpt   # about a minute, for tests

Stages (end-to-end answer loss alone stays near chance on a CPU budget):
  A. the vision tower alone, with a temporary per-patch head and a defect-mask loss: every
     visual token learns what lies under its own patch, so tokens stay local (which tokens are
     kept then matters);
  B. vision tower frozen (its features computed once per image), projector and language model
     trained on the answer token, several questions per image.
The temporary head is dropped; the saved folder is a standard LLaVA checkpoint (config,
safetensors, tokenizer, processor) that ``from_pretrained`` loads offline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from pilot.data import synthetic
from pilot.models import DEFAULT_PROMPT, DEMO_CHECKPOINT

PATCH = 16  # 224 px / 16 = 14 x 14 = 196 visual tokens; quadrant borders fall on patch borders
GRID = synthetic.IMAGE_SIZE // PATCH
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
TRAIN_SEED = 1000  # image seed of the training set; the demo dataset (seed 0) and evaluation never use it
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word the task's prompts and answers use."""
    pre = pre_tokenizers.Whitespace()
    texts = [DEFAULT_PROMPT.replace("<image>", " "), *synthetic.LABELS]
    for templates in synthetic.QUESTION_TEMPLATES.values():
        for template in templates:
            for quadrant in synthetic.QUADRANTS:
                for kind in synthetic.DEFECT_TYPES:
                    texts.append(template.format(quadrant=quadrant, kind=kind, kinds=synthetic.PLURALS[kind]))
    words = sorted({word for text in texts for word, _ in pre.pre_tokenize_str(text.lower())})
    vocab = {token: index for index, token in enumerate(SPECIAL + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    core.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left", extra_special_tokens={"image_token": "<image>"},
    )


def build_processor(tokenizer) -> LlavaProcessor:
    size = synthetic.IMAGE_SIZE
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                image_mean=CLIP_MEAN.tolist(), image_std=CLIP_STD.tolist())
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="default", image_token="<image>",
                          num_additional_image_tokens=1)


def build_model(tokenizer, layers: int = 12, hidden: int = 128) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(image_size=synthetic.IMAGE_SIZE, patch_size=PATCH, hidden_size=128,
                              intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, projection_dim=128)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default", pad_token_id=tokenizer.pad_token_id)
    return LlavaForConditionalGeneration(config)


def pixels(images: np.ndarray) -> torch.Tensor:
    """What the processor's CLIP normalisation gives for 224 px RGB uint8 images [n, h, w, 3]."""
    scaled = (images.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(scaled).permute(0, 3, 1, 2).contiguous()


def make_pool(n: int, seed: int, log) -> tuple[np.ndarray, np.ndarray, list]:
    images = np.empty((n, synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE, 3), dtype=np.uint8)
    patch_classes = np.empty((n, GRID, GRID), dtype=np.int64)
    defects = []
    start = time.time()
    for i in range(n):
        sample = synthetic.make_sample(seed, i)
        images[i] = np.asarray(sample.image)
        patch_classes[i] = synthetic.patch_labels(sample.mask, PATCH)
        defects.append((sample.defects, sample.question, sample.label))
        if (i + 1) % 1000 == 0:
            log(f"  images {i + 1}/{n} ({time.time() - start:.0f}s)")
    return images, patch_classes, defects


def cosine_lr(step: int, total: int, peak: float, warmup: int = 30) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))))


def train_vision(model, images, patch_classes, seconds, batch, log, max_steps=None) -> None:
    """Stage A: per-patch targets from the vision tower's last layer: the defect class under the
    patch (tokens stay local) and the patch's row and column (tokens say where they are, as real
    vision towers' features do; the language model's 1-D positions alone hide the 2-D grid)."""
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    head = nn.Linear(width, len(synthetic.DEFECT_TYPES) + 1)
    row_head, column_head = nn.Linear(width, GRID), nn.Linear(width, GRID)
    rows = torch.arange(GRID).repeat_interleave(GRID)  # patch order is row-major
    columns = torch.arange(GRID).repeat(GRID)
    params = [*tower.parameters(), *head.parameters(), *row_head.parameters(), *column_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    weights = torch.tensor([0.05, 1.0, 1.0, 1.0])  # defects cover ~2% of patches
    rng = np.random.default_rng(0)
    tower.train()
    start, step = time.time(), 0
    estimated_total = max_steps or 10**6
    while time.time() - start < seconds and (max_steps is None or step < max_steps):
        if step == 10 and max_steps is None:  # set the schedule from the measured step time
            estimated_total = int(seconds / ((time.time() - start) / 10))
        index = rng.integers(0, len(images), batch)
        features = tower(pixel_values=pixels(images[index])).last_hidden_state[:, 1:]
        logits = head(features)
        target = torch.from_numpy(patch_classes[index]).view(len(index), -1)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), weight=weights)
        loss = loss + 0.5 * (nn.functional.cross_entropy(row_head(features).flatten(0, 1), rows.repeat(len(index)))
                             + nn.functional.cross_entropy(column_head(features).flatten(0, 1),
                                                           columns.repeat(len(index))))
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, estimated_total, 1e-3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            with torch.no_grad():
                predicted = logits.argmax(-1)
                defect = target > 0
                recall = (predicted[defect] == target[defect]).float().mean().item() if defect.any() else float("nan")
                false_alarm = (predicted[~defect] > 0).float().mean().item()
            log(f"  A step {step} loss {loss.item():.3f} defect-patch recall {recall:.2f} "
                f"false alarms {false_alarm:.3f} ({time.time() - start:.0f}s)")
        step += 1
    tower.eval()


@torch.no_grad()
def vision_features(model, images, batch=64) -> torch.Tensor:
    """Projector inputs of every image, computed once (the tower is frozen in stage B)."""
    tower = model.model.vision_tower
    out = []
    for i in range(0, len(images), batch):
        out.append(tower(pixel_values=pixels(images[i : i + batch])).last_hidden_state[:, 1:].to(torch.bfloat16))
    return torch.cat(out)


def encode(tokenizer, question: str, answer: str | None) -> list[int]:
    """The token ids the processor would give for this prompt, plus the answer and </s>."""
    prompt = DEFAULT_PROMPT.format(question=question).replace("<image>", "<image>" * GRID * GRID)
    ids = tokenizer(prompt)["input_ids"]
    if answer is not None:
        ids = ids + [tokenizer.convert_tokens_to_ids(answer), tokenizer.eos_token_id]
    return ids


def train_language(model, tokenizer, features, defects, seconds, batch, log, max_steps=None, peak_lr=2e-3,
                   seed=1) -> None:
    """Stage B: projector + language model on the answer, vision tower frozen."""
    language = model.model.language_model
    projector = model.model.multi_modal_projector
    params = list(projector.parameters()) + list(language.parameters()) + list(model.lm_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.01, betas=(0.9, 0.98))
    image_token = model.config.image_token_id
    rng = np.random.default_rng(seed)
    language.train()
    projector.train()
    start, step = time.time(), 0
    estimated_total = max_steps or 10**6
    while time.time() - start < seconds and (max_steps is None or step < max_steps):
        if step == 10 and max_steps is None:
            estimated_total = int(seconds / ((time.time() - start) / 10))
        index = rng.integers(0, len(features), batch)
        rows = []
        for i in index:
            layout, planned_question, planned_label = defects[i]
            # Half the time the image's own question, whose answers are balanced (as in evaluation);
            # half the time another question about the same image (answers follow its layout).
            if rng.random() < 0.5:
                question, label = planned_question, planned_label
            else:
                question, label, _ = synthetic.ask(layout, rng)
            rows.append(encode(tokenizer, question, label))
        length = max(len(r) for r in rows)
        ids = torch.full((batch, length), tokenizer.pad_token_id)
        mask = torch.zeros(batch, length, dtype=torch.long)
        for r, row in enumerate(rows):  # right padding: training only, positions start at 0 anyway
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        embeds = language.embed_tokens(ids)
        visual = projector(features[torch.from_numpy(index)].float())
        embeds = embeds.masked_scatter((ids == image_token)[..., None], visual.reshape(-1, visual.shape[-1]))
        hidden = language(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        lengths = mask.sum(1)
        # Predict the answer (at the prompt's last position) and </s> (at the answer's).
        rows_index = torch.arange(batch)
        answer_logits = model.lm_head(hidden[rows_index, lengths - 3])
        eos_logits = model.lm_head(hidden[rows_index, lengths - 2])
        answer_target = ids[rows_index, lengths - 2]
        loss = nn.functional.cross_entropy(answer_logits, answer_target) + 0.1 * nn.functional.cross_entropy(
            eos_logits, ids[rows_index, lengths - 1])
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, estimated_total, peak_lr)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 25 == 0:
            accuracy = (answer_logits.argmax(-1) == answer_target).float().mean().item()
            log(f"  B step {step} loss {loss.item():.3f} batch accuracy {accuracy:.2f} ({time.time() - start:.0f}s)")
        step += 1
    language.eval()
    projector.eval()


@torch.no_grad()
def evaluate(model, processor, seed: int, n: int, batch: int = 16) -> dict:
    """Macro-F1 of greedy answers on freshly generated samples of ``seed``."""
    from sklearn.metrics import f1_score  # noqa: PLC0415  (only the evaluation needs it)

    predictions, labels = [], []
    for start in range(0, n, batch):
        samples = [synthetic.make_sample(seed, i) for i in range(start, min(n, start + batch))]
        prompts = [DEFAULT_PROMPT.format(question=s.question) for s in samples]
        inputs = processor(images=[s.image for s in samples], text=prompts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        texts = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        predictions += [t.strip() for t in texts]
        labels += [s.label for s in samples]
    return {
        "n": n, "seed": seed,
        "accuracy": float(np.mean([p == t for p, t in zip(predictions, labels, strict=True)])),
        "f1_macro": float(f1_score(labels, predictions, labels=list(synthetic.LABELS), average="macro",
                                   zero_division=0)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--images", type=int, default=6000, help="training images (several questions each)")
    parser.add_argument("--minutes-vision", type=float, default=10.0)
    parser.add_argument("--minutes-language", type=float, default=45.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval", type=int, default=300, help="held-out samples to evaluate on (seed 2)")
    parser.add_argument("--smoke", action="store_true", help="a one-minute run that exercises every step")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--init", type=Path, help="continue from a checkpoint this script saved: its vision tower "
                                                  "is kept (stage A skipped) and stage B goes on from its weights")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.minutes_vision, args.minutes_language, args.batch, args.eval = 64, 0.1, 0.2, 8, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer)
    earlier_minutes = 0.0
    if args.init:
        model = LlavaForConditionalGeneration.from_pretrained(args.init, local_files_only=True)
        earlier_minutes = json.loads((args.init / "training_report.json").read_text())["training_minutes"]
        args.minutes_vision = 0.0
        log(f"continuing from {args.init} ({earlier_minutes} min of training so far)")
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {GRID * GRID} visual tokens")
    images, patch_classes, defects = make_pool(args.images, TRAIN_SEED, log)
    if args.minutes_vision > 0:
        log(f"stage A: vision tower, {args.minutes_vision} min")
        train_vision(model, images, patch_classes, args.minutes_vision * 60, args.batch, log,
                     max_steps=3 if args.smoke else None)
    features = vision_features(model, images)
    del images
    log(f"stage B: projector + language model, {args.minutes_language} min")
    train_language(model, tokenizer, features, defects, args.minutes_language * 60, args.batch, log,
                   max_steps=3 if args.smoke else None, peak_lr=1e-3 if args.init else 2e-3,
                   seed=2 if args.init else 1)  # a continuation draws new questions
    training_minutes = earlier_minutes + (time.time() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    log(f"saved to {args.out}; evaluating on {args.eval} held-out samples")
    reloaded = LlavaForConditionalGeneration.from_pretrained(args.out, local_files_only=True).eval()
    report = {
        "training_minutes": round(training_minutes, 1), "threads": torch.get_num_threads(),
        "train_seed": TRAIN_SEED, "train_images": args.images, "smoke": args.smoke,
        "continued_from": str(args.init) if args.init else None,
        "heldout": evaluate(reloaded, processor, seed=2, n=args.eval),
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
