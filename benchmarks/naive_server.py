"""What a user writes by hand: FastAPI + uvicorn calling the model once per request.

Run with ``REFIT_NAIVE_MODEL_DIR=<version>/model uvicorn benchmarks.naive_server:app``. The model
is the same saved classifier the Refit service serves, run by torch on each request's texts, or
on its base64 images decoded and preprocessed as the model was trained (its saved processor).
With ``REFIT_NAIVE_SPEC=<served.json>`` instead (``naive-onnx``), it runs the version's ONNX
export as every serving peer does (``benchmarks/peers/onnx_text.py``): texts only.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from training.model import load_classifier

app = FastAPI()
state: dict[str, Any] = {}


class Body(BaseModel):
    texts: list[str] | None = None
    images: list[str] | None = None


@app.on_event("startup")
def load() -> None:
    if spec := os.environ.get("REFIT_NAIVE_SPEC"):
        from benchmarks.peers.onnx_text import OnnxTextClassifier

        state["onnx"] = OnnxTextClassifier(spec, threads=0)
        state["model"] = state["onnx"]
        return
    directory = Path(os.environ["REFIT_NAIVE_MODEL_DIR"])
    state["model"], state["processor"] = load_classifier(directory)
    # What anyone would write on a GPU machine: the model on the GPU, fp32, one request at a time.
    state["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    state["model"].to(state["device"])
    state["labels"] = json.loads((directory.parent / "labels.json").read_text())


@app.get("/readyz")
def ready() -> dict[str, bool]:
    return {"ready": "model" in state}


@app.post("/classify")
def classify(body: Body) -> list[dict[str, Any]]:
    if "onnx" in state:
        return list(state["onnx"].classify(body.texts or []))
    if body.images is not None:
        inputs = state["processor"].encode([base64.b64decode(image) for image in body.images])
    else:
        tokenizer = state["processor"].tokenizer
        batch = tokenizer(body.texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        inputs = (batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        probs = torch.softmax(state["model"](*(t.to(state["device"]) for t in inputs)), dim=-1)
    best = probs.argmax(dim=-1)
    return [
        {"label": state["labels"][int(i)], "confidence": float(p[i])}
        for i, p in zip(best, probs, strict=True)
    ]
