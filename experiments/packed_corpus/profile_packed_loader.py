"""CPU profile of the packed corpus through fairseq's loader in one process (num_workers=0), the study's profile.

    python experiments/packed_corpus/profile_packed_loader.py PACKED_DIR   # a packed corpus of 10 s+ clips (train split)

Six epochs alternating data_buffer_size 0 and 10 (fairseq's default: a thread hands batches over), then one
epoch under cProfile with the CPU clock.
"""
import io
import os
import sys
import time
import cProfile
import pstats
import torch
torch.set_num_threads(1)
from benchmarks.common import load_config
cfg = load_config("cfS", [f"task.data={sys.argv[1]}", "common.cpu=true"])
from fairseq import tasks
task = tasks.setup_task(cfg.task); task.load_dataset("train"); ds = task.dataset("train")
def epoch(buf, e):
    c = time.process_time()
    it = task.get_batch_iterator(dataset=ds, max_tokens=cfg.dataset.max_tokens, seed=1, num_workers=0, epoch=e, data_buffer_size=buf, disable_iterator_cache=True).next_epoch_itr(shuffle=True)
    audio = 0
    for b in it: audio += b["net_input"]["source"].numel() / 16000
    return audio, time.process_time() - c
out = []
for e in range(1, 7):
    buf = (10, 0)[e % 2]
    audio, cpu = epoch(buf, e)
    out.append(f"data_buffer_size={buf}: {audio / cpu:.0f} audio s per CPU s ({cpu / (audio / 10) * 1e6:.0f} us CPU per 10 s clip), load {os.getloadavg()[0]:.1f}")
pr = cProfile.Profile(time.process_time); pr.enable(); audio, cpu = epoch(0, 7); pr.disable()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
print("\n".join(out)); print(f"profiled epoch (CPU clock, data_buffer_size=0, {audio:.0f} audio s in {cpu:.2f} CPU s with the profiler):"); print(s.getvalue())
