"""A tiny random Qwen2.5-VL checkpoint, built offline, shaped like a real one.

Tests (and demos without a GPU or network) load it by path exactly as users load
`Qwen/Qwen2.5-VL-3B-Instruct`: config.json, model.safetensors, a byte-level BPE tokenizer with
Qwen's special tokens placed after the learned vocabulary, the chat template (in
tokenizer_config.json and as chat_template.jinja), preprocessor_config.json and
generation_config.json. Weights are random, so outputs are gibberish, but every shape, token
boundary and file the real checkpoints have is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

# Qwen2's pre-tokenizer regex (tokenization_qwen2.PRETOKENIZE_REGEX). Digits are single
# pre-tokens, and one non-letter may glue onto the letters after it (">A", ">real"), which is
# what makes token healing necessary when reading choice probabilities.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-VL's added tokens, in the real order (real ids start at 151643); ours follow the BPE
# vocabulary, keeping the same relative offsets.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Our own Jinja equivalent of the Qwen2-VL / Qwen2.5-VL chat template: default system prompt,
# image -> <|vision_start|><|image_pad|><|vision_end|>, optional "Picture N: " labels.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# CLIP normalisation, as in Qwen's preprocessor_config.json.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

_SENTENCES = (
    "The image shows a face with smooth skin and a blurred background.",
    "Lighting on the left cheek does not match the shadows behind the person.",
    "The hands have six fingers, a common artifact of diffusion generators.",
    "Text on the sign is garbled, which suggests the picture was generated.",
    "Edges around the hair look soft and the ears are not symmetric.",
    "The reflection in the eyes is consistent, so the photo is likely real.",
    "This region was edited: the texture of the wall repeats unnaturally.",
    "A deepfake detector must explain why it thinks an image is real or fake.",
    "The explanation is grounded in visible artifacts and the bounding box.",
    "Score the candidate response from 1 to 5 given the ground truth label.",
    "Which response is better, response A or response B? Answer with one letter.",
    "Ground truth: real. Ground truth: fake. Ground truth: edited.",
    "Pixels don't lie, but your detector might; it's what we'll check.",
)
_TAGGED = (
    "<reasoning>The skin is too smooth and the lighting is inconsistent.</reasoning>\n<score>2</score>",
    "<reasoning>The reasoning names real artifacts in the image.</reasoning>\n<score>4</score>",
    "<reasoning>Shadows and reflections agree; nothing looks edited.</reasoning> <answer>real</answer>",
    "<reasoning>Garbled text and warped hands.</reasoning> <answer>fake</answer>",
    "<answer>A</answer>",
    "<answer>B</answer>",
    "<score>1</score> <score>3</score> <score>5</score>",
)


_REGIONS = (
    "eyes", "mouth", "teeth", "hair", "background", "hands", "jewelry", "shadow", "sky", "window",
    "eyebrows", "forehead", "glasses", "collar", "building", "street", "vehicle", "signage",
    "foliage", "watermark", "reflection", "horizon", "fingernails", "earrings",
)
_FINDINGS = (
    "looks blurry", "shows warped geometry", "has inconsistent lighting", "contains repeated texture",
    "appears natural", "shows compression noise", "has mismatched colors", "seems physically plausible",
    "exhibits checkerboard patterns", "reveals splicing boundaries", "lacks sensor grain",
    "displays impossible perspective", "carries oversaturated highlights", "keeps coherent anatomy",
)
_GENERATORS = (
    "Stable Diffusion", "Midjourney", "DALL-E", "Flux", "StyleGAN", "Imagen", "Firefly",
    "inpainting", "faceswap", "camera", "smartphone", "scanner",
)


def _corpus() -> list[str]:
    # Repetition makes the tags, ">A"/">B" and common words frequent enough to become merges;
    # the region x finding sentences give the trainer enough distinct words for ~1000 tokens.
    described = [
        f"In the {region} the photograph {finding}, {n} of {m} annotators agreed."
        for i, region in enumerate(_REGIONS)
        for j, finding in enumerate(_FINDINGS)
        for n, m in [(i % 5 + 1, j % 4 + 5)]
    ]
    sources = [f"Source: {g}. Generator {g} produced it; verdict {g.lower()}." for g in _GENERATORS]
    return list(_SENTENCES) * 4 + list(_TAGGED) * 12 + (described + sources) * 2 + [" ".join(_SENTENCES)] * 2


def build_tokenizer(vocab_size: int = 1000):
    """Train a byte-level BPE with Qwen2's normaliser, pre-tokenizer and decoder, then add
    Qwen's special tokens after the learned vocabulary (as in the real tokenizer)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _tokenizer_config(tok) -> dict:
    decoder = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "processor_class": "Qwen2_5_VLProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _model_config(vocab_size: int, ids: dict[str, int]):
    from transformers import Qwen2_5_VLConfig

    hidden, heads = 64, 4  # head_dim 16
    # mrope splits head_dim/2 rotary frequencies between (temporal, height, width); real 3B/7B
    # use [16, 24, 24] for head_dim 128; ours sums to head_dim // 2 = 8 in the same proportions.
    mrope_section = [2, 3, 3]
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope_section},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
        "in_channels": 3,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_qwen25vl(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint to `path` (created if missing) and return it.

    Deterministic for a given `seed`. Takes a few seconds on CPU.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    config = _model_config(vocab_size, ids)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # The real generation_config.json, token ids remapped. Its sampling settings (top_k 1,
    # repetition_penalty 1.05) are kept on purpose: --decoding checkpoint (the default) applies
    # them, as model.generate does, and --decoding greedy must not.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        do_sample=True,
        repetition_penalty=1.05,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
    )
    model.save_pretrained(out)

    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", _tokenizer_config(tok))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    preprocessor = {
        "min_pixels": 3136,
        "max_pixels": 1003520,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    _write_json(out / "preprocessor_config.json", preprocessor)
    video = {
        **{k: preprocessor[k] for k in ("patch_size", "temporal_patch_size", "merge_size")},
        "min_pixels": 3136,
        "max_pixels": 1003520,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "video_processor_type": "Qwen2VLVideoProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    _write_json(out / "video_preprocessor_config.json", video)
    return out
