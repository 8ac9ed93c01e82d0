"""Train the embedded demo model: a small LLaVA on the synthetic inspection task, on CPU.

    python -m pilot.demo.train                 # full run (writes pilot/demo/checkpoint/)
    python -m pilot.demo.train --smoke --out /tmp/demo-ckpt   # about a minute, for tests

Stages (end-to-end answer loss alone stays near chance on a CPU budget):
  A. the vision tower alone, with temporary per-patch heads: the defect class under the patch,
     whether a defect is centred in it, its row and column, and its quarter. Every visual token
     learns what lies under its own patch, so tokens stay local (which tokens are kept then
     matters), and says which quarter it is in;
  B. vision tower frozen (its features computed once per image), projector and language model
     trained on answers: per image its own question, a caption naming each quarter's defect and
     more questions, packed into one row that runs the visual tokens once (``pack_questions``).
     Without the caption the language model sat at chance on quarter questions for the first
     10 minutes; with it, held-out accuracy passed 0.6 in 7. Its quarters come in a random
     order, so the lookup is keyed by the quarter's name, as questions need it. Half of the extra
     questions ask a quarter's defect type. Before the quarter head and that share, type
     questions lagged (0.77 after 77 min of training, half wrong on three-defect images);
     with them they reached 0.97 on held-out images after 35 min of stage B.
The temporary heads are dropped; the saved folder is a standard LLaVA checkpoint (config,
safetensors, tokenizer, processor) that ``from_pretrained`` loads offline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
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
MONITOR_SEED = 3  # progress during training; the reported evaluation uses seed 2
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def word_level_core(special: list[str], extra_texts: list[str]) -> Tokenizer:
    """A word-level tokenizer over every word of the task's prompts and answers and ``extra_texts``,
    lowercased, with ``special`` first (ids 0, 1, ...). Also builds the tests' tiny checkpoint folders."""
    # Words, hyphenated words ("top-left") as one token, and runs of punctuation.
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                   pre_tokenizers.Split(Regex(r"\w+(?:-\w+)*|[^\w\s]+"), behavior="isolated")])
    texts = [*extra_texts, *synthetic.LABELS, synthetic.CAPTION_QUESTION, *synthetic.QUADRANTS]
    for templates in synthetic.QUESTION_TEMPLATES.values():
        for template in templates:
            for quadrant in synthetic.QUADRANTS:
                for kind in synthetic.DEFECT_TYPES:
                    texts.append(template.format(quadrant=quadrant, kind=kind, kinds=synthetic.PLURALS[kind]))
    words = sorted({word for text in texts for word, _ in pre.pre_tokenize_str(text.lower())})
    vocab = {token: index for index, token in enumerate(special + [w for w in words if w not in special])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre
    core.add_special_tokens(special)
    return core


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word the task's prompts and answers use."""
    core = word_level_core(SPECIAL, [DEFAULT_PROMPT.replace("<image>", " ")])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", SPECIAL.index("<s>"))])
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


@dataclass
class Pool:
    """Training images with their per-patch targets and what questions about them need."""

    images: np.ndarray  # uint8 [n, 224, 224, 3]
    patch_classes: np.ndarray  # int64 [n, GRID, GRID]: defect class under each patch (0 none)
    center_classes: np.ndarray  # int64 [n, GRID, GRID]: class of the defect centred in the patch (0 none)
    defects: list  # (defects, planned question, label) per image
    families: list[str]  # the planned question's family per image


def make_pool(n: int, seed: int, log) -> Pool:
    images = np.empty((n, synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE, 3), dtype=np.uint8)
    patch_classes = np.empty((n, GRID, GRID), dtype=np.int64)
    center_classes = np.zeros((n, GRID, GRID), dtype=np.int64)
    defects, families = [], []
    start = time.time()
    for i in range(n):
        sample = synthetic.make_sample(seed, i)
        images[i] = np.asarray(sample.image)
        patch_classes[i] = synthetic.patch_labels(sample.mask, PATCH)
        for defect in sample.defects:
            x, y = defect.center
            center_classes[i, y // PATCH, x // PATCH] = synthetic.MASK_CLASS[defect.kind]
        defects.append((sample.defects, sample.question, sample.label))
        families.append(sample.family)
        if (i + 1) % 2000 == 0:
            log(f"  images {i + 1}/{n} ({time.time() - start:.0f}s)")
    return Pool(images, patch_classes, center_classes, defects, families)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 30) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))))


