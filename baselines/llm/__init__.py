"""Zero-shot and fine-tuned (multimodal) LLM baselines: the BAH paper's Tables 6 and 7.

- ``prompts``: the paper's prompts (Table 6) and our level-1 evidence variant.
- ``parse``: strict recognition of the two answers, and the reference's lenient rule.
- ``backends``: one interface over llama.cpp (local GGUF), an OpenAI-compatible server and
  Video-LLaVA through transformers (with a small LoRA fine-tuning path).
- ``zeroshot``: video-level (8 uniform frames) and frame-level (8-frame segments) inference.

Nothing heavy is imported here: each backend imports its runtime when it is built.
"""
