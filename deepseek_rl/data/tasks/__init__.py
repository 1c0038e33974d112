"""Procedural reasoning tasks: seeded generators that need no download, each with its own verifier.

A task yields rows with a `prompt`, a gold `answer` and a worked `solution` (a completion in the
`<think>...</think><answer>...</answer>` format, used for cold-start SFT). The train and eval splits are disjoint.
"""

from deepseek_rl.data.tasks.addition import AdditionTask
from deepseek_rl.data.tasks.multiplication import MultiplicationTask

TASKS = {"addition": AdditionTask, "multiplication": MultiplicationTask}
