"""SetFit on one few-shot budget, run under the setfit peer's virtualenv.

    python train.py TRAIN.csv TEST.csv MODEL_DIR SEED OUT.json [NUM_ITERATIONS]

Trains SetFit (contrastive sentence-pair fine-tuning of the sentence-transformers body, then a
logistic-regression head) on TRAIN (``text``, ``label``) from the local MODEL_DIR with the
settings SetFit's documentation and paper use for few-shot text classification: batch size 16,
one epoch over pairs, 20 pair iterations per example, its default learning rates and head. OUT
gets accuracy and macro-F1 on TEST, the training seconds, the process's peak RSS and the
trainable parameter count.
"""

import json
import resource
import sys
import time

import pandas as pd
from datasets import Dataset
from setfit import SetFitModel, Trainer, TrainingArguments
from sklearn.metrics import accuracy_score, f1_score


def main() -> None:
    train_csv, test_csv, model_dir, seed, out = sys.argv[1:6]
    iterations = int(sys.argv[6]) if len(sys.argv) > 6 else 20
    train, test = pd.read_csv(train_csv), pd.read_csv(test_csv)
    model = SetFitModel.from_pretrained(model_dir)
    arguments = TrainingArguments(
        batch_size=16,
        num_epochs=1,
        num_iterations=iterations,
        seed=int(seed),
        report_to="none",
        save_strategy="no",
        show_progress_bar=False,
    )
    trainer = Trainer(
        model=model, args=arguments, train_dataset=Dataset.from_pandas(train[["text", "label"]])
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    predicted = list(model.predict(list(test["text"])))
    body = sum(p.numel() for p in model.model_body.parameters() if p.requires_grad)
    head = model.model_head.coef_.size + model.model_head.intercept_.size
    result = {
        "accuracy": accuracy_score(test["label"], predicted),
        "macro_f1": f1_score(test["label"], predicted, average="macro"),
        "train_seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": int(body + head),
    }
    with open(out, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main()
