"""Video-LLaVA through transformers (PyTorch), and LoRA fine-tuning of its language model.

Optional: needs torch (``pip install -e .[videollava]``); the 7B weights and a GPU are the
user's to bring, loaded from a local folder by ``VideoLlavaBackend.from_pretrained(path)``.
Clips, prompts and frame preprocessing follow the paper's reference; LoRA is written here
(:func:`add_lora`, :func:`lora_step`). More: docs/paper_setups.md, "Video-LLaVA".
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Sequence

import numpy as np

from baselines.llm.answer import Answer, BackendError
from baselines.llm.prompts import LABELS

try:
    import torch
except ImportError as err:  # the module is optional; say what to install
    raise ImportError(f"the Video-LLaVA backend needs torch ({err}): pip install -e .[videollava]") from None

TEMPLATE = "USER: <video>\n{prompt}ASSISTANT:"  # as the reference script, prompt verbatim
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(frames: Sequence[np.ndarray], size: int = 224,
                    squash: int = 0) -> "torch.Tensor":
    """(T, 3, size, size) float32 of RGB uint8 (h, w, 3) frames, as CLIP's processor does it:
    shortest side to ``size`` (bicubic, antialiased), centre crop, /255, CLIP mean and std.
    ``squash`` > 0 first resizes each whole frame to ``squash x squash`` (bicubic, rounded to
    uint8, as the reference's ``PIL.Image.resize`` before the processor)."""
    if not len(frames):
        raise ValueError("Video-LLaVA needs at least one frame")
    x = torch.from_numpy(np.stack([np.asarray(f, np.uint8) for f in frames])).permute(0, 3, 1, 2).float()
    if squash:
        x = torch.nn.functional.interpolate(x, size=(squash, squash), mode="bicubic",
                                            antialias=True, align_corners=False).clamp(0, 255).round()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True,
                                        align_corners=False).clamp(0, 255)
    # PIL rounds the resized image to uint8 before rescaling; do the same to match it.
    x = x.round()
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size] / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class VideoLlavaBackend:
    """Answers prompts about a clip of frames with a ``VideoLlavaForConditionalGeneration``.

    ``model`` and ``tokenizer`` are built by the caller (or :meth:`from_pretrained`);
    ``video_token`` is the placeholder string the tokenizer knows for the model's
    ``video_token_index``.
    """

    name = "videollava"
    accepts_video = True

    def __init__(self, model, tokenizer, *, template: str = TEMPLATE, max_new_tokens: int = 10,
                 video_token: str = "<video>", squash: int = 224):
        if "<video>" not in template:
            raise ValueError("the template must hold a <video> placeholder")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.max_new_tokens, self.video_token = template, max_new_tokens, video_token
        self.squash = int(squash)
        vision = model.config.vision_config
        self.image_size, patch = int(vision.image_size), int(vision.patch_size)
        # The video path keeps the CLS token ("full" features): one more than the patches.
        self.tokens_per_frame = (self.image_size // patch) ** 2 + 1
        if tokenizer.convert_tokens_to_ids(video_token) != model.config.video_token_index:
            raise BackendError(f"tokenizer id of {video_token!r} differs from the model's "
                               f"video_token_index {model.config.video_token_index}")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | None = None,
                        dtype: str = "float16", **kwargs) -> "VideoLlavaBackend":
        """Load model and tokenizer from a local folder (no download: ``local_files_only``)."""
        from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration
        if not os.path.isdir(path):
            raise BackendError(f"Video-LLaVA folder not found: {path} (the 7B weights are the "
                               f"user's to download, e.g. LanguageBind/Video-LLaVA-7B-hf)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = VideoLlavaForConditionalGeneration.from_pretrained(
            path, dtype=getattr(torch, dtype), local_files_only=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self):
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def pixel_values(self, frames: Sequence[np.ndarray]) -> "torch.Tensor":
        """(1, T, 3, S, S) tensor of RGB uint8 frames on the model's device and dtype."""
        dtype = next(self.model.parameters()).dtype
        return clip_preprocess(frames, self.image_size, self.squash).unsqueeze(0).to(self.device, dtype)

    def _text(self, prompt: str, n_frames: int) -> str:
        return self.template.format(prompt=prompt).replace(
            "<video>", self.video_token * (n_frames * self.tokens_per_frame))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def encode(self, prompt: str, frames: Sequence[np.ndarray], answer: str | None = None):
        """(model inputs, number of answer tokens at the end) for a prompt, clip and answer."""
        text = self._text(prompt, len(frames))
        ids = self._ids(text)
        n_answer = 0
        if answer is not None:
            joint = self._ids(text + " " + answer)
            if joint[: len(ids)] == ids and len(joint) > len(ids):
                n_answer = len(joint) - len(ids)
                ids = joint
            else:  # the tokenizer merged across the boundary: append the answer's own tokens
                tail = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
                ids, n_answer = ids + tail, len(tail)
        input_ids = torch.tensor([ids], device=self.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "pixel_values_videos": self.pixel_values(frames)}, n_answer

    def answer_logprob(self, prompt: str, frames: Sequence[np.ndarray], answer: str) -> "torch.Tensor":
        """Summed log-probability of ``answer``'s tokens after the prompt (differentiable)."""
        inputs, n = self.encode(prompt, frames, answer)
        logits = self.model(**inputs).logits[0, -n - 1:-1].float()
        targets = inputs["input_ids"][0, -n:]
        return torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum()

    @torch.no_grad()
    def score_labels(self, prompt: str, images: Sequence[np.ndarray] | None = None) -> dict:
        """{label: log-probability} of each label given the prompt and clip."""
        if images is None or not len(images):
            raise BackendError("Video-LLaVA scores a clip: pass its frames as images")
        return {label: float(self.answer_logprob(prompt, images, label)) for label in LABELS}

    @torch.no_grad()
    def generate(self, prompt: str, images: Sequence[np.ndarray] | None = None,
                 score: bool = True) -> Answer:
        """Greedy answer for the clip ``images`` (8 frames by the reference's sampling)."""
        if images is None or not len(images):
            raise BackendError("Video-LLaVA answers about a clip: pass its frames as images")
        inputs, _ = self.encode(prompt, images)
        pad = self.tokenizer.pad_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Answer(text.strip(), self.score_labels(prompt, images) if score else None)


