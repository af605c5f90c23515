"""An in-house model without a model: an engine that yields scripted deltas (or fails after
some), and a tokenizer with one token per word whose ids show what the model saw."""

from __future__ import annotations

from config.catalog import InHouseModelSpec
from models.engine import Delta, Engine, EngineError, EngineStats

SPEC = InHouseModelSpec(source="x", max_model_len=64, default_max_tokens=8)
HELLO = [Delta("Hel", 1), Delta("lo", 2), Delta("", 3, "length")]


class WordTokenizer:
    """One token per word; the template tags each role, so the ids show what the model saw."""

    def __init__(self):
        self.vocabulary: dict[str, int] = {}
        self.conversations: list[list[dict]] = []  # what each prompt rendered
        self.tools: list[list[dict] | None] = []  # the tools each prompt gave the template

    def apply_chat_template(self, conversation, tokenize, add_generation_prompt, tools=None):
        assert tokenize is False
        self.conversations.append(conversation)
        self.tools.append(tools)
        text = " ".join(f"<{m['role']}> {m['content']}" for m in conversation)
        return text + (" <assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [self.vocabulary.setdefault(word, len(self.vocabulary)) for word in text.split()]}


class ScriptedEngine(Engine):
    """Yields the given deltas; raises EngineError after ``fail_after`` of them when set."""

    name = "scripted"

    def __init__(self, deltas: list[Delta], fail_after: int | None = None):
        self.deltas, self.fail_after = deltas, fail_after
        self.calls: list[tuple[str, list[int], object]] = []  # (request id, prompt ids, sampling)
        self.yielded = self.finished = self.aborted = 0

    async def start(self) -> None:
        pass

    async def generate(self, request_id, prompt_token_ids, sampling, adapter=None):
        self.calls.append((request_id, list(prompt_token_ids), sampling))
        done = False
        try:
            for delta in self.deltas[:self.fail_after]:
                self.yielded += 1
                yield delta
            if self.fail_after is not None:
                raise EngineError("scripted failure")
            done = True
        finally:
            if done:
                self.finished += 1
            else:
                self.aborted += 1

    async def abort(self, request_id):
        pass

    async def check_health(self):
        pass

    def stats(self):
        return EngineStats(running=0, finished=self.finished, aborted=self.aborted)

    async def shutdown(self):
        pass
