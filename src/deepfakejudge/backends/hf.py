"""Local transformers backend for Qwen2-VL / Qwen2.5-VL judges.

The model is loaded once; every call is one batched, left-padded pass (`generate`) or one
batched forward (`choice_probs`). Decoding follows `LoadOptions.decoding`: "checkpoint" (the
default) uses the checkpoint's generation_config.json as `model.generate(**inputs,
max_new_tokens=N)` does, which is how the released judges were run (Qwen ships top_k=1,
top_p=0.001, repetition_penalty=1.05); "greedy" is plain argmax without the repetition penalty,
as greedy is in other engines. Log-probs and score-only distributions are the model's logits
after the checkpoint's logits processors (the repetition penalty) but before the sampling
warpers (temperature, top-k, top-p), which only sharpen or cut the distribution: with top_k=1
it would be one-hot.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..errors import MissingExtra, UsageError
from ..runtime import resolve_device, resolve_dtype
from .base import (
    Backend,
    BackendError,
    Capabilities,
    ChatRequest,
    Generation,
    GenerationConfig,
    LoadOptions,
    TokenStep,
)
from .budget import REMOTE_DEFAULT_LIMIT, context_length, tokenizer_budget
from .processor import ImageTextProcessor, is_local_model
from .stopping import AnswerStop, check_answer_kind, cut_at
from .vision_attention import set_grouped_vision_attention
from .vision_cache import VisionCache

VISION_ATTENTION = ("auto", "grouped", "loop")


def model_classes() -> dict[str, Any]:
    # The processor is Qwen2-VL specific (14 px patches, 2x2 merge, <|image_pad|>), so only the
    # two architectures that share it are accepted.
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
    )

    return {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen2_vl": Qwen2VLForConditionalGeneration}


def token_pieces(decode: Callable[[list[int]], str], ids: Sequence[int]) -> list[str]:
    """Text of each token such that "".join(pieces) == decode(ids).

    Byte-level BPE tokens can split a UTF-8 character; such a token decodes to U+FFFD. Its text
    is held back and given to the token that completes the character (the earlier ones get "").
    For byte-level decoders, windows that end on a character boundary decode independently, so
    the pieces concatenate; any other decoder falls back to cumulative decoding.
    """
    pieces: list[str] = []
    start = 0
    for i in range(len(ids)):
        piece = decode(list(ids[start : i + 1]))
        if piece.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")
            continue
        pieces.append(piece)
        start = i + 1
    full = decode(list(ids))
    return pieces if "".join(pieces) == full else _cumulative_pieces(decode, ids, full)


def _cumulative_pieces(decode: Callable[[list[int]], str], ids: Sequence[int], full: str) -> list[str]:
    # Quadratic, so only a fallback: decoders that are not byte-level (e.g. SentencePiece's
    # leading-space rule) only agree with themselves when given the whole prefix.
    pieces: list[str] = []
    done = ""
    for i in range(len(ids)):
        text = full if i + 1 == len(ids) else decode(list(ids[: i + 1]))
        if text.startswith(done) and not (text.endswith("\ufffd") and i + 1 < len(ids)):
            pieces.append(text[len(done) :])
            done = text
        else:
            pieces.append("")
    return pieces


def _longest_common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if len({s[i] for s in seqs}) > 1:
            return i
    return n


class HFBackend(Backend):
    """transformers model in this process. `model` and `processor` are public for tests and for
    components (training, serving) that need the same loaded objects."""

    name = "hf"
    capabilities = Capabilities(logprobs=True, choice_probs=True)
    honours_stop_at_answer = True

    def __init__(self, options: LoadOptions) -> None:
        from transformers import AutoConfig

        self.options = options
        _vision_attention(options)  # a bad option fails before the model loads
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.attn_implementation = options.attn_implementation or "sdpa"
        # Missing paths fail here with a clear message, before any hub lookup or model load.
        is_local_model(options.model)
        if options.adapter is not None:
            is_local_model(options.adapter)
        try:
            model_type = AutoConfig.from_pretrained(options.model).model_type
        except OSError as exc:
            # transformers says "couldn't connect" / "not a valid model identifier" in a long
            # traceback; the user needs the model name, the reason and what to do.
            reason = str(exc).strip().splitlines()[0]
            raise UsageError(
                f"model '{options.model}': cannot be loaded ({reason}). Pass a local checkpoint "
                "folder, or a Hugging Face id that is in the local cache or reachable online."
            ) from exc
        classes = model_classes()
        if model_type not in classes:
            raise UsageError(
                f"model '{options.model}': architecture '{model_type}' is not supported by the hf "
                f"backend (supported: {', '.join(classes)})"
            )
        self.processor = ImageTextProcessor.from_pretrained(
            options.model, options.budget.min_pixels, options.budget.max_pixels
        )
        model = classes[model_type].from_pretrained(
            options.model, dtype=self.dtype, attn_implementation=self.attn_implementation
        )
        if options.adapter is not None:
            model = _load_adapter(model, options.adapter)
        self._attach(model.to(self.device).eval())

    @classmethod
    def from_loaded(cls, model: Any, processor: ImageTextProcessor, options: LoadOptions) -> HFBackend:
        """Wrap a model and processor already in memory, without reading a checkpoint.

        For benchmarks at real shapes with random weights (saving and reloading 7B of weights would
        cost more than the measurement) and for components that hold a loaded model. Device and
        dtype are the model's; `options` gives the pixel budget (which must be the processor's),
        the vision cache size and what `describe()` records as the model. The model's
        `generation_config` is replaced, as when loading.
        """
        size = processor.image_processor.size  # the cache key holds the budget: they must agree
        if (size.shortest_edge, size.longest_edge) != (options.budget.min_pixels, options.budget.max_pixels):
            raise ValueError(
                f"options.budget ({options.budget.min_pixels}, {options.budget.max_pixels}) differs from the "
                f"processor's pixel budget ({size.shortest_edge}, {size.longest_edge}); build the processor "
                "with ImageTextProcessor.from_pretrained(path, min_pixels, max_pixels) of the same budget"
            )
        backend = cls.__new__(cls)
        backend.options = options
        backend.device = model.device
        backend.dtype = model.dtype
        backend.attn_implementation = model.config._attn_implementation
        backend.processor = processor
        backend._attach(model.eval())
        return backend

    def _attach(self, model: Any) -> None:
        """Make `model` (on its device, in eval mode) this backend's model: stop tokens, plain
        generation settings, caches."""
        from transformers import GenerationConfig as HFGenerationConfig

        self.model = model
        tok = self.processor.tokenizer
        limit = self.options.max_prompt_tokens or context_length(model.config) or REMOTE_DEFAULT_LIMIT
        self.prompt_budget = tokenizer_budget(tok, limit, self.options.budget.max_pixels)
        checkpoint_eos = self.model.generation_config.eos_token_id
        checkpoint_eos = [checkpoint_eos] if isinstance(checkpoint_eos, int) else list(checkpoint_eos or [])
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids = tuple(sorted({im_end, tok.eos_token_id, *checkpoint_eos} - {None}))
        # The checkpoint's settings are applied per call (see `_decoding_config`); the model's own
        # copy holds only token ids, so nothing else is merged in behind our back.
        # Kept on the model too: a second backend wrapping the same model (`from_loaded`) must see
        # the checkpoint's settings, not the token-only config the first one left.
        if not hasattr(self.model, "dfj_checkpoint_generation"):
            self.model.dfj_checkpoint_generation = self.model.generation_config
        self.checkpoint_generation = self.model.dfj_checkpoint_generation
        self.model.generation_config = HFGenerationConfig(
            eos_token_id=list(self.stop_ids), pad_token_id=self.processor.pad_token_id
        )
        self.special_ids = frozenset(
            i for i, added in tok.added_tokens_decoder.items() if added.special
        ) | frozenset(tok.all_special_ids)
        self._piece_cache: dict[int, str] = {}
        self.vision_cache = VisionCache(self.options.vision_cache_mb * 2**20)
        mode = _vision_attention(self.options)
        on = mode == "grouped" or (mode == "auto" and self.device.type == "cuda")
        self.vision_attention = "grouped" if set_grouped_vision_attention(self.model, on) else "loop"

    # -- calls -----------------------------------------------------------------------------------

    def _encode_images(self, requests: Sequence[ChatRequest]) -> tuple[dict[str, Any], list[int]]:
        """Visual embeddings for the requests' images, each distinct image encoded once.

        Images are identified by `image_key` (content hash) and the pixel budget; cached ones
        skip both preprocessing and the vision tower. Returns model kwargs
        (`image_grid_thw`, `mm_encoder_outputs`) and the visual token count per request.
        """
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        budget = (self.options.budget.min_pixels, self.options.budget.max_pixels)
        # Without a content key an image is only shared within this call (same object).
        keys = [
            None if r.image is None else (r.image_key, *budget) if r.image_key else ("object", id(r.image))
            for r in requests
        ]
        found: dict[Any, tuple[Any, Any]] = {}
        todo: dict[Any, Any] = {}
        for key, request in zip(keys, requests):
            if key is None or key in found or key in todo:
                continue
            hit = self.vision_cache.get(key) if key[0] != "object" else None
            if hit is not None:
                found[key] = hit
            else:
                todo[key] = request.image
        if todo:
            pixels, _ = self.processor.image_inputs([ChatRequest(text="", image=img) for img in todo.values()])
            grids = pixels["image_grid_thw"]
            features = self.model.get_image_features(
                pixels["pixel_values"].to(self.device, self.dtype), grids.to(self.device), return_dict=True
            ).pooler_output
            for key, embeds, grid in zip(todo, features, grids):
                found[key] = (embeds, grid)
                if key[0] != "object":
                    self.vision_cache.put(key, embeds, grid)
        merge = self.processor.image_processor.merge_size ** 2
        counts = [0 if key is None else int(found[key][1].prod()) // merge for key in keys]
        used = [found[key] for key in keys if key is not None]
        if not used:
            return {}, counts
        kwargs = {
            "image_grid_thw": torch.stack([grid for _, grid in used]).to(self.device),
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=tuple(e for e, _ in used))},
        }
        return kwargs, counts

    def _inputs(self, requests: Sequence[ChatRequest], tails: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
        """Device-ready model kwargs for a batch (inside `_guarded`: encoding can run out of memory)."""
        vision = self._encode_images(requests)
        batch = self.processor(requests, tails=tails, vision=vision)
        import torch

        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _guarded(self, n: int, call: Callable[[], Any]) -> Any:
        """Run one batch; engine failures become BackendError naming the batch size and a fix."""
        import torch

        try:
            with torch.inference_mode():
                return call()
        except torch.OutOfMemoryError as e:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise BackendError(
                f"out of memory on {self.device} for a batch of {n} requests; lower --batch-size "
                f"or --max-pixels ({e})"
            ) from e
        except RuntimeError as e:
            raise BackendError(f"{self.name} backend failed on a batch of {n} requests: {e}") from e

    def generate(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation]:
        import torch

        if config.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens: must be >= 1, got {config.max_new_tokens}")
        if config.temperature < 0:
            raise UsageError(f"temperature: must be >= 0, got {config.temperature}")
        if config.top_logprobs < 0:
            raise UsageError(f"top_logprobs: must be >= 0, got {config.top_logprobs}")
        if not requests:
            return []
        hf_config = self._decoding_config(config)
        sampling = hf_config.do_sample

        check_answer_kind(config.stop_at_answer)
        answer_stop: list[AnswerStop] = []

        def call():
            batch = self._inputs(requests)
            if sampling:
                torch.manual_seed(config.seed)  # global RNG: HF generate takes no generator
            stopping = self._answer_stop(config.stop_at_answer, batch["input_ids"].shape, answer_stop)
            out = self.model.generate(**batch, generation_config=hf_config, stopping_criteria=stopping)
            return batch["input_ids"].shape[1], batch["attention_mask"].sum(1).tolist(), out

        prompt_length, prompt_tokens, out = self._guarded(len(requests), call)
        logits = self._processed_steps(out, prompt_length, config)
        new_tokens = out.sequences[:, prompt_length:].tolist()
        stopped = answer_stop[-1].stopped if answer_stop else [None] * len(new_tokens)
        # out.logits: one [batch, vocab] tensor per step, raw (the model's own distribution,
        # before temperature). Not stacked: at Qwen's 152k vocabulary that would copy gigabytes.
        return [
            replace(
                self._generation(row, ids, logits, config.top_logprobs, stopped[row]),
                prompt_tokens=int(prompt_tokens[row]),
            )
            for row, ids in enumerate(new_tokens)
        ]

    def _decoding_config(self, config: GenerationConfig) -> Any:
        """The transformers generation config of one call (see the module docstring)."""
        from transformers import GenerationConfig as HFGenerationConfig

        fixed = dict(
            max_new_tokens=config.max_new_tokens,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.processor.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        if config.temperature > 0 or self.options.decoding == "greedy":
            # Plain greedy, or plain temperature sampling (re-asks): transformers would otherwise fill
            # unset values from its own defaults (top_k=50), so the sampling filters are switched off.
            sampling = config.temperature > 0
            warpers = {"temperature": config.temperature, "top_k": 0, "top_p": 1.0} if sampling else {}
            return HFGenerationConfig(do_sample=sampling, repetition_penalty=1.0, **fixed, **warpers)
        # What `model.generate(**inputs, max_new_tokens=N)` does: the checkpoint's config, updated.
        hf_config = copy.deepcopy(self.checkpoint_generation)
        hf_config.update(**fixed)
        return hf_config

    def decoding_settings(self) -> dict[str, Any]:
        """The decoding of plain (non re-ask) calls, for provenance and the request cache's key."""
        if self.options.decoding == "greedy":
            return {"decoding": "greedy", "do_sample": False, "repetition_penalty": 1.0}
        c = self.checkpoint_generation
        return {"decoding": "checkpoint", "do_sample": bool(c.do_sample), "temperature": c.temperature,
                "top_k": c.top_k, "top_p": c.top_p, "repetition_penalty": c.repetition_penalty}

    def _penalty(self, config: GenerationConfig | None = None) -> Any:
        """The checkpoint's repetition penalty as a logits processor, or None when it does not apply."""
        from transformers import RepetitionPenaltyLogitsProcessor

        if self.options.decoding != "checkpoint" or (config is not None and config.temperature > 0):
            return None
        penalty = self.checkpoint_generation.repetition_penalty
        return None if penalty in (None, 1.0) else RepetitionPenaltyLogitsProcessor(float(penalty))

    def _processed_steps(self, out: Any, prompt_length: int, config: GenerationConfig) -> Sequence[Any]:
        """Each step's logits as generation saw them after the logits processors (see the module
        docstring); the raw logits when no processor applies."""
        penalty = self._penalty(config)
        if penalty is None:
            return out.logits
        steps = list(out.logits)
        out.logits = None  # each raw step is freed once processed: no second copy of all steps
        for i, step in enumerate(steps):
            steps[i] = penalty(out.sequences[:, : prompt_length + i], step)
        return steps

    def _answer_stop(self, kind: str | None, shape: Any, made: list[AnswerStop]) -> Any:
        """The stopping criteria that end each row at its answer tag (none when `kind` is None);
        the criterion is appended to `made` so the caller can read where each row stopped."""
        from transformers import StoppingCriteriaList

        if kind is None:
            return StoppingCriteriaList()
        tok = self.processor.tokenizer
        special = self.special_ids
        criterion = AnswerStop(
            kind, shape[1], shape[0],
            lambda ids: tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
            # Special tokens ("<|im_end|>", the padding after a finished row) are skipped by the
            # decode above, so they never complete a tag: no decode of the row for them.
            lambda token: "" if token in special else self._piece(token),
        )
        made.append(criterion)
        return StoppingCriteriaList([criterion])

    def _generation(
        self, row: int, ids: list[int], logits: Sequence[Any], top_k: int, answer_end: int | None = None
    ) -> Generation:
        import torch

        # A row stopped at its answer tag ends there (the batch's padding after it is not output).
        ids, at_answer = cut_at(ids, answer_end)
        stop_at = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        finish = "stop" if stop_at is not None or at_answer else "length"
        # Generated tokens as engines count them: the stop token included, the padding after it not.
        count = stop_at + 1 if stop_at is not None else len(ids)
        ids = ids[:stop_at] if stop_at is not None else ids
        kept = [i for i, t in enumerate(ids) if t not in self.special_ids]
        tok = self.processor.tokenizer
        text = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not kept:
            return Generation(text=text, steps=(), finish_reason=finish, completion_tokens=count)
        kept_ids = [ids[i] for i in kept]
        logprobs = torch.log_softmax(torch.stack([logits[i][row] for i in kept]).float(), dim=-1)
        chosen = logprobs.gather(1, torch.tensor(kept_ids, device=logprobs.device)[:, None])[:, 0].tolist()
        top_vals, top_idx = (
            logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1) if top_k else (None, None)
        )
        top_vals = top_vals.tolist() if top_k else [[] for _ in kept]
        top_idx = top_idx.tolist() if top_k else [[] for _ in kept]
        pieces = token_pieces(
            lambda w: tok.decode(w, skip_special_tokens=False, clean_up_tokenization_spaces=False), kept_ids
        )
        steps, offset = [], 0
        for piece, lp, vals, idx in zip(pieces, chosen, top_vals, top_idx):
            alternatives = tuple((self._piece(i), v) for i, v in zip(idx, vals))
            steps.append(TokenStep(offset=offset, token=piece, logprob=lp, top=alternatives))
            offset += len(piece)
        if offset != len(text):
            raise BackendError(
                f"token offsets do not reconstruct the decoded text ({offset} != {len(text)} chars): "
                "this tokenizer's decoder cannot attribute text to single tokens"
            )
        return Generation(text=text, steps=tuple(steps), finish_reason=finish, completion_tokens=count)

    def _piece(self, token_id: int) -> str:
        """Decoded text of one vocabulary entry (special tokens shown as themselves), memoised."""
        piece = self._piece_cache.get(token_id)
        if piece is None:
            piece = self.processor.tokenizer.decode(
                [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            self._piece_cache[token_id] = piece
        return piece

    def heal(self, prefix: str, choices: Sequence[str]) -> tuple[list[int], list[int]]:
        """Context tokens after the prompt, and the one token of each choice after them.

        The context is the longest common token prefix of tokenise(prefix) and every
        tokenise(prefix + choice): when the tokenizer merges the end of the prefix with a choice
        (">A"), the context stops before ">" and the choices are the merged tokens.
        """
        base = self.processor.text_ids(prefix)
        full = [self.processor.text_ids(prefix + c) for c in choices]
        n = _longest_common_prefix([base, *full])
        # Distinct strings can still share tokens (NFC-equivalent spellings, or a shared first
        # token): one next-token distribution cannot tell those apart.
        firsts = [ids[n] if len(ids) > n else None for ids in full]
        if None in firsts or len(set(firsts)) != len(firsts):
            raise UsageError(
                f"choices: {list(choices)} do not start with distinct tokens after the prefix "
                f"{prefix[-20:]!r}; their probabilities cannot be told apart from one next token"
            )
        multi = [c for c, ids in zip(choices, full) if len(ids) - n != 1]
        if multi:
            tokens = [self.processor.tokenizer.convert_ids_to_tokens(ids[n:]) for ids in full]
            raise UsageError(
                f"choices: {multi} are not single tokens after the prefix {prefix[-20:]!r} "
                f"(tokens after the shared context: {tokens}); choice probabilities read one "
                "next token per choice; use --mode generate"
            )
        return base[:n], firsts

    def choice_probs(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float]]:
        import torch

        if not choices or any(not c for c in choices) or len(set(choices)) != len(choices):
            raise ValueError(f"choices: need distinct non-empty strings, got {list(choices)}")
        if not requests:
            return []
        healed = [self.heal(r.prefix, choices) for r in requests]
        tails = [context for context, _ in healed]
        # Left padding puts every context's last token at the last position; keep only its logits.
        penalty = self._penalty()

        def call():
            batch = self._inputs(requests, tails)
            last = self.model(**batch, logits_to_keep=1).logits[:, -1, :]
            # The distribution generation would sample the choice from: the same processors.
            return last if penalty is None else penalty(batch["input_ids"], last)

        last = self._guarded(len(requests), call)
        probs = torch.softmax(last.float(), dim=-1).cpu()
        return [
            {c: float(probs[row, t]) for c, t in zip(choices, ids)} for row, (_, ids) in enumerate(healed)
        ]

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        return {
            "backend": self.name,
            "model": self.options.model,
            "adapter": self.options.adapter,
            # What is in the folders, not only their names: a model retrained into the same folder
            # must not be answered from a request cache filled by the old one.
            "model_files": folder_fingerprint(self.options.model),
            "adapter_files": folder_fingerprint(self.options.adapter),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "min_pixels": self.options.budget.min_pixels,
            "max_pixels": self.options.budget.max_pixels,
            "attn_implementation": self.attn_implementation,
            "vision_attention": self.vision_attention,
            "generation": self.decoding_settings(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def close(self) -> None:
        import torch

        self.model = None
        self.vision_cache.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def folder_fingerprint(path: str | None) -> str | None:
    """A short hash of the names, sizes and modification times of a local checkpoint folder's
    files (weights and configs); None for a hub id or no path. Cheap: no weight is read."""
    import hashlib
    import json
    import os

    if path is None or not os.path.isdir(path):
        return None
    entries = []
    with os.scandir(path) as it:
        for e in it:
            if e.is_file() and e.name.endswith((".safetensors", ".bin", ".json", ".txt", ".jinja", ".model")):
                st = e.stat()
                entries.append((e.name, st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()[:16]


def _vision_attention(options: LoadOptions) -> str:
    if options.vision_attention not in VISION_ATTENTION:
        raise UsageError(f"vision_attention: {options.vision_attention!r} is not one of {', '.join(VISION_ATTENTION)}")
    return options.vision_attention


def _load_adapter(model: Any, adapter: str) -> Any:
    try:
        from peft import PeftModel
    except ImportError as e:
        raise MissingExtra(
            "loading a LoRA adapter needs peft: pip install 'deepfakejudge[lora]'"
        ) from e
    # Kept unmerged: exact LoRA arithmetic, and the base weights stay as loaded.
    return PeftModel.from_pretrained(model, adapter)
