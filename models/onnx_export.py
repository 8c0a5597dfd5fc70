"""Publish-time export of an encoder model for torch-free serving: `model.onnx` + `tokenizer.json`.

The exported graph maps (input_ids, attention_mask) to class probabilities: the backbone, the pooling
and the head of exactly the published weights. Before the files are published, the lean serving path
(models.lean_predictor.OnnxEncoder: the `tokenizers` library + ONNX Runtime) scores a fixed set of probe
texts and is compared with the torch scorer that `trainkite predict` uses; the largest absolute
difference of any probability goes in the manifest, and a difference above TOLERANCE stops the publish.

The TorchScript exporter (dynamo=False): one self-contained file, byte-identical for the same weights
(a retried publish must upload the same files), about 7 s for MiniLM-L6 on 2 cores; the dynamo exporter
took 28 s and writes the weights to a second file.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from importlib import metadata
from pathlib import Path

from trainkite.errors import IntegrityError

log = logging.getLogger("trainkite.publish")

ONNX_FILE, TOKENIZER_FILE = "model.onnx", "tokenizer.json"
OPSET = 17
# Probabilities are in [0, 1]; float32 graphs run by two engines agree to ~1e-6 here.
TOLERANCE = 1e-4
# Data-independent probes: lengths from nothing to past any max_length (truncation), punctuation,
# accents, digits, mixed case, repeated words, non-Latin script. Batched together, so padding and
# the attention mask are exercised too.
PROBE_TEXTS = [
    "",
    "a",
    "Fine.",
    "I loved it!",
    "Not good, not bad: just boring.",
    "The service was slow and the food was cold, but the staff apologised twice.",
    "Excellent value; would buy again without hesitation.",
    "Terrible. Never again.",
    "Café crème, naïve résumé, façade — déjà vu?",
    "1234 5678 90",
    "ALL CAPS AND SHOUTING!!!",
    "mixed CaSe wOrDs here",
    "Das ist wirklich nicht so gut gewesen.",
    "これはとても良い製品です。",
    "Отличный сервис, спасибо!",
    "emoji 🙂🙃 and symbols #@$%^&*()",
    "the the the the the the the the the the the the the the the the",
    " ".join(["long"] * 600),
    " ".join(f"word{i}" for i in range(300)),
    "It's not that I didn't like it; it's that it wasn't what I'd expected.",
    "Shipping took three weeks and the box arrived crushed.",
    "Meh.",
    "Best purchase this year, hands down, and I've bought a lot of gadgets.",
    "The manager never listens, but the pay is fine.",
    "?",
    "\t\n  spaced   out  \n",
    "A" * 500,
    "Questions? Answers! Ellipses... Dashes -- and 'quotes'.",
    "quite good actually",
    "not quite good actually",
    "could have been worse",
    "could not have been better",
]


def _probs_module(weights: Path, cfg: dict, n_classes: int):
    """(input_ids, attention_mask) -> softmax probabilities, as models.encoder.EncoderScorer computes them. Torch is
    imported here, not by the module: publish imports this module for every model kind."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    from models import encoder as enc

    class Probs(nn.Module):
        def __init__(self):
            super().__init__()
            want = cfg["encoder"]
            _, backbone = enc.load_backbone()
            state = load_file(str(weights))
            self.frozen = want["mode"] == "frozen"
            if self.frozen:
                self.pooling = want.get("pooling", "mean")
                self.backbone = backbone
                self.head = enc.Head(enc.pooled_width(backbone, self.pooling), n_classes, self.pooling)
                self.head.load_state_dict(state)
            else:
                self.model = enc.EncoderClassifier(backbone, n_classes)
                self.model.load_state_dict(state)
            self.eval()

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            if self.frozen:
                logits = self.head(enc.pooled(self.backbone, ids, mask, self.pooling))
            else:
                logits = self.model(ids, mask)
            return torch.softmax(logits.float(), dim=-1)

    return Probs()


def available() -> str | None:
    """None when the exporter and ONNX Runtime are installed, else what is missing."""
    for module in ("onnx", "onnxruntime", "tokenizers"):
        try:
            __import__(module)
        except ImportError:
            return module
    return None


def export_encoder(weights: Path, cfg: dict, n_classes: int, model_id: str, out_dir: Path) -> tuple[dict, dict]:
    """Write model.onnx and tokenizer.json to `out_dir`, check them, and return (files, manifest entry)."""
    import torch

    from models import encoder as enc
    from models.lean_predictor import OnnxEncoder

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, tok_path = out_dir / ONNX_FILE, out_dir / TOKENIZER_FILE
    shutil.copyfile(enc.require() / TOKENIZER_FILE, tok_path)
    module = _probs_module(weights, cfg, n_classes)
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            example,
            str(onnx_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["probs"],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "probs": {0: "batch"}},
        )
    lean = OnnxEncoder(onnx_path, tok_path, int(cfg["encoder"]["max_length"]), n_classes)(PROBE_TEXTS)
    reference = enc.EncoderScorer(weights, cfg, n_classes, model_id)(PROBE_TEXTS)
    diff = float(abs(lean - reference).max())
    if not diff <= TOLERANCE:
        raise IntegrityError(
            f"model {model_id}: the ONNX export's probabilities differ from torch's by {diff:.3g} "
            f"(more than {TOLERANCE}) on the probe texts; not publishing it"
        )
    log.info("exported %s: max abs difference to torch %.3g over %d probe texts", ONNX_FILE, diff, len(PROBE_TEXTS))
    entry = {
        "backend": "onnxruntime",
        "file": ONNX_FILE,
        "tokenizer": TOKENIZER_FILE,
        "opset": OPSET,
        "exporter": f"torch.onnx (TorchScript) torch {torch.__version__}",
        "onnxruntime": metadata.version("onnxruntime"),
        "checked_texts": len(PROBE_TEXTS),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
    }
    return {ONNX_FILE: onnx_path, TOKENIZER_FILE: tok_path}, entry


def serving_files(
    model_type: str, weights: Path, cfg: dict, n_classes: int, model_id: str, out_dir: Path
) -> tuple[dict, dict]:
    """The extra files a model type needs for torch-free serving, and the manifest's `serving` entry."""
    if model_type != "encoder":
        return {}, {"backend": "numpy"}
    missing = available()
    if missing:
        log.warning(
            "model %s: %s is not installed, so no %s: this model serves with torch only (the full image)",
            model_id,
            missing,
            ONNX_FILE,
        )
        return {}, {"backend": "torch", "onnx": f"not exported: {missing} is not installed"}
    return export_encoder(weights, cfg, n_classes, model_id, out_dir)
