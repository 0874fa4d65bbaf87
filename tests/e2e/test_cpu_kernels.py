"""llama.cpp's CPU kernels as the running server selected them: never AMX
(its matmul crashes on Intel CPUs with AMX), the exact verification limit
measured at start-up, exported and logged."""

import re

from conftest import parse_metrics

AMX_BUFFER_TYPE = "AMX"


def cpu_backend_labels(metrics: dict) -> dict:
    infos = [dict(labels) for (name, labels), value in metrics.items()
             if name == "specdec_cpu_backend_info" and value == 1]
    assert len(infos) == 1, infos
    return infos[0]


def test_the_server_reports_its_kernels_without_amx(server):
    labels = cpu_backend_labels(parse_metrics(server.metrics()))
    assert re.fullmatch(r"libggml-cpu-[a-z0-9_.]+\.so", labels["module"]), labels
    assert labels["module"] != "libggml-cpu-sapphirerapids.so", labels
    buffer_types = labels["buffer_types"].split(";")
    assert AMX_BUFFER_TYPE not in buffer_types, labels
    # Weight repacking stays on: it is what makes small verification passes cheap.
    assert "CPU_REPACK" in buffer_types, labels
    log = server.log.read_text()
    assert "\x1b[" not in log, "the log file is plain text, without terminal colours"
    startup = [line for line in log.splitlines() if "llama.cpp runtime" in line]
    assert len(startup) == 1, log[-3000:]
    fields = dict(re.findall(r"(\w+)=(\S+)", startup[0]))
    assert fields["cpu_module"].endswith("/" + labels["module"]), startup[0]
    assert fields["cpu_buffer_types"].split(",") == buffer_types, startup[0]
    assert "AMX_INT8" not in fields["cpu_features"].split(","), startup[0]
    assert "llama.cpp system info" in log


def test_the_exact_verification_limit_is_measured_and_used(server):
    metrics = parse_metrics(server.metrics())
    exact = metrics[("specdec_verify_batch_exact_tokens", frozenset())]
    used = metrics[("specdec_verify_batch_max_tokens", frozenset())]
    assert exact >= 1
    # On CPU the engine verifies in passes no longer than measured exact.
    assert used == exact
    log = server.log.read_text()
    measured = [line for line in log.splitlines()
                if "logits bit-identical to single-token decoding" in line]
    assert len(measured) == 1, log[-3000:]
    assert f"exact_tokens={int(exact)}" in measured[0], measured[0]
    assert f"max_verify_batch={int(used)}" in measured[0], measured[0]
