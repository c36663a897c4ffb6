"""An independent, straightforward CLaRa inference path built the way the authors' code runs:
transformers' PEFT integration for the adapters, fixed-width padding to doc_max_length + 3,
memory found with isin() over the full hidden states, and HF generate. kbd's own path (custom
LoRA, length-bucketed batches, no logits) must give the same indices, scores and text."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

SYSTEM = ("You are a helpful assistant. Your task is to extract relevant information from "
          "provided documents and to answer to questions as briefly as possible.")


class ReferenceClara:
    def __init__(self, checkpoint: Path, base: Path):
        self.cfg = json.loads((checkpoint / "config.json").read_text())
        self.tok = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
        if self.tok.pad_token_id is None:
            self.tok.pad_token_id = self.tok.bos_token_id
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        self.model.resize_token_embeddings(len(self.tok), mean_resizing=False)
        first_last = torch.load(checkpoint / "decoder_first_last_layers.pth", weights_only=True)
        self.model.load_state_dict(first_last, strict=False)
        r = self.cfg["lora_r"]
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r,
                                 target_modules="all-linear", lora_dropout=0.1)
        for name, state in torch.load(checkpoint / "adapters.pth", weights_only=True).items():
            self.model.load_adapter(peft_config=peft_config, adapter_name=name,
                                    adapter_state_dict=state)
        self.model.eval()
        self.n_mem = self.cfg["doc_max_length"] // self.cfg["compr_rate"]
        if self.cfg["different_mem_tokens"]:
            self.mem_tokens = [f"<MEM{i}>" for i in range(self.n_mem)]
        else:
            self.mem_tokens = ["<MEM>"] * self.n_mem
        self.mem_ids = torch.tensor(self.tok.convert_tokens_to_ids(self.mem_tokens))

    def _encode(self, texts: list[str]):
        tok = self.tok
        enc = tok([f"<ENC>{tok.bos_token}{t}{tok.eos_token}" for t in texts],
                  return_tensors="pt", padding="max_length",
                  max_length=self.cfg["doc_max_length"] + 3, truncation=True,
                  add_special_tokens=False)
        ids = torch.cat([enc["input_ids"], self.mem_ids.repeat(len(texts), 1)], dim=1)
        mask = torch.cat([enc["attention_mask"], torch.ones(len(texts), self.n_mem,
                                                            dtype=torch.long)], dim=1)
        return ids, mask

    @torch.no_grad()
    def states(self, texts: list[str], adapter: str) -> torch.Tensor:
        ids, mask = self._encode(texts)
        self.model.set_adapter(adapter)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        if not torch.equal(hidden, self.model.model.norm(hidden)):  # transformers 5 pre-norm
            hidden = self.model.model.norm(hidden)
        return hidden[torch.isin(ids, self.mem_ids)].reshape(len(texts), self.n_mem, -1)

    def prompt(self, question: str, k: int) -> str:
        docs = ("".join(self.mem_tokens) + "<SEP>") * k
        user = f"Background:\n{docs}\n\nQuestion:{question}"
        return self.tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def generate_from_questions(self, questions: list[str], documents: list[list[str]],
                                max_new_tokens: int, top_k: int | None = None):
        k = top_k or self.cfg["generation_top_k"]
        b, n = len(questions), len(documents[0])
        queries = self.states(questions, "query_reasoner_adapter").reshape(b, -1)
        docs = self.states(sum(documents, []), "encoder_adapter").reshape(b, n, -1)
        scores = torch.bmm(F.normalize(queries, dim=-1).unsqueeze(1),
                           F.normalize(docs, dim=-1).transpose(1, 2)).squeeze(1)
        top_scores, top_idx = scores.topk(k, dim=-1)
        selected = torch.stack([docs[i, top_idx[i]] for i in range(b)])
        selected = selected.reshape(b * k, self.n_mem, -1)

        dec = self.tok([self.prompt(q, k) for q in questions], return_tensors="pt",
                       padding="longest", add_special_tokens=False, truncation=True,
                       max_length=1024)
        ids = dec["input_ids"]
        embeds = self.model.get_input_embeddings()(ids)
        first = torch.argmax((ids == self.mem_ids[0]).int(), dim=1)
        slot = self.n_mem + (1 if self.cfg["sep"] else 0)
        for i in range(b):
            for j in range(k):
                start = first[i].item() + j * slot
                embeds[i, start:start + self.n_mem] = selected[i * k + j]
        self.model.set_adapter("decoder_adapter")
        out = self.model.generate(inputs_embeds=embeds, attention_mask=dec["attention_mask"],
                                  do_sample=False, max_new_tokens=max_new_tokens,
                                  pad_token_id=self.tok.pad_token_id)
        return self.tok.batch_decode(out, skip_special_tokens=True), top_idx, top_scores
