"""One cell of the cross-task matrix the way the paper's official code computes it
(thunlp/Prompt-Transferability, see ../shared/docs/METHOD.md): its own OS process, which loads
the model, reads one source prompt file, tokenises the target's test split example by example
padded to ``max_length`` (128) in data order, and scores it in batches in that order.

Only torch, transformers and pyarrow: nothing of this project is imported. The scoring is the
``encoder`` kind's (METHOD.md, sentence-embedding encoders): the mean-pooled last hidden state
of the prompted input over the text positions (``pool: text``; ``all``: the prompt too) vs the
frozen model's mean-pooled embeddings of the target's label words, cosine / temperature as the
logits. The label words, pooling and temperature come from ``--verbalizer`` (a JSON file, as
the official code keeps a verbalizer per task). Writes ``{"accuracy", "n"}`` to ``--out``.

    python tests/benchmarks/bench_anchor_cell.py --model DIR --prompt P.pt --task DIR \\
        --verbalizer V.json --out OUT.json [--max-length 128] [--batch-size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for a in ("--model", "--prompt", "--task", "--verbalizer", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    verbalizer = json.loads(open(args.verbalizer).read())
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    prompt = torch.load(args.prompt).float()  # (n, D)

    rows = pq.read_table(f"{args.task}/test.parquet").to_pylist()
    ids, types, masks = [], [], []
    for r in rows:  # one example at a time, padded to max_length, in data order
        enc = tok(r["text_a"], r["text_b"], truncation=True, max_length=args.max_length,
                  padding="max_length")
        ids.append(enc["input_ids"])
        types.append(enc["token_type_ids"])
        masks.append(enc["attention_mask"])
    ids, types, masks = (torch.tensor(x) for x in (ids, types, masks))
    labels = torch.tensor([r["label"] for r in rows])

    with torch.no_grad():
        words = verbalizer["label_words"]
        w = tok(words, truncation=True, max_length=32, padding=True, return_tensors="pt")
        out = model(**w).last_hidden_state
        scorer = F.normalize(mean_pool(out, w["attention_mask"]), dim=-1)  # (K, D)
        n = prompt.shape[0]
        preds = []
        for s in range(0, len(rows), args.batch_size):
            b_ids, b_types, b_mask = (x[s : s + args.batch_size] for x in (ids, types, masks))
            B = b_ids.shape[0]
            x = model.get_input_embeddings()(b_ids)
            x = torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), x], 1)
            mask = torch.cat([b_mask.new_ones(B, n), b_mask], 1)
            tt = torch.cat([b_types.new_zeros(B, n), b_types], 1)
            hidden = model(inputs_embeds=x, attention_mask=mask,
                           token_type_ids=tt).last_hidden_state
            if verbalizer["pool"] == "text":
                mask = torch.cat([torch.zeros_like(mask[:, :n]), mask[:, n:]], 1)
            emb = F.normalize(mean_pool(hidden.float(), mask), dim=-1)
            preds.append((emb @ scorer.T / verbalizer["temperature"]).argmax(-1))
    pred = torch.cat(preds)
    acc = float((pred == labels).float().mean())
    with open(args.out, "w") as f:
        json.dump({"accuracy": acc, "n": len(rows), "predicted": pred.tolist()}, f)


if __name__ == "__main__":
    main()
