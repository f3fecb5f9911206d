"""Kernel coverage as corpus feedback: AFL's hit-count classes, and a program that reaches new
kernel code joins the corpus even when the model saw nothing new."""

from dataclasses import replace

from fuzz.campaign.startup import StartCorpus
from fuzz.campaign.worker import WorkerConfig, run_worker
from fuzz.generate.coverage import hit_bucket, kernel_features
from fuzz.record.summary import Stats
from reference.trace import Trace
from targets.model_target import ModelTarget
from test_engine import ZOMBIE
from test_model import PROFILE


def test_hit_counts_fall_in_afl_classes():
    assert [hit_bucket(n) for n in (1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 127, 128, 10**6)] == \
        [1, 2, 3, 4, 4, 8, 8, 16, 16, 32, 32, 128, 128]


def test_kernel_features_are_functions_reached_and_their_classes():
    trace = Trace(("ok",), extra={"kcov": {"proc_pid_lookup": 5, "proc_task_lookup": 1, "idle": 0}})
    assert kernel_features(trace) == {("kernel", "proc_pid_lookup"), ("kernel", "proc_pid_lookup", 4),
                                      ("kernel", "proc_task_lookup"), ("kernel", "proc_task_lookup", 1)}
    assert kernel_features(Trace(("ok",))) == set()           # coverage off


class CoveredKernel(ModelTarget):
    """The model's results, with a kernel probe that sees one more call at every run."""

    def __init__(self, profile):
        super().__init__(profile)
        self.calls = 0

    def run(self, program):
        self.calls += 1
        return replace(super().run(program), extra={"kcov": {"proc_pid_lookup": 2 ** self.calls}})


def _stats(tmp_path, target):
    config = WorkerConfig(0, 1, PROFILE, "k", tmp_path / "out", tmp_path / "corpus", float("inf"), max_programs=2)
    return run_worker(config, target, lambda s: None, lambda: False, start=StartCorpus((), (ZOMBIE, ZOMBIE)))


def test_new_kernel_coverage_keeps_a_program_the_model_has_seen(tmp_path):
    assert _stats(tmp_path / "model", ModelTarget(PROFILE)).corpus_added == 1
    covered = _stats(tmp_path / "kernel", CoveredKernel(PROFILE))
    assert covered.corpus_added == 2                   # 2 then 4 calls: a new hit-count class
    assert covered.kernel_functions == 1               # one function, however many classes
    assert Stats.from_json(covered.to_json()).kernel_functions == 1
    old_summary = {key: value for key, value in covered.to_json().items() if key != "kernel_functions"}
    assert Stats.from_json(old_summary).kernel_functions == 0


def test_workers_of_a_kubernetes_campaign_get_kernel_coverage(capsys):
    from fuzz.cli import main
    assert main(["run", "--runtime", "kubernetes", "--dry-run", "--workers", "2", "--seed", "4",
                 "--kernel-coverage"]) == 0
    assert "--kernel-coverage" in capsys.readouterr().out
