"""Nodes of the `make run` demo: split a sentence (fan-out), shout each word, join them back (unites)."""

from __future__ import annotations

import json

from pydantic import BaseModel

from exosphere import BaseNode


class SplitWords(BaseNode):
    class Inputs(BaseModel):
        sentence: str

    class Outputs(BaseModel):
        word: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(word=w) for w in self.inputs.sentence.split()]


class Shout(BaseNode):
    class Inputs(BaseModel):
        word: str
        suffix: str = "!"

    class Outputs(BaseModel):
        loud: str

    async def execute(self) -> Outputs:
        return self.Outputs(loud=self.inputs.word.upper() + self.inputs.suffix)


class JoinWords(BaseNode):
    class Inputs(BaseModel):
        words: str  # a JSON array: the merge sees every branch's output

    class Outputs(BaseModel):
        sentence: str
        count: str

    async def execute(self) -> Outputs:
        words = json.loads(self.inputs.words)
        return self.Outputs(sentence=" ".join(words), count=str(len(words)))