# ---- LoRA ------------------------------------------------------------------------------
class LoRALinear(torch.nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` with ``base`` frozen and ``B`` starting at 0."""

    def __init__(self, base: torch.nn.Linear, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_a = torch.nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))
        torch.nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear's own init

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def add_lora(model, rank: int = 8, alpha: float = 16.0,
             targets: Iterable[str] = ("q_proj", "v_proj"), scope: str = "language_model") -> list[str]:
    """Freeze ``model`` and wrap the Linear layers named in ``targets`` under ``scope`` with
    :class:`LoRALinear`; returns the wrapped modules' names. Raises ValueError when none match."""
    targets = tuple(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if scope in name and isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[-1], LoRALinear(module, rank, alpha))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no Linear layer named {targets} under {scope!r} to adapt")
    return wrapped


def lora_parameters(model) -> list:
    """The trainable LoRA parameters (for the optimiser and for saving)."""
    return [p for n, p in model.named_parameters() if ".lora_" in n and p.requires_grad]


def lora_step(backend: VideoLlavaBackend, optimizer, batch: Sequence[tuple]) -> float:
    """One optimiser step of answer cross-entropy on ``batch`` = [(prompt, frames, label)].

    ``label`` 1 -> ``Ambivalent``, 0 -> ``Non-Ambivalent``; the loss is the mean negative
    log-likelihood of the correct answer's tokens (the prompt and video are not trained on).
    Returns the loss. Raises FloatingPointError on a non-finite loss.
    """
    backend.model.train()
    optimizer.zero_grad()
    losses = [-backend.answer_logprob(p, f, LABELS[0] if y else LABELS[1]) for p, f, y in batch]
    loss = torch.stack(losses).mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite LoRA loss {loss.item()}")
    loss.backward()
    optimizer.step()
    backend.model.eval()
    return float(loss.detach())
