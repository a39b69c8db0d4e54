"""Plain training loops' progress lines (``agent.jobs.node.loop_lines``) and how the script
reader takes them. Lines marked "format string" are rendered from the project's own format
string (source and commit in loop_lines.py); the others are real output (the corpus under
tests/fixtures/logs/ has more, with their threads in SOURCES.md)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from agent.jobs.metrics_records import merge_metrics
from agent.jobs.node import script_logs
from agent.jobs.node.loop_lines import loop_metrics
from agent.jobs.node.script_logs import ScriptLogParser
from tests.test_launcher_prefixes import PREFIXES


def _fields(line: str) -> dict[str, Any] | None:
    m = loop_metrics(line)
    if m is None:
        return None
    out = MessageToDict(m, preserving_proto_field_name=True)
    return {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in out.items()}


POSITIVE = [
    (  # nanoGPT, captured from karpathy/nanoGPT train.py (helper h1's run)
        "iter 60: loss 3.4115, time 12.46ms, mfu 0.00%",
        {"step": 60, "loss": 3.4115, "step_time_s": 0.01246},
    ),
    (  # nanoGPT before mfu (karpathy/nanoGPT#110)
        "iter 1631: loss 4.0863, time 561.94ms",
        {"step": 1631, "loss": 4.0863, "step_time_s": 0.56194},
    ),
    (  # llm.c train_gpt2.py, format string
        "step    1/50 | train loss 4.300000 | norm 1.2000 | lr 6.00e-04 | (123.40 ms | 4000 tok/s)",
        {
            "step": 1,
            "total_steps": 50,
            "loss": 4.3,
            "grad_norm": 1.2,
            "learning_rate": 6e-4,
            "step_time_s": 0.1234,
            "tokens_per_s": 4000.0,
        },
    ),
    (  # llm.c train_gpt2.cu, format string
        "step   12/74 | loss 7.123456 (+1.20z)| norm 1.2345 (-0.50z)| lr 1.00e-04 | 130.50 ms"
        " | 42.3% bf16 MFU | 250000 tok/s",
        {
            "step": 12,
            "total_steps": 74,
            "loss": 7.123456,
            "grad_norm": 1.2345,
            "learning_rate": 1e-4,
            "step_time_s": 0.1305,
            "tokens_per_s": 250000.0,
        },
    ),
    (  # nanochat chat_sft.py, format string (no total)
        "step 00012 (1.20%) | loss: 1.234567 | lrm: 1.00 | dt: 250.00ms | tok/sec: 12,345 |"
        " mfu: 10.00 | epoch: 0 | total time: 0.10m",
        {"step": 12, "loss": 1.234567, "step_time_s": 0.25, "tokens_per_s": 12345.0},
    ),
    (  # modded-nanogpt train_gpt.py today, format string: step and total only
        "step:100/1750 train_time:12345ms step_avg:123.45ms",
        {"step": 100, "total_steps": 1750},
    ),
    (  # litgpt with accumulation (Lightning-AI/litgpt#1224): iter time is a micro-batch's
        "Epoch 1 | iter 46 step 1 | loss train: 3.724, val: n/a | iter time: 45.73 ms",
        {"step": 1, "loss": 3.724},
    ),
    (  # litgpt pretrain, with the remaining time after it
        "Epoch 1 | iter 10 step 10 | loss train: 2.345, val: n/a | iter time: 123.45 ms (step)"
        " remaining time: 1:02:03",
        {"step": 10, "loss": 2.345, "step_time_s": 0.12345},
    ),
    (  # torchtitan before tflops and grad_norm ("wps")
        "step: 10  loss:  8.1234  memory: 12.34GiB(15.62%)  wps: 1,234  mfu: 5.67%",
        {"step": 10, "loss": 8.1234, "tokens_per_s": 1234.0},
    ),
    (  # timm train.py today, format string: epoch 2 of 1251 updates each
        "Train: 2 [  50/1251 (  4%)]  Loss: 6.91 (6.92)  Time: 0.412s, 2485.44/s  (0.420s,"
        " 2438.10/s)  LR: 1.000e-06  Data: 0.011 (0.020)",
        {
            "step": 2 * 1251 + 51,
            "epoch": 2 + 51 / 1251,
            "loss": 6.91,
            "step_time_s": 0.412,
            "samples_per_s": 2485.44,
            "learning_rate": 1e-6,
        },
    ),
    (  # timm 2019-2023, format string ({loss.val:>9.6f})
        "Train: 0 [   0/5004 (  0%)]  Loss:  6.934312 (6.9343)  Time: 5.123s,   49.97/s "
        " (5.123s,   49.97/s)  LR: 1.000e-04  Data: 4.321 (4.321)",
        {
            "step": 1,
            "epoch": 1 / 5004,
            "loss": 6.934312,
            "step_time_s": 5.123,
            "samples_per_s": 49.97,
            "learning_rate": 1e-4,
        },
    ),
    (  # DeepSpeedExamples cifar10_deepspeed.py, captured (helper h1's run): epoch 1
        "[ 1,    40] loss:  2.302",
        {"step": 40, "loss": 2.302},
    ),
    (  # pytorch/examples ddp-tutorial-series, captured (helper h1's run): epoch 220 begins
        "[GPU0] Epoch 220 | Batchsize: 32 | Steps: 32",
        {"step": 220 * 32, "epoch": 220.0},
    ),
]


@pytest.mark.parametrize(("line", "want"), POSITIVE)
def test_each_shape_gives_its_figures(line: str, want: dict[str, Any]) -> None:
    got = _fields(line)
    assert got is not None, line
    assert got.keys() == want.keys(), (got, want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


@pytest.mark.parametrize(("line", "want"), POSITIVE)
@pytest.mark.parametrize("prefix", PREFIXES[::3])
def test_a_launcher_prefix_changes_nothing(line: str, want: dict[str, Any], prefix: str) -> None:
    assert _fields(prefix + line) == _fields(line)


@pytest.mark.parametrize(
    "line",
    [
        # evaluation, not a training step
        "step:5200/20000 val_loss:2.1501 val_bpb:1.2701 train_time:226207ms step_avg:43.50ms",
        "step:0/1480 val_loss:7.7109 train_time:0ms step_avg:nanms",
        "validate step: 10  loss:  7.1234  memory: 12.34GiB(15.62%)  tps: 1,234",  # torchtitan
        "Test: [  10/390]  Time: 0.101 (0.150)  Loss:   1.234 ( 1.300)  Acc@1:  70.000 ( 68.000)",
        "iter 100: val loss 1.2345, val time: 1234.56 ms",  # litgpt's validation
        "Epoch 0 | iter  70          | val_loss: 13.069 | val_time: 78.948 s",
        "val loss 3.2841",  # llm.c
        "Step 00250 | CORE metric: 0.1234",  # nanochat
        # a CIFAR epoch after the first: its step would need epoch 1's length
        "[2,  2000] loss: 1.462",
        # other formats, close but not these
        "2023-01-05 16:34:37,748   INFO  Train:    1/3 ( 33%) [   0/323 (  0%)]  Loss: 516.7"
        " (517.)  LR: 1.000e-04  Time cost: 00:04/21:46 [00:04/1:05:18]  Acc_iter 1",  # OpenPCDet
        "| epoch 010  2000 / 8223 loss=1.27 (1.50), wps=962, wpb=908, bsz=32, lr=0.001",  # fairseq
        "Epoch 0 | iter  62 step  62 | loss train: 21.625, val_loss valid: 13.879 | iter time:"
        " 35.675 s (step)",  # a litgpt fork, seconds
        "iter 10: loss 3.2202, time 893.76ms/step, mfu 16.68%",  # a nanoGPT fork
        "2018-10-23 10:51:07,015 - INFO - Epoch [3][50/2500]     lr: 0.02000, time: 1.090,"
        " data_time: 0.015, loss: 0.0394",  # mmdetection
        "Epoch 5, Time 4981.4s, Loss 0.5731, LR 0.1111",
        "step 12: loss 3.2",
        "loss: 2.302",
        "[1, 40] loss: fast",
        "[GPU0] Epoch 3 | Batchsize: 32 | Steps: 0",
        "Train: 3 [1251/1251 (100%)]  Loss: 6.91 (6.92)  Time: 0.412s, 2485.44/s  (0.420s,"
        " 2438.10/s)  LR: 1.000e-06  Data: 0.011 (0.020)",  # index past the epoch's end
        "",
        "x" * 5000 + " iter 1: loss 1.0, time 1.0ms",
    ],
)
def test_lines_of_other_shapes_give_nothing(line: str) -> None:
    assert loop_metrics(line) is None


def test_a_nan_loss_is_shown_as_nan_at_its_step() -> None:
    # The row shows nan, not the last finite loss (the scanner's nan_loss alert says it too).
    got = _fields("iter 3010: loss nan, time 1019.95ms, mfu 14.12%")  # karpathy/nanoGPT#215
    assert got == {"step": 3010, "loss": "NaN", "step_time_s": pytest.approx(1.01995)}


def _figures(lines: list[str], argv: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    parser, now, latest, out = ScriptLogParser(argv=argv), 0.0, None, []
    records = []
    for line in lines:
        now += 0.05
        records += parser.feed("stdout", line, now)
    records += parser.flush(now + 10.0)
    for record in records:
        if record.metrics is not None:
            latest = merge_metrics(latest, record.metrics)
            out.append(MessageToDict(latest, preserving_proto_field_name=True))
    return out


def test_the_script_reader_takes_them_with_the_total_from_argv() -> None:
    lines = [
        "step 0: train loss 4.2874, val loss 4.2823",
        "iter 0: loss 4.2649, time 3050.33ms, mfu -100.00%",
        "step 60: train loss 3.4148, val loss 3.4162",
        "iter 60: loss 3.4115, time 12.46ms, mfu 0.00%",
    ]
    # Step 0 (nothing trained yet) is dropped; the evaluation at 60 gives its eval_loss.
    (evaluated, only) = _figures(lines, argv=("train.py", "--max_iters=60", "--compile=False"))
    assert evaluated == {"step": "60", "eval_loss": 3.4162, "eval_step": "60", "total_steps": "60"}
    assert only["step"] == "60" and only["total_steps"] == "60" and only["loss"] == 3.4115
    assert only["eval_loss"] == 3.4162  # kept with the step's figures


@pytest.mark.parametrize(
    ("line", "step", "loss"),
    [
        # karpathy/nanoGPT train.py's estimate_loss line
        ("step 2000: train loss 1.0431, val loss 1.4757", 2000, 1.4757),
        # NVIDIA/Megatron-LM evaluate_and_print_results, older and newer prefix
        (
            " validation loss at iteration 1000 | lm loss value: 3.449384E+00 | lm loss PPL:"
            " 3.148215E+01 | ",
            1000,
            3.449384,
        ),
        (
            " validation loss at iteration 500 on validation set | lm loss value: 2.1E+00 |"
            " lm loss PPL: 8.1E+00 | ",
            500,
            2.1,
        ),
    ],
)
def test_an_evaluation_line_gives_only_its_eval_loss(line: str, step: int, loss: float) -> None:
    m = loop_metrics(line)
    assert m is not None and m.step == step and m.eval_loss == pytest.approx(loss)
    assert not m.HasField("loss") and not m.HasField("step_time_s")
    titan_line = "step: 10  loss:  8.1234  memory: 1.00GiB(1.00%)  tps: 1  mfu: 1.00%"
    assert "total_steps" not in _figures([titan_line])[0]
    titan = ("--job.config_file", "llama3_8b.toml", "--training.steps", "1000")
    (with_total,) = _figures([titan_line], titan)
    assert with_total["total_steps"] == "1000"


def test_torchtitans_coloured_line_is_read_through_the_script_reader() -> None:
    line = (
        "[rank0]:[titan] 2025-06-16 22:30:50,322 - root - INFO - \x1b[31mstep: 200  \x1b[32mloss:"
        "  6.1384  \x1b[33mmemory: 49.66GiB(52.28%)  \x1b[34mtps: 5,856  \x1b[36mtflops: 339.16"
        "  \x1b[35mmfu: 34.29%\x1b[39m"
    )
    (got,) = _figures([line])
    assert got["step"] == "200" and got["loss"] == 6.1384 and got["tokens_per_s"] == 5856


@pytest.mark.parametrize(
    "line",
    [
        "{'loss': 3.5534, 'grad_norm': 1.41, 'learning_rate': 2.04e-06, 'epoch': 0.01}",
        "[2022-03-29 10:11:12,123] [INFO] [logging.py:69:log_dist] [Rank 0] step=40, skipped=2,"
        " lr=[5e-05], mom=[[0.9, 0.999]]",
        " iteration      122/  250000 | consumed samples:       124928 | elapsed time per"
        " iteration (ms): 86545.2 | learning rate: 9.150E-06 | global batch size:  1024 | lm"
        " loss: 2.504220E+00 | loss scale: 1.0 | grad norm: 0.231 |",
    ],
    ids=["hf", "deepspeed", "megatron"],
)
def test_trainer_deepspeed_and_megatron_lines_keep_their_reader(
    line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line another reader took is never offered to the plain-loop shapes."""
    asked: list[str] = []

    def spy(text: str) -> None:
        asked.append(text)

    want = _figures([line])
    monkeypatch.setattr(script_logs, "loop_metrics", spy)
    assert _figures([line]) == want
    assert asked == []


def test_the_prefilter_wakes_for_every_shape() -> None:
    for line, _ in POSITIVE:
        assert script_logs._may_wake(line), line