def train_vision(model, pool: Pool, seconds, batch, log, max_steps=None) -> None:
    """Stage A: per-patch targets from the vision tower's last layer: the defect class under the
    patch (tokens stay local), whether a defect is centred in the patch (one token per defect, so
    defects can be counted), the patch's row and column (tokens say where they are, as real
    vision towers' features do; the language model's 1-D positions alone hide the 2-D grid) and
    its quarter (the unit every location question names, so a question can find its quarter's
    tokens by content instead of composing row and column)."""
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    classes = len(synthetic.DEFECT_TYPES) + 1
    head, center_head = nn.Linear(width, classes), nn.Linear(width, classes)
    row_head, column_head = nn.Linear(width, GRID), nn.Linear(width, GRID)
    quarter_head = nn.Linear(width, 4)
    rows = torch.arange(GRID).repeat_interleave(GRID)  # patch order is row-major
    columns = torch.arange(GRID).repeat(GRID)
    quarters = (rows >= GRID // 2).long() * 2 + (columns >= GRID // 2).long()
    heads = (head, center_head, row_head, column_head, quarter_head)
    params = [*tower.parameters(), *(p for h in heads for p in h.parameters())]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    weights = torch.tensor([0.05, 1.0, 1.0, 1.0])  # defects cover ~2% of patches
    center_weights = torch.tensor([0.02, 1.0, 1.0, 1.0])  # at most 3 centres among 196 patches
    images, patch_classes = pool.images, pool.patch_classes
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
        centers = torch.from_numpy(pool.center_classes[index]).view(-1)
        loss = loss + nn.functional.cross_entropy(center_head(features).flatten(0, 1), centers, weight=center_weights)
        loss = loss + 0.5 * (nn.functional.cross_entropy(row_head(features).flatten(0, 1), rows.repeat(len(index)))
                             + nn.functional.cross_entropy(column_head(features).flatten(0, 1),
                                                           columns.repeat(len(index)))
                             + nn.functional.cross_entropy(quarter_head(features).flatten(0, 1),
                                                           quarters.repeat(len(index))))
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


EOS_WEIGHT = 0.1  # the loss weight of </s> after an answer, against 1 for the answer's words


@dataclass
class PackedQuestions:
    """Several questions about each image in one row, each seeing the image but not the others.

    Row b holds the shared prefix (``<s> USER: <image>...``) once, then its question segments
    (question, ``ASSISTANT:``, answer words, ``</s>``). The mask lets a segment attend to the
    prefix and causally to itself only, and its positions continue from the prefix as if it were
    alone, so every answer is predicted exactly as in a one-question forward pass, while the 196
    visual tokens are computed once for all the questions.
    """

    input_ids: torch.Tensor  # [batch, length]
    position_ids: torch.Tensor  # [batch, length]
    attention_mask: torch.Tensor  # bool [batch, 1, length, length], True = may attend
    target_rows: torch.Tensor  # [targets] row of each answer token
    target_at: torch.Tensor  # [targets] position whose output predicts it
    target_ids: torch.Tensor  # [targets]
    target_weights: torch.Tensor  # [targets] 1 for answer words, EOS_WEIGHT for </s>


def split_prompt(tokenizer, image_token_id: int, question: str) -> tuple[list[int], list[int]]:
    """The processor's ids for this question's prompt, cut after the last image token."""
    prompt = DEFAULT_PROMPT.format(question=question).replace("<image>", "<image>" * GRID * GRID)
    ids = tokenizer(prompt)["input_ids"]
    cut = len(ids) - ids[::-1].index(image_token_id)
    return ids[:cut], ids[cut:]


def pack_questions(prefix: list[int], segments: list[list[tuple[list[int], list[int]]]], pad_id: int,
                   eos_id: int) -> PackedQuestions:
    """``segments[b]``: (prompt ids, answer ids ending with </s>) of each question about image b."""
    batch, start = len(segments), len(prefix)
    length = max(start + sum(len(q) + len(a) for q, a in row) for row in segments)
    input_ids = torch.full((batch, length), pad_id)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    mask = torch.zeros((batch, 1, length, length), dtype=torch.bool)
    input_ids[:, :start] = torch.tensor(prefix)
    position_ids[:, :start] = torch.arange(start)
    mask[:, 0, :start, :start] = torch.ones(start, start, dtype=torch.bool).tril()
    rows, target_at, targets = [], [], []
    for b, row in enumerate(segments):
        at = start
        for prompt, answer in row:
            segment = prompt + answer
            n = len(segment)
            input_ids[b, at : at + n] = torch.tensor(segment)
            position_ids[b, at : at + n] = torch.arange(start, start + n)
            mask[b, 0, at : at + n, :start] = True
            mask[b, 0, at : at + n, at : at + n] = torch.ones(n, n, dtype=torch.bool).tril()
            first = at + len(prompt)  # the answer's first token, predicted one position earlier
            rows += [b] * len(answer)
            target_at += range(first - 1, first - 1 + len(answer))
            targets += answer
            at += n
        mask[b, 0, at:, 0] = True  # padding attends to <s> only: a row with nothing to attend to gives NaN
    target_ids = torch.tensor(targets)
    weights = torch.where(target_ids == eos_id, EOS_WEIGHT, 1.0)
    return PackedQuestions(input_ids, position_ids, mask, torch.tensor(rows), torch.tensor(target_at), target_ids,
                           weights)


def language_hidden(language, embeds: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The language model's final hidden states under an explicit 4-D mask and positions."""
    position_embeddings = language.rotary_emb(embeds, position_ids=position_ids)
    hidden = embeds
    for layer in language.layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings)
    return language.norm(hidden)


def packed_logits(model, packed: PackedQuestions, features: torch.Tensor) -> torch.Tensor:
    """Logits [targets, vocab] where each packed answer token is predicted; ``features``: tower
    outputs per row."""
    language = model.model.language_model
    embeds = language.embed_tokens(packed.input_ids)
    visual = model.model.multi_modal_projector(features.float())
    is_image = (packed.input_ids == model.config.image_token_id)[..., None]
    embeds = embeds.masked_scatter(is_image, visual.reshape(-1, visual.shape[-1]))
    hidden = language_hidden(language, embeds, packed.position_ids, packed.attention_mask)
    return model.lm_head(hidden[packed.target_rows, packed.target_at])


def question_segment(tokenizer, image_token_id: int, cache: dict, question: str,
                     answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids after the image, answer ids and </s>) for one question; prompts are cached."""
    if question not in cache:
        cache[question] = split_prompt(tokenizer, image_token_id, question)[1]
    return cache[question], tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@torch.no_grad()
def monitor(model, tokenizer, features, questions, families) -> dict[str, float]:
    """Accuracy of the first answer token on held-out images, per question family (no generate:
    a packed one-question forward gives the same logits, and this runs every few minutes)."""
    image_token = model.config.image_token_id
    cache: dict = {}
    prefix = split_prompt(tokenizer, image_token, questions[0][0])[0]
    correct = []
    for start in range(0, len(features), 64):
        chunk = questions[start : start + 64]
        segments = [[question_segment(tokenizer, image_token, cache, q, a)] for q, a in chunk]
        packed = pack_questions(prefix, segments, tokenizer.pad_token_id, tokenizer.eos_token_id)
        answers = packed.target_weights == 1.0  # one-word answers: one per question
        logits = packed_logits(model, packed, features[start : start + 64])[answers]
        correct += (logits.argmax(-1) == packed.target_ids[answers]).tolist()
    result = {"all": float(np.mean(correct))}
    for family in synthetic.FAMILIES:
        picked = [c for c, f in zip(correct, families, strict=True) if f == family]
        result[family] = float(np.mean(picked)) if picked else float("nan")
    return result


def train_language(model, tokenizer, features, defects, seconds, batch, log, max_steps=None, peak_lr=2e-3,
                   seed=1, questions_per_image=8, captions=True, held_out=None, monitor_every_s=300.0,
                   extra_type_share=0.5) -> None:
    """Stage B: projector + language model on the answers, vision tower frozen.

    Each image gets its own question, as evaluation asks, a caption that names every quarter's
    defect right after the quarter's name (the plainest form of "look up this quarter", which the
    questions then reuse) and other questions about the same image, all packed into one row
    (``pack_questions``): the visual tokens are run once for all of them, which gives several
    times more answers per second of CPU. ``extra_type_share`` of the other questions ask "which
    defect is in quarter X": binding a quarter to its defect when there are several is the
    slowest skill to learn (with families drawn uniformly it lagged count and presence by 18
    points, and on three-defect images it got half of them wrong).
    """
    language = model.model.language_model
    projector = model.model.multi_modal_projector
    params = list(projector.parameters()) + list(language.parameters()) + list(model.lm_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.01, betas=(0.9, 0.98))
    image_token = model.config.image_token_id
    cache: dict = {}
    prefix = split_prompt(tokenizer, image_token, defects[0][1])[0]
    other_families = [family for family in synthetic.FAMILIES if family != "type"]
    rng = np.random.default_rng(seed)
    language.train()
    projector.train()
    start, step, last_monitor = time.time(), 0, time.time()
    estimated_total = max_steps or 10**6
    while time.time() - start < seconds and (max_steps is None or step < max_steps):
        if step == 10 and max_steps is None:  # set the schedule from the measured step time
            estimated_total = int(seconds / ((time.time() - start) / 10))
        index = rng.integers(0, len(features), batch)
        segments = []
        for i in index:
            layout, planned_question, planned_label = defects[i]
            asked = [(planned_question, planned_label)]
            if captions:
                asked.append((synthetic.CAPTION_QUESTION, synthetic.caption(layout, rng)))
            for _ in range(questions_per_image - len(asked)):
                if rng.random() < extra_type_share:
                    family = "type"
                else:
                    family = other_families[int(rng.integers(len(other_families)))]
                asked.append(synthetic.ask(layout, rng, family)[:2])
            segments.append([question_segment(tokenizer, image_token, cache, q, a) for q, a in asked])
        packed = pack_questions(prefix, segments, tokenizer.pad_token_id, tokenizer.eos_token_id)
        logits = packed_logits(model, packed, features[torch.from_numpy(index)])
        losses = nn.functional.cross_entropy(logits, packed.target_ids, reduction="none")
        loss = (losses * packed.target_weights).sum() / packed.target_weights.sum()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, estimated_total, peak_lr)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 25 == 0:
            words = packed.target_weights == 1.0
            accuracy = (logits[words].argmax(-1) == packed.target_ids[words]).float().mean().item()
            log(f"  B step {step} loss {loss.item():.3f} batch accuracy {accuracy:.2f} ({time.time() - start:.0f}s)")
        if held_out is not None and time.time() - last_monitor > monitor_every_s:
            language.eval()
            scores = monitor(model, tokenizer, *held_out)
            language.train()
            log("  held-out first-token accuracy " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
            last_monitor = time.time()
        step += 1
    language.eval()
    projector.eval()


@torch.no_grad()
def evaluate(model, processor, seed: int, n: int, batch: int = 16) -> dict:
    """Macro-F1 of greedy answers on freshly generated samples of ``seed``."""
    from sklearn.metrics import f1_score  # noqa: PLC0415  (only the evaluation needs it)

    predictions, labels, families = [], [], []
    for start in range(0, n, batch):
        samples = [synthetic.make_sample(seed, i) for i in range(start, min(n, start + batch))]
        prompts = [DEFAULT_PROMPT.format(question=s.question) for s in samples]
        inputs = processor(images=[s.image for s in samples], text=prompts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        texts = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        predictions += [t.strip() for t in texts]
        labels += [s.label for s in samples]
        families += [s.family for s in samples]
    correct = np.array([p == t for p, t in zip(predictions, labels, strict=True)])
    return {
        "n": n, "seed": seed,
        "accuracy": float(correct.mean()),
        "accuracy_by_family": {f: float(correct[np.array(families) == f].mean()) for f in sorted(set(families))},
        "f1_macro": float(f1_score(labels, predictions, labels=list(synthetic.LABELS), average="macro",
                                   zero_division=0)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--images", type=int, default=12000, help="training images (several questions each)")
    parser.add_argument("--minutes-vision", type=float, default=8.0)
    parser.add_argument("--minutes-language", type=float, default=77.0)
    parser.add_argument("--batch", type=int, default=32, help="images per step of stage A")
    parser.add_argument("--batch-language", type=int, default=16, help="images per step of stage B")
    parser.add_argument("--eval", type=int, default=300, help="held-out samples to evaluate on (seed 2)")
    parser.add_argument("--questions-per-image", type=int, default=8, help="questions packed with each image")
    parser.add_argument("--extra-type-share", type=float, default=0.5,
                        help="share of the extra questions per image that ask a quarter's defect type")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of stage B")
    parser.add_argument("--monitor", type=int, default=256, help="held-out images (seed 3) to follow progress on")
    parser.add_argument("--monitor-minutes", type=float, default=5.0, help="how often to report on them")
    parser.add_argument("--smoke", action="store_true", help="a one-minute run that exercises every step")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--init", type=Path, help="continue from a checkpoint this script saved: its vision tower "
                                                  "is kept (stage A skipped) and stage B goes on from its weights")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.minutes_vision, args.minutes_language, args.batch, args.eval = 64, 0.1, 0.2, 8, 16
        args.batch_language, args.monitor, args.monitor_minutes = 4, 16, 0.0
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
    pool = make_pool(args.images, TRAIN_SEED, log)
    if args.minutes_vision > 0:
        log(f"stage A: vision tower, {args.minutes_vision} min")
        train_vision(model, pool, args.minutes_vision * 60, args.batch, log, max_steps=3 if args.smoke else None)
    features = vision_features(model, pool.images)
    # Progress on images never trained on (seed 3; the reported evaluation uses seed 2).
    monitored = make_pool(args.monitor, MONITOR_SEED, log)
    held_out = (vision_features(model, monitored.images), [d[1:] for d in monitored.defects], monitored.families)
    del pool.images, monitored
    log(f"stage B: projector + language model, {args.minutes_language} min, "
        f"{args.questions_per_image} questions per image")
    train_language(model, tokenizer, features, pool.defects, args.minutes_language * 60, args.batch_language, log,
                   max_steps=3 if args.smoke else None, peak_lr=args.lr, seed=2 if args.init else 1,
                   questions_per_image=args.questions_per_image, held_out=held_out,
                   extra_type_share=args.extra_type_share,
                   monitor_every_s=args.monitor_minutes * 60)  # a continuation draws new questions
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
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "heldout": evaluate(reloaded, processor, seed=2, n=args.eval),
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
