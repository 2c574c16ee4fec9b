"""Train a tiny adapter for a few steps; run plainly (1 process) or under `accelerate launch --num_processes 2`.
Used by tests/test_prompt_learning.py to check that data-parallel training gives the result of one process."""
import os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
torch.set_num_threads(1)
from dsd_nb.models import load_pipeline
from dsd_nb.evaluate import scene_ranking_examples
from dsd_nb.prompt_learning import PromptConfig, train_prompt

out = sys.argv[1]
shots = scene_ranking_examples("fewshot", 4, direction="i2t")
cfg = PromptConfig(train_steps=3, batch_size=4, grad_accum=1, lr=3e-3, ckpt_every=10, val_every=10, chunk_size=16)
train_prompt(load_pipeline("tiny-random"), shots, None, out=out, config=cfg, progress=False)
from accelerate import PartialState
if PartialState().is_main_process: print("world", PartialState().num_processes)
