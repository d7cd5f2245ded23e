"""Two-process data-parallel pre-training on CPU (gloo) through run_scripts/train_cpu_gloo.sh and fairseq-hydra-train.

After a few updates both ranks must hold identical parameters, equal (to float
rounding) to those of a single-process run that accumulates the same two
batches per update (optimization.update_freq=[2]).

The processes are real fairseq-hydra-train runs. A ``common.user_dir`` probe
(fairseq's plugin mechanism) adds two things a test needs: each process saves
its parameters at exit (fairseq saves rank 0's only), and every micro-batch
draws its masks from ``seed + update`` as fairseq seeds each update. Without
the latter the comparison could not hold: in the two-process run both ranks
draw their masks from that seed, while one process accumulating two batches
draws the second batch's masks from where the first left off.
"""
import os
import socket
import subprocess

import pytest
import torch


from conftest import BIN_DIR, REPO_ROOT, hydra_train, write_labelled_corpus

PROBE = '''
import atexit
import os

import torch
from fairseq import trainer as fairseq_trainer
from fairseq import utils
from fairseq_logmel_conformer.tasks.logmel_pretraining import LogmelPretrainingTask

_init = fairseq_trainer.Trainer.__init__
_train_step = LogmelPretrainingTask.train_step


def _init_and_save_parameters_at_exit(self, *args, **kwargs):
    _init(self, *args, **kwargs)

    def save():
        parameters = {name: p.detach().clone() for name, p in self.get_model().named_parameters()}
        path = os.path.join(os.environ["PROBE_DIR"], f"rank{self.data_parallel_rank}.pt")
        torch.save({"parameters": parameters, "num_updates": self.get_num_updates()}, path)

    atexit.register(save)


def _train_step_seeded_per_batch(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
    utils.set_torch_seed(self.cfg.seed + update_num)
    return _train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)


fairseq_trainer.Trainer.__init__ = _init_and_save_parameters_at_exit
LogmelPretrainingTask.train_step = _train_step_seeded_per_batch
'''

# 16 one-second clips, 4 per batch: 4 batches per epoch, so 2 updates per epoch in both runs.
TRAINING = [
    "dataset.max_tokens=64000",
    "dataset.required_batch_size_multiple=1",
    "optimization.max_update=3",
    "model.dropout=0.0",
    "checkpoint.save_interval_updates=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_labelled_corpus(str(tmp_path_factory.mktemp("dist_corpus")), num_train=16, num_valid=4, seconds=(1.0, 1.0), seed=3)


def write_probe(folder) -> str:
    probe = os.path.join(folder, "rank_probe")
    os.makedirs(probe)
    with open(os.path.join(probe, "__init__.py"), "w") as f:
        f.write(PROBE)
    return probe


def load_parameters(path):
    state = torch.load(path, weights_only=False)
    return state["parameters"], state["num_updates"]


def test_two_gloo_processes_match_each_other_and_one_process_with_update_freq_2(corpus, tmp_path):
    two = tmp_path / "two"
    one = tmp_path / "one"
    for folder in (two, one):
        folder.mkdir()
    probe = write_probe(str(tmp_path))

    env = dict(
        os.environ,
        PATH=BIN_DIR + os.pathsep + os.environ.get("PATH", ""),
        PYTHON=os.path.join(BIN_DIR, "python"),
        OMP_NUM_THREADS="1",
        PORT=str(free_port()),
        PROBE_DIR=str(two),
    )
    script = os.path.join(REPO_ROOT, "run_scripts", "train_cpu_gloo.sh")
    result = subprocess.run(
        [script, corpus, str(two / "out"), f"common.user_dir={probe}"] + TRAINING,
        cwd=str(two), capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert os.path.isfile(two / "out" / "checkpoints" / "checkpoint_last.pt")

    hydra_train(
        "pretrain_tiny", str(one), f"task.data={corpus}", f"common.user_dir={probe}", "optimization.update_freq=[2]",
        *TRAINING, env={"PROBE_DIR": str(one)},
    )

    rank0, updates0 = load_parameters(two / "rank0.pt")
    rank1, updates1 = load_parameters(two / "rank1.pt")
    single, updates_single = load_parameters(one / "rank0.pt")
    assert updates0 == updates1 == updates_single == 3

    different = [name for name in rank0 if not torch.equal(rank0[name], rank1[name])]
    assert not different, f"ranks disagree on {different}"

    # checkpoint1.pt is the end of epoch 1 (update 2): the third update, in epoch 2, must have moved the parameters.
    after_epoch_1 = torch.load(two / "out" / "checkpoints" / "checkpoint1.pt", weights_only=False)["model"]
    moved = max((rank0[n] - after_epoch_1[n]).abs().max().item() for n in rank0)
    assert moved > 1e-4, "the last update did not change the parameters: the comparison would be vacuous"
    for name in rank0:
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
