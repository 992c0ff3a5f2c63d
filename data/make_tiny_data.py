"""Regenerates the bundled tiny chat corpus and its byte-level BPE tokenizer.

  python data/make_tiny_data.py

Writes `data/tiny_chat.jsonl` (ShareGPT-style conversations about counting, arithmetic,
spelling, sorting and simple facts: structured enough that a small drafter learns to predict
several tokens ahead) and `data/tiny_tokenizer/` (a `transformers`-loadable fast tokenizer with a
ChatML chat template and a reserved `<|mask|>` token for PARD). Deterministic for a fixed seed.
"""

import json
import pathlib
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = pathlib.Path(__file__).parent
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<|mask|>"]
VOCAB_SIZE = 512
NUM_CONVERSATIONS = 400
# ChatML with `{% generation %}` markers, so transformers can also return assistant masks.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "paper", "green", "music",
         "table", "water", "light", "house", "bread", "sugar", "storm", "plant", "train"]
COLORS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red",
          "sun": "yellow", "night": "dark"}


def _turn(rng: random.Random) -> tuple[str, str]:
  kind = rng.randrange(6)
  if kind == 0:
    a = rng.randrange(0, 20)
    b = a + rng.randrange(3, 9)
    return (f"Count from {a} to {b}.", " ".join(str(i) for i in range(a, b + 1)) + ".")
  if kind == 1:
    a, b = rng.randrange(1, 50), rng.randrange(1, 50)
    return (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
  if kind == 2:
    word = rng.choice(WORDS)
    return (f"Spell the word {word}.", f"{word} is spelled " + "-".join(word.upper()) + ".")
  if kind == 3:
    items = rng.sample(WORDS, rng.randrange(3, 6))
    return ("Sort these words: " + ", ".join(items) + ".",
            "In alphabetical order: " + ", ".join(sorted(items)) + ".")
  if kind == 4:
    thing = rng.choice(sorted(COLORS))
    return (f"What color is the {thing}?", f"The {thing} is {COLORS[thing]}.")
  word = rng.choice(WORDS)
  n = rng.randrange(2, 5)
  return (f"Repeat {word} {n} times.", " ".join([word] * n) + ".")


def conversations(seed: int = 0):
  rng = random.Random(seed)
  for _ in range(NUM_CONVERSATIONS):
    turns = []
    for _ in range(rng.randrange(1, 4)):
      question, answer = _turn(rng)
      turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    yield {"conversations": turns}


def train_tokenizer(texts) -> PreTrainedTokenizerFast:
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer)
  return PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, bos_token=None, eos_token="<|im_end|>",
      pad_token="<|pad|>", unk_token=None, chat_template=CHAT_TEMPLATE,
      additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|mask|>"])


def main():
  rows = list(conversations())
  with open(HERE / "tiny_chat.jsonl", "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  texts = [turn["value"] for row in rows for turn in row["conversations"]]
  texts += ["user", "assistant", "system"] * NUM_CONVERSATIONS  # role names as single tokens
  train_tokenizer(texts).save_pretrained(HERE / "tiny_tokenizer")


if __name__ == "__main__":
  main()
