"""Small random-weight models and their inputs, laid out as each family's processor lays them out."""

from __future__ import annotations

import torch

from pilot.pruning.families import onevision_image_grids
from pilot.testing import random_models as rm
from pilot.testing.random_models import IMAGE_TOKEN, random_llava

VOCAB = 64


def text_config(layers: int = 2):
    return random_llava(layers=layers).config.text_config


def tiny_llava(layers=6, kv_heads=4, attn="sdpa", seed=0, dtype=torch.float32):
    """LLaVA-1.5 layout: a 6x6 grid = 36 visual tokens per image."""
    return random_llava(layers=layers, kv_heads=kv_heads, attn=attn, seed=seed, dtype=dtype)


def tiny_llava_next(layers=6, kv_heads=2, attn="sdpa", seed=0, dtype=torch.float32):
    """LLaVA-NeXT layout: 6x6 base grid plus an unpadded anyres grid with newline tokens."""
    return random_llava(layers=layers, kv_heads=kv_heads, attn=attn, seed=seed, dtype=dtype, next=True)


def llava_inputs(prefix_lengths, suffix_lengths, seed=0, n_visual=36):
    """A left-padded LLaVA batch: text, one image, an instruction of varying length per sample."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for before, after in zip(prefix_lengths, suffix_lengths, strict=True):
        text_a = torch.randint(6, VOCAB, (before,), generator=generator).tolist()
        text_b = torch.randint(6, VOCAB, (after,), generator=generator).tolist()
        rows.append([1] + text_a + [IMAGE_TOKEN] * n_visual + text_b)
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    pixel_values = torch.randn(len(rows), 3, 24, 24, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def next_inputs(model, image_sizes, suffix_lengths, seed=0):
    """A left-padded LLaVA-NeXT batch; visual-token counts differ with the image sizes."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    from pilot.pruning.families import next_image_grids

    generator = torch.Generator().manual_seed(seed)
    config = model.config
    counts = []
    for size in image_sizes:
        counts.append(sum(g.length for g in next_image_grids(config, size)))
    patches = [image_size_to_num_patches(s, config.image_grid_pinpoints, 24) for s in image_sizes]
    rows = []
    for count, after in zip(counts, suffix_lengths, strict=True):
        text_b = torch.randint(6, VOCAB, (after,), generator=generator).tolist()
        rows.append([1, 9] + [IMAGE_TOKEN] * count + text_b)
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    pixel_values = torch.zeros(len(rows), max(patches), 3, 24, 24)
    for i, n in enumerate(patches):
        pixel_values[i, :n] = torch.randn(n, 3, 24, 24, generator=generator)
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
        "image_sizes": torch.tensor(image_sizes),
    }, counts


def take(inputs: dict, row: int) -> dict:
    """One sample of a batch, with its padding removed (as if run alone)."""
    keep = inputs["attention_mask"][row].bool()
    out = {"input_ids": inputs["input_ids"][row : row + 1, keep],
           "attention_mask": inputs["attention_mask"][row : row + 1, keep],
           "pixel_values": inputs["pixel_values"][row : row + 1]}
    if "image_sizes" in inputs:
        out["image_sizes"] = inputs["image_sizes"][row : row + 1]
    return out


def qwen_inputs(model, images_per_sample, suffix_lengths, seed=0, video=None):
    """A left-padded Qwen2.5-VL / Qwen3-VL batch.

    ``images_per_sample``: per sample, a list of (rows, cols) in vision patches (even numbers:
    2x2 patches merge into one token); ``video``: optional (frames, rows, cols) appended to the
    last sample as a video (frames a multiple of 2 for Qwen's temporal patches).
    """
    from pilot.testing.random_models import QWEN_IMAGE_TOKEN, QWEN_VIDEO_TOKEN, QWEN_VISION_END, QWEN_VISION_START

    generator = torch.Generator().manual_seed(seed)
    vision = model.config.vision_config
    patch_values = 3 * vision.temporal_patch_size * vision.patch_size**2
    rows, pixels, grids, counts = [], [], [], []
    for sample, (images, after) in enumerate(zip(images_per_sample, suffix_lengths, strict=True)):
        row, count = [1, 9], 0
        for height, width in images:
            n = height * width // 4
            row += [QWEN_VISION_START] + [QWEN_IMAGE_TOKEN] * n + [QWEN_VISION_END, 10]
            pixels.append(torch.randn(height * width, patch_values, generator=generator))
            grids.append([1, height, width])
            count += n
        if video is not None and sample == len(images_per_sample) - 1:
            frames, height, width = video
            t = frames // vision.temporal_patch_size
            if model.config.model_type.startswith("qwen3"):  # a timestamp and its own run per frame
                for _ in range(t):
                    row += [11, QWEN_VISION_START] + [QWEN_VIDEO_TOKEN] * (height * width // 4) + [QWEN_VISION_END]
            else:
                row += [QWEN_VISION_START] + [QWEN_VIDEO_TOKEN] * (t * height * width // 4) + [QWEN_VISION_END]
            count += t * height * width // 4
        row += torch.randint(11, 60, (after,), generator=generator).tolist()
        rows.append(row)
        counts.append(count)
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    inputs = {
        "input_ids": input_ids, "attention_mask": attention_mask,
        "mm_token_type_ids": (input_ids == QWEN_IMAGE_TOKEN).int() + 2 * (input_ids == QWEN_VIDEO_TOKEN).int(),
        "pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids),
    }
    if video is not None:
        frames, height, width = video
        t = frames // vision.temporal_patch_size
        inputs["pixel_values_videos"] = torch.randn(t * height * width, patch_values, generator=generator)
        inputs["video_grid_thw"] = torch.tensor([[t, height, width]])
    return inputs, counts


def qwen_take(inputs: dict, row: int) -> dict:
    """One sample of a Qwen batch, padding removed, with only its own images' pixels and grids."""
    grids = inputs["image_grid_thw"]
    from pilot.testing.random_models import QWEN_IMAGE_TOKEN

    keep = inputs["attention_mask"][row].bool()
    per_sample = [int(((inputs["input_ids"][r] == QWEN_IMAGE_TOKEN)).sum()) for r in range(len(inputs["input_ids"]))]
    # grids belong to samples in order; find this sample's slice by token counts
    sizes = (grids.prod(dim=1) // 4).tolist()
    first, total = 0, 0
    for r in range(row):
        while total < sum(per_sample[: r + 1]):
            total += sizes[first]
            first += 1
    last, covered = first, 0
    while covered < per_sample[row]:
        covered += sizes[last]
        last += 1
    patch_offsets = [0] + torch.cumsum(grids.prod(dim=1), 0).tolist()
    out = {
        "input_ids": inputs["input_ids"][row : row + 1, keep],
        "attention_mask": inputs["attention_mask"][row : row + 1, keep],
        "mm_token_type_ids": inputs["mm_token_type_ids"][row : row + 1, keep],
        "pixel_values": inputs["pixel_values"][patch_offsets[first] : patch_offsets[last]],
        "image_grid_thw": grids[first:last],
    }
    return out


def gemma_inputs(model, images_per_sample, suffix_lengths, seed=0):
    """A left-padded Gemma 3 batch: ``images_per_sample[i]`` images in sample i, each between
    begin- and end-of-image tokens, then an instruction of ``suffix_lengths[i]`` tokens."""
    from pilot.testing.random_models import GEMMA_BOI, GEMMA_EOI, GEMMA_IMAGE_TOKEN

    generator = torch.Generator().manual_seed(seed)
    per_image = model.config.mm_tokens_per_image
    size = model.config.vision_config.image_size
    rows = []
    for images, after in zip(images_per_sample, suffix_lengths, strict=True):
        row = [1, 9]
        for _ in range(images):
            row += [GEMMA_BOI] + [GEMMA_IMAGE_TOKEN] * per_image + [GEMMA_EOI, 10]
        rows.append(row + torch.randint(11, 60, (after,), generator=generator).tolist())
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return {
        "input_ids": input_ids, "attention_mask": attention_mask,
        "token_type_ids": (input_ids == GEMMA_IMAGE_TOKEN).long(),
        "pixel_values": torch.randn(sum(images_per_sample), 3, size, size, generator=generator),
    }


def gemma_take(inputs: dict, images_per_sample, row: int) -> dict:
    """One sample of a Gemma 3 batch, padding removed, with only its own images."""
    keep = inputs["attention_mask"][row].bool()
    first = sum(images_per_sample[:row])
    return {
        "input_ids": inputs["input_ids"][row : row + 1, keep],
        "attention_mask": inputs["attention_mask"][row : row + 1, keep],
        "token_type_ids": inputs["token_type_ids"][row : row + 1, keep],
        "pixel_values": inputs["pixel_values"][first : first + images_per_sample[row]],
    }


# -- LLaVA-OneVision, InternVL, Mistral 3, SmolVLM / Idefics3: inputs as their processors make them --------
def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _text(generator, n: int) -> list[int]:
    return torch.randint(11, 60, (n,), generator=generator).tolist()


def onevision_inputs(model, samples, suffixes, seed=0):
    """``samples``: per sample, the (height, width) of its images; one image is anyres, several
    are each a base grid and a newline (``batch_num_images``)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    generator = torch.Generator().manual_seed(seed)
    config = model.config
    crop = config.vision_config.image_size
    rows, counts, sizes, patches = [], [], [], []
    for images, after in zip(samples, suffixes, strict=True):
        row, count, multi = [1, 9], 0, len(images) > 1
        for size in images:
            n = sum(g.length for g in onevision_image_grids(config, size, multi))
            row += [rm.ONEVISION_IMAGE_TOKEN] * n + [10]
            count += n
            sizes.append(size)
            patches.append(1 if multi else image_size_to_num_patches(size, config.image_grid_pinpoints, crop))
        rows.append(row + _text(generator, after))
        counts.append(count)
    ids, mask = _pad(rows)
    pixel_values = torch.zeros(len(sizes), max(patches), 3, crop, crop)
    for i, n in enumerate(patches):
        pixel_values[i, :n] = torch.randn(n, 3, crop, crop, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes), "batch_num_images": torch.tensor([len(s) for s in samples])}, counts


def internvl_inputs(model, samples, suffixes, seed=0):
    """``samples``: per sample, the tile count of each image (thumbnail included)."""
    generator = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size[0]
    tile = model.config.image_seq_length
    rows, counts, tiles = [], [], 0
    for images, after in zip(samples, suffixes, strict=True):
        row, count = [1, 9], 0
        for n in images:
            row += [rm.INTERNVL_IMG_START] + [rm.INTERNVL_IMAGE_TOKEN] * (tile * n) + [rm.INTERNVL_IMG_END, 10]
            count += tile * n
            tiles += n
        rows.append(row + _text(generator, after))
        counts.append(count)
    ids, mask = _pad(rows)
    pixel_values = torch.randn(tiles, 3, size, size, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values}, counts


def mistral3_inputs(model, samples, suffixes, seed=0):
    """``samples``: per sample, the (height, width) pixels of each image (multiples of 8)."""
    generator = torch.Generator().manual_seed(seed)
    step = model.config.vision_config.patch_size * model.config.spatial_merge_size
    rows, counts, sizes = [], [], []
    for images, after in zip(samples, suffixes, strict=True):
        row, count = [1, 9], 0
        for height, width in images:
            tokens = ([rm.PIXTRAL_IMAGE_TOKEN] * (width // step) + [rm.PIXTRAL_IMG_BREAK]) * (height // step)
            tokens[-1] = rm.PIXTRAL_IMG_END
            row += tokens
            count += (height // step) * (width // step)
            sizes.append((height, width))
        rows.append(row + [10] + _text(generator, after))
        counts.append(count)
    ids, mask = _pad(rows)
    pixel_values = torch.zeros(len(sizes), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for i, (height, width) in enumerate(sizes):
        pixel_values[i, :, :height, :width] = torch.randn(3, height, width, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes)}, counts


def smolvlm_inputs(model, samples, suffixes, seed=0):
    """``samples``: per sample, the (rows, cols) of tiles of each image; (0, 0) is the global image
    alone. Every image ends with its global image."""
    generator = torch.Generator().manual_seed(seed)
    vision = model.config.vision_config
    size = vision.image_size
    tile = (size // vision.patch_size // model.config.scale_factor) ** 2
    rows, counts, per_sample = [], [], []
    for images, after in zip(samples, suffixes, strict=True):
        row, count, n = [1, 9], 0, 0
        for tile_rows, tile_cols in images:
            for i in range(tile_rows):
                for j in range(tile_cols):
                    row += [rm.SMOLVLM_FAKE_TOKEN, rm.SMOLVLM_FIRST_ROW_COL + 3 * i + j]
                    row += [rm.SMOLVLM_IMAGE_TOKEN] * tile
                row += [10]  # "\n" after each row of tiles
            row += [10, rm.SMOLVLM_FAKE_TOKEN, rm.SMOLVLM_GLOBAL_IMG] + [rm.SMOLVLM_IMAGE_TOKEN] * tile
            row += [rm.SMOLVLM_FAKE_TOKEN]
            count += tile * (tile_rows * tile_cols + 1)
            n += tile_rows * tile_cols + 1
        rows.append(row + _text(generator, after))
        counts.append(count)
        per_sample.append(n)
    ids, mask = _pad(rows)
    pixel_values = torch.zeros(len(samples), max(per_sample), 3, size, size)  # all-zero images are padding
    for i, n in enumerate(per_sample):
        pixel_values[i, :n] = torch.randn(n, 3, size, size, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values}, counts
